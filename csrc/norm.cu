// Embedding gather and RMSNorm.
#include "common.cuh"

// Embedding gather: e[m, :] = table[ids[m], :] (bf16) and the residual stream h[m, :] = the same
// values in fp32.
// Launch: grid (M), block 256. Token ids were range-checked on the host; an id outside [0, V) is
// clamped to 0 so that a bad id can never read outside the table.
extern "C" __global__ void embed_gather(const int* __restrict__ ids, const bf16* __restrict__ table,
                                        bf16* __restrict__ e, float* __restrict__ h, int H, int V) {
    const int m = blockIdx.x;
    int id = ids[m];
    if (id < 0 || id >= V) id = 0;
    const bf16* src = table + (size_t)id * H;
    for (int i = threadIdx.x; i < H; i += blockDim.x) {
        bf16 v = src[i];
        e[(size_t)m * H + i] = v;
        h[(size_t)m * H + i] = to_f(v);
    }
}

// RMSNorm with HF's rounding, over a row that may be assembled from two sources:
//   x[i]  = i < D1 ? a[src, i] (+ add[src, i])                (a is fp32 when a_f32, else bf16)
//                  : b[src, i - D1]                           (the concat(h, e) of the shared block)
//   r     = rsqrt(mean(x^2) + eps)                            (fp32)
//   out[row, i] = bf16( w[i] * bf16(x[i] * r) )
// with src = rows ? rows[row] : row (rows picks e.g. each sequence's last token for the logits).
// With a bf16 `a`, a + add is rounded to bf16 first, like HF's bf16 residual add; with the
// engine's fp32 residual stream it stays fp32. `add`, `b` and `rows` may be null.
// Launch: grid (n_rows), block 256, or 1024 for up to 64 rows of 2048 or more (more rows whose
// loads line up for it take rmsnorm_rows below instead).
__device__ __forceinline__ float norm_input(const void* a, int a_f32, const bf16* add, const bf16* b,
                                            size_t src, int D1, int D2, int i) {
    if (i >= D1) return to_f(b[src * D2 + (i - D1)]);
    const size_t k = src * D1 + i;
    if (a_f32) {
        float x = static_cast<const float*>(a)[k];
        return add ? x + to_f(add[k]) : x;
    }
    float x = to_f(static_cast<const bf16*>(a)[k]);
    return add ? round_bf(x + to_f(add[k])) : x;
}

// A row of up to NORM_HELD * blockDim.x values is read once and held in registers (with its
// weights, loaded before the reduction), so the kernel waits for one round trip, not two; longer
// rows fall back to reading twice.
#define NORM_HELD 8
extern "C" __global__ void rmsnorm(const void* __restrict__ a, int a_f32, const bf16* __restrict__ add,
                                   const bf16* __restrict__ b, const int* __restrict__ rows,
                                   const bf16* __restrict__ w, bf16* __restrict__ out,
                                   int D1, int D2, float eps) {
    const int row = blockIdx.x;
    const size_t src = rows ? rows[row] : row;
    const int D = D1 + D2;
    bf16* o = out + (size_t)row * D;
    float ss = 0.f;
    if (D <= NORM_HELD * (int)blockDim.x) {
        float xv[NORM_HELD], wv[NORM_HELD];
#pragma unroll
        for (int j = 0; j < NORM_HELD; ++j) {
            const int i = threadIdx.x + j * blockDim.x;
            xv[j] = i < D ? norm_input(a, a_f32, add, b, src, D1, D2, i) : 0.f;
            wv[j] = i < D ? to_f(w[i]) : 0.f;
            ss += xv[j] * xv[j];
        }
        const float r = rsqrtf(block_sum(ss) / (float)D + eps);
#pragma unroll
        for (int j = 0; j < NORM_HELD; ++j) {
            const int i = threadIdx.x + j * blockDim.x;
            if (i < D) o[i] = to_bf(wv[j] * round_bf(xv[j] * r));
        }
        return;
    }
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        const float x = norm_input(a, a_f32, add, b, src, D1, D2, i);
        ss += x * x;
    }
    const float r = rsqrtf(block_sum(ss) / (float)D + eps);
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        const float x = norm_input(a, a_f32, add, b, src, D1, D2, i);
        o[i] = to_bf(to_f(w[i]) * round_bf(x * r));
    }
}

// rmsnorm for many rows (prefill): one warp per row, NORM_WARPS rows per block, 4 elements at a
// time (16-byte fp32 and 8-byte bf16 loads and stores: needs D1 % 4 == 0, D2 % 4 == 0 and pointers
// aligned to those sizes, which the host checks). Its results are rmsnorm's with 256 threads bit
// for bit, the sum of squares included: lane L takes chunks q = L + 32p, whose elements 4q + s are
// those of that launch's thread t = 4L + s + 128 (p & 1), s = 0..3. It keeps those 8 threads' sums
// apart, each in the same order, then adds them up in block_sum's order. The row is read twice
// (the second time mostly from L1), NORM_BATCH chunks per lane in flight.
// Launch: grid (ceil(n_rows / NORM_WARPS)), block 32 * NORM_WARPS.
#define NORM_WARPS 4
#define NORM_BATCH 16  // even, so that chunk p's parity is its index's in a batch

union NormX4 {
    uint2 u;
    bf16 h[4];
};

__device__ __forceinline__ float4 norm_f4(NormX4 v) {
    return make_float4(to_f(v.h[0]), to_f(v.h[1]), to_f(v.h[2]), to_f(v.h[3]));
}

