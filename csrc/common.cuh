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

// Programmatic dependent launch (PDL, sm_90): the engine launches its decode kernels with
// programmatic stream serialisation (src/gpu/device.rs, PDL_KERNELS), so that a kernel's blocks
// can start while the kernel before it finishes. pdl_trigger lets the next kernel start launching;
// pdl_wait blocks until the kernel before has completed and its writes are visible. A kernel in
// PDL_KERNELS calls pdl_wait in every thread before it reads or writes any buffer that another
// kernel writes or reads (only constant weights may be loaded before it; the exceptions, argued
// where they are made, are mamba_step and conv1d_update, which read the batch's slot table and the
// layer's states, written by nothing earlier in a decode step), and before any thread can exit:
// then its completion implies its predecessor's, and ordering is transitive. Both are no-ops on
// older GPUs and in a launch without the attribute.
//   Such a kernel must not read another kernel's output through the non-coherent read-only path
// (ld.global.nc: __ldg, or what the compiler emits for `const T* __restrict__`): that path is
// outside the memory model griddepcontrol.wait orders, and with it the 7B decode read stale
// values (HF compare max abs 13.4 against 2.4, different in each run). So their activation
// pointers carry no __restrict__ and no __ldg; only constant weights may use the nc path.
__device__ __forceinline__ void pdl_trigger() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_wait() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_enter() {
    pdl_trigger();
    pdl_wait();
}

// Dot product of two 16-byte chunks of eight bf16 values, in fp32: for each of the four bf16x2
// pairs in turn, s = x.lo·y.lo + (x.hi·y.hi + s) as two fmas (a test models this order exactly).
__device__ __forceinline__ float dot8_bf16(const uint4& a, const uint4& b) {
    const __nv_bfloat162* p = reinterpret_cast<const __nv_bfloat162*>(&a);
    const __nv_bfloat162* q = reinterpret_cast<const __nv_bfloat162*>(&b);
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const float2 x = __bfloat1622float2(p[i]), y = __bfloat1622float2(q[i]);
        s = fmaf(x.x, y.x, fmaf(x.y, y.y, s));
    }
    return s;
}

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

// log(1 + t) for t in [0, 1], to a few ulp with one approximate reciprocal and FMAs:
// log1p(t) = 2·atanh(s) = 2·(s + s^3/3 + ... + s^15/15 + ...), s = t / (2 + t) <= 1/3 (the terms
// past s^15 are below 2^-26 of the sum). No cancellation: every term is positive.
__device__ __forceinline__ float log1p_unit(float t) {
    const float s = __fdividef(t, 2.f + t), s2 = s * s;
    float p = 1.f / 15.f;
    p = fmaf(p, s2, 1.f / 13.f);
    p = fmaf(p, s2, 1.f / 11.f);
    p = fmaf(p, s2, 1.f / 9.f);
    p = fmaf(p, s2, 1.f / 7.f);
    p = fmaf(p, s2, 1.f / 5.f);
    p = fmaf(p, s2, 1.f / 3.f);
    p = fmaf(p, s2, 1.f);
    return 2.f * s * p;
}

// softplus as above, to a few ulp: max(x, 0) + log1p(exp(-|x|)) (the same function; its log1p
// argument is in (0, 1]).
__device__ __forceinline__ float softplus_fast(float x) {
    return x > 20.f ? x : fmaxf(x, 0.f) + log1p_unit(expf(-fabsf(x)));
}

// silu with an approximate reciprocal (1 ulp) in place of the IEEE division.
__device__ __forceinline__ float silu_fast(float v) { return __fdividef(v, 1.f + expf(-v)); }

// The exact (erf) GELU.
__device__ __forceinline__ float gelu_erf(float v) { return 0.5f * v * (1.f + erff(v * 0.70710678118654752f)); }
