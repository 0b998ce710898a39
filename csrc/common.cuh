// Shared helpers for the engine's kernels: bf16 conversion, warp and block reductions, and the
// scalar activations, all in fp32.
#pragma once
#include <cuda_bf16.h>
#include <stdint.h>

typedef __nv_bfloat16 bf16;

__device__ __forceinline__ float to_f(bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ bf16 to_bf(float x) { return __float2bfloat16_rn(x); }
// Rounds an fp32 value to the nearest bf16 and back (models a bf16 tensor in between).
__device__ __forceinline__ float round_bf(float x) { return to_f(to_bf(x)); }

// Eight bf16 values as one 16-byte load or store.
union Bf16x8 {
    uint4 u;
    bf16 h[8];
};

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32). Every thread gets the result. Safe to call
// several times in a row: the first barrier protects the scratch from the previous call's readers.
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float scratch[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float r = lane < nwarps ? scratch[lane] : 0.f;
    return warp_sum(r);
}

// Max over the block, as block_sum.
__device__ __forceinline__ float block_max(float v) {
    __shared__ float scratch[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float r = lane < nwarps ? scratch[lane] : -INFINITY;
    return warp_max(r);
}

__device__ __forceinline__ float silu(float v) { return v / (1.f + expf(-v)); }

// PyTorch's softplus with threshold 20 (what mamba's kernels use for dt).
__device__ __forceinline__ float softplus(float x) { return x > 20.f ? x : log1pf(expf(x)); }

// The exact (erf) GELU.
__device__ __forceinline__ float gelu_erf(float v) { return 0.5f * v * (1.f + erff(v * 0.70710678118654752f)); }
