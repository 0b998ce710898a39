// Bandwidth-bound skinny GEMM for decode (M <= 8 rows of activations), batched:
//   y[b][m, n] = sum_k x[b][m, k] * W[b][n, k]        (+ y[b][m, n] when accumulate; fp32 sums)
// W is bf16 [N, K] with row stride ldw (a Linear weight), x bf16 [M, K] with row stride ldx, y bf16
// or fp32 [M, N] with row stride ldy; batch member b is offset by stride_x / stride_w / stride_y
// elements. K % 8 == 0 and every row 16-byte aligned.
//
// One warp per output feature n: lane j streams the 16-byte weight chunks j, j + 32, ... of row n,
// GEMV_INFLIGHT of them issued back to back before any is used, so that each warp keeps up to
// 8 KB of loads in flight and a few warps per SM cover the DRAM latency (Little's law: ~32 KB per
// SM at 4.2 TB/s). A warp's life is one row (about one DRAM round trip for K = 3712), so the tail
// of the grid is short. x is read through L1 (__ldg): every warp of an SM reads the same chunks.
// The row sum is a warp shuffle reduction; there is no shared memory and no __syncthreads.
// Launch: grid (ceil(N / GEMV_WARPS), batch), block 32 * GEMV_WARPS.
#include "common.cuh"

#define GEMV_WARPS 4
#define GEMV_INFLIGHT 16

__device__ __forceinline__ void bf16x8_to_f32(const uint4& raw, float* f) {
    const __nv_bfloat162* p = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const float2 v = __bfloat1622float2(p[i]);
        f[2 * i] = v.x;
        f[2 * i + 1] = v.y;
    }
}

template <int MAXM>
__device__ __forceinline__ void gemv_rows(const bf16* __restrict__ x, int ldx, long long stride_x,
                                          const bf16* __restrict__ W, int ldw, long long stride_w,
                                          void* __restrict__ y, int ldy, long long stride_y, int M, int N,
                                          int K, int y_f32, int accumulate) {
    const int lane = threadIdx.x & 31;
    const int n = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    if (n >= N) return;
    const int b = blockIdx.y;
    x += (size_t)b * stride_x;
    const uint4* wrow = reinterpret_cast<const uint4*>(W + (size_t)b * stride_w + (size_t)n * ldw);
    const int chunks = K / 8;
    float acc[MAXM];
#pragma unroll
    for (int m = 0; m < MAXM; ++m) acc[m] = 0.f;
    for (int c0 = 0; c0 < chunks; c0 += 32 * GEMV_INFLIGHT) {
        uint4 w[GEMV_INFLIGHT];
#pragma unroll
        for (int i = 0; i < GEMV_INFLIGHT; ++i) {
            const int c = c0 + lane + 32 * i;
            w[i] = c < chunks ? __ldcs(wrow + c) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int i = 0; i < GEMV_INFLIGHT; ++i) {
            const int c = c0 + lane + 32 * i;
            if (c < chunks) {
                float wf[8];
                bf16x8_to_f32(w[i], wf);
#pragma unroll
                for (int m = 0; m < MAXM; ++m) {
                    if (m < M) {
                        float xf[8];
                        bf16x8_to_f32(__ldg(reinterpret_cast<const uint4*>(x + (size_t)m * ldx) + c), xf);
#pragma unroll
                        for (int j = 0; j < 8; ++j) acc[m] += wf[j] * xf[j];
                    }
                }
            }
        }
    }
#pragma unroll
    for (int m = 0; m < MAXM; ++m) {
        if (m < M) {
            const float s = warp_sum(acc[m]);
            if (lane == 0) {
                const size_t o = (size_t)b * stride_y + (size_t)m * ldy + n;
                if (y_f32) {
                    float* yf = static_cast<float*>(y);
                    yf[o] = accumulate ? yf[o] + s : s;
                } else {
                    bf16* yb = static_cast<bf16*>(y);
                    yb[o] = to_bf(accumulate ? to_f(yb[o]) + s : s);
                }
            }
        }
    }
}

// M = 1 (batch-1 decode): the common case, with the fewest registers.
extern "C" __global__ void __launch_bounds__(32 * GEMV_WARPS)
gemv_m1(const bf16* __restrict__ x, int ldx, long long stride_x, const bf16* __restrict__ W, int ldw,
        long long stride_w, void* __restrict__ y, int ldy, long long stride_y, int M, int N, int K, int y_f32,
        int accumulate) {
    gemv_rows<1>(x, ldx, stride_x, W, ldw, stride_w, y, ldy, stride_y, 1, N, K, y_f32, accumulate);
}

// 1 <= M <= 8 (small decode batches): the same weight chunks feed every x row.
extern "C" __global__ void __launch_bounds__(32 * GEMV_WARPS)
gemv_m8(const bf16* __restrict__ x, int ldx, long long stride_x, const bf16* __restrict__ W, int ldw,
        long long stride_w, void* __restrict__ y, int ldy, long long stride_y, int M, int N, int K, int y_f32,
        int accumulate) {
    gemv_rows<8>(x, ldx, stride_x, W, ldw, stride_w, y, ldy, stride_y, M, N, K, y_f32, accumulate);
}