__device__ __forceinline__ float4 norm_bf4(const bf16* p) {
    NormX4 v;
    v.u = *reinterpret_cast<const uint2*>(p);
    return norm_f4(v);
}

// norm_input for elements i .. i+3 (i % 4 == 0).
__device__ __forceinline__ float4 norm_input4(const void* a, int a_f32, const bf16* add, const bf16* b,
                                              size_t src, int D1, int D2, int i) {
    if (i >= D1) return norm_bf4(b + src * D2 + (i - D1));
    const size_t k = src * D1 + i;
    if (a_f32) {
        float4 x = *reinterpret_cast<const float4*>(static_cast<const float*>(a) + k);
        if (add) {
            const float4 y = norm_bf4(add + k);
            x = make_float4(x.x + y.x, x.y + y.y, x.z + y.z, x.w + y.w);
        }
        return x;
    }
    float4 x = norm_bf4(static_cast<const bf16*>(a) + k);
    if (add) {
        const float4 y = norm_bf4(add + k);
        x = make_float4(round_bf(x.x + y.x), round_bf(x.y + y.y), round_bf(x.z + y.z), round_bf(x.w + y.w));
    }
    return x;
}

extern "C" __global__ void __launch_bounds__(32 * NORM_WARPS)
    rmsnorm_rows(const void* __restrict__ a, int a_f32, const bf16* __restrict__ add,
                 const bf16* __restrict__ b, const int* __restrict__ rows, const bf16* __restrict__ w,
                 bf16* __restrict__ out, int n_rows, int D1, int D2, float eps) {
    const int lane = threadIdx.x & 31, row = blockIdx.x * NORM_WARPS + (threadIdx.x >> 5);
    if (row >= n_rows) return;
    const size_t src = rows ? rows[row] : row;
    const int D = D1 + D2, n4 = D / 4;
    // ss[s + 4h]: the sum of thread 4L + s + 128h. Chunks past the row add zeros, which changes no
    // sum (they are all +0 or more).
    float ss[8] = {};
    for (int q0 = lane; q0 < n4; q0 += 32 * NORM_BATCH) {
        float4 x[NORM_BATCH];
#pragma unroll
        for (int u = 0; u < NORM_BATCH; ++u) {
            const int q = q0 + 32 * u;
            x[u] = q < n4 ? norm_input4(a, a_f32, add, b, src, D1, D2, 4 * q) : make_float4(0.f, 0.f, 0.f, 0.f);
        }
#pragma unroll
        for (int u = 0; u < NORM_BATCH; ++u) {
            float* s = ss + 4 * (u & 1);
            s[0] += x[u].x * x[u].x;
            s[1] += x[u].y * x[u].y;
            s[2] += x[u].z * x[u].z;
            s[3] += x[u].w * x[u].w;
        }
    }
    // block_sum's warp_sum in each of the 256 threads' warps: their lane bits 4, 3, 2 are bits 2, 1,
    // 0 of L here, bits 1 and 0 are s. Lanes L with the same L / 8 = g then hold warps g and g + 4.
#pragma unroll
    for (int k = 0; k < 8; ++k)
#pragma unroll
        for (int o = 4; o > 0; o >>= 1) ss[k] += __shfl_xor_sync(0xffffffffu, ss[k], o);
    // Across those 8 warps (lanes >= 8 add zeros first, a no-op): warp index bit 2 is h, bits 1 and 0
    // are bits 4 and 3 of L.
    float tot = ((ss[0] + ss[2]) + (ss[1] + ss[3])) + ((ss[4] + ss[6]) + (ss[5] + ss[7]));
    tot += __shfl_xor_sync(0xffffffffu, tot, 16);
    tot += __shfl_xor_sync(0xffffffffu, tot, 8);
    const float r = rsqrtf(tot / (float)D + eps);
    bf16* o = out + (size_t)row * D;
    for (int q0 = lane; q0 < n4; q0 += 32 * NORM_BATCH) {
        float4 x[NORM_BATCH];
        NormX4 wv[NORM_BATCH];
#pragma unroll
        for (int u = 0; u < NORM_BATCH; ++u) {
            const int q = q0 + 32 * u;
            if (q < n4) {
                x[u] = norm_input4(a, a_f32, add, b, src, D1, D2, 4 * q);
                wv[u].u = *reinterpret_cast<const uint2*>(w + 4 * q);
            }
        }
#pragma unroll
        for (int u = 0; u < NORM_BATCH; ++u) {
            const int q = q0 + 32 * u;
            if (q < n4) {
                const float4 wf = norm_f4(wv[u]);
                NormX4 y;
                y.h[0] = to_bf(wf.x * round_bf(x[u].x * r));
                y.h[1] = to_bf(wf.y * round_bf(x[u].y * r));
                y.h[2] = to_bf(wf.z * round_bf(x[u].z * r));
                y.h[3] = to_bf(wf.w * round_bf(x[u].w * r));
                *reinterpret_cast<uint2*>(o + 4 * q) = y.u;
            }
        }
    }
}

// GELU-gated MLP activation: out[m, f] = bf16( gelu_erf(gu[m, f]) * gu[m, F + f] ), where each row
// of gu is [gate (F) | up (F)] from one fused GEMM. Launch: grid (ceil(M*F/256)), block 256.
extern "C" __global__ void gelu_mul(const bf16* __restrict__ gu, bf16* __restrict__ out, int M, int F) {
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)M * F) return;
    const size_t m = idx / F, f = idx % F;
    const float g = to_f(gu[m * 2 * F + f]);
    const float u = to_f(gu[m * 2 * F + F + f]);
    out[idx] = to_bf(gelu_erf(g) * u);
}
