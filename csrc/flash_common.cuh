// Helpers shared by the two flash prefill kernels (flash_attn.cu with mma.sync, flash_wgmma.cu
// with wgmma): shared-window addresses, 16-byte cp.async with zero fill, the warp-pair barrier
// and bf16 packing.
#pragma once
#include "common.cuh"

__device__ __forceinline__ uint32_t fa_smem_addr(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy; zero-fills the destination (and reads nothing) when !valid.
__device__ __forceinline__ void fa_cp_async16(uint32_t dst, const void* src, bool valid) {
    const int n = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n));
}
__device__ __forceinline__ void fa_cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void fa_cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

// Barrier of the two warps of pair p (named barrier 1 + p; barrier 0 is __syncthreads).
__device__ __forceinline__ void fa_pair_sync(int p) {
    asm volatile("bar.sync %0, 64;\n" ::"r"(1 + p) : "memory");
}

// Two fp32 values as one bf16x2 register, `lo` in the low half (the lower column index).
__device__ __forceinline__ uint32_t fa_pack(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
}
