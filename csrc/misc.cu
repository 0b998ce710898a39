// Small glue kernels: argmax over logits, and deterministic random fills for benchmarks.
#include "common.cuh"

// Greedy token: out[r] = argmax_j x[r, j] (the first index on ties; NaN never wins).
// Launch: grid (rows), block 1024 (any power of two up to 1024).
extern "C" __global__ void argmax_rows(const float* x, int* out, int V) {
    pdl_enter();  // first: every access below may depend on the previous kernel
    const float* row = x + (size_t)blockIdx.x * V;
    float best = -INFINITY;
    int idx = 0x7fffffff;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        const float v = row[j];
        if (v > best || (v == best && j < idx)) { best = v; idx = j; }
    }
    __shared__ float sv[1024];
    __shared__ int si[1024];
    sv[threadIdx.x] = best;
    si[threadIdx.x] = idx;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            const float v = sv[threadIdx.x + s];
            const int i = si[threadIdx.x + s];
            if (v > sv[threadIdx.x] || (v == sv[threadIdx.x] && i < si[threadIdx.x])) {
                sv[threadIdx.x] = v;
                si[threadIdx.x] = i;
            }
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = si[0] == 0x7fffffff ? 0 : si[0];
}

__device__ __forceinline__ float hash_uniform(uint64_t seed, uint64_t i) {
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + i * 0xBF58476D1CE4E5B9ull + 0x94D049BB133111EBull;
    x ^= x >> 30; x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 27; x *= 0x94D049BB133111EBull;
    x ^= x >> 31;
    return (float)(x >> 40) * (1.0f / 16777216.0f);  // [0, 1)
}

// x[i] = bf16(offset + scale * (2u - 1)), u uniform in [0, 1) from a hash of (seed, i).
// Launch: grid (ceil(n/256)), block 256 (grid-stride).
extern "C" __global__ void fill_uniform_bf16(bf16* __restrict__ x, size_t n, uint64_t seed, float offset, float scale) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        x[i] = to_bf(offset + scale * (2.f * hash_uniform(seed, i) - 1.f));
}

// The fp32 version of fill_uniform_bf16.
extern "C" __global__ void fill_uniform_f32(float* __restrict__ x, size_t n, uint64_t seed, float offset, float scale) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        x[i] = offset + scale * (2.f * hash_uniform(seed, i) - 1.f);
}
