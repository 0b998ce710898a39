// Bandwidth-bound skinny GEMM for decode (M <= 8 rows of activations), batched:
//   y[b][m, n] = sum_k x[b][m, k] * W[b][n, k]        (+ y[b][m, n] when accumulate; fp32 sums)
// W is bf16 [N, K] with row stride ldw (a Linear weight), x bf16 [M, K] with row stride ldx, y bf16
// or fp32 [M, N] with row stride ldy; batch member b is offset by stride_x / stride_w / stride_y
// elements. K % 8 == 0 and every row 16-byte aligned.
//
// wpr warps (1, 2 or 4; GEMV_WARPS / wpr rows per block) share output feature n, each taking one
// contiguous segment of its K / 8 16-byte chunks: lane j of a warp streams the chunks j, j + 32, ...
// of its segment, GEMV_INFLIGHT of them issued back to back before any is used. The host picks wpr
// so that a segment fits one such round (K <= 4096 per warp) and so that short matrices (x_proj)
// still spread over every SM; a warp's life is then about one DRAM round trip and the tail of the
// grid is short. Little's law wants ~32 KB in flight per SM at 4.2 TB/s; a warp holds up to 8 KB.
// x is read through L1 (__ldg): every warp of an SM reads the same chunks. Each warp reduces with
// shuffles; the wpr partial sums of a row meet in shared memory.
// Launch: grid (ceil(N / (GEMV_WARPS / wpr)), batch), block 32 * GEMV_WARPS.
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
                                          int K, int y_f32, int accumulate, int wpr) {
    __shared__ float part_sum[GEMV_WARPS][MAXM];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int n = blockIdx.x * (GEMV_WARPS / wpr) + warp / wpr;
    const int part = warp % wpr;
    const int b = blockIdx.y;
    x += (size_t)b * stride_x;
    const int chunks = K / 8;
    const int seg = (chunks + wpr - 1) / wpr;
    const int c_begin = part * seg, c_end = min(chunks, c_begin + seg);
    float acc[MAXM];
#pragma unroll
    for (int m = 0; m < MAXM; ++m) acc[m] = 0.f;
    if (n < N) {
        const uint4* wrow = reinterpret_cast<const uint4*>(W + (size_t)b * stride_w + (size_t)n * ldw);
        for (int c0 = c_begin; c0 < c_end; c0 += 32 * GEMV_INFLIGHT) {
            uint4 w[GEMV_INFLIGHT];
#pragma unroll
            for (int i = 0; i < GEMV_INFLIGHT; ++i) {
                const int c = c0 + lane + 32 * i;
                w[i] = c < c_end ? __ldcs(wrow + c) : make_uint4(0, 0, 0, 0);
            }
#pragma unroll
            for (int i = 0; i < GEMV_INFLIGHT; ++i) {
                const int c = c0 + lane + 32 * i;
                if (c < c_end) {
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
    }
#pragma unroll
    for (int m = 0; m < MAXM; ++m) {
        const float s = warp_sum(acc[m]);
        if (lane == 0) part_sum[warp][m] = s;
    }
    if (wpr > 1) __syncthreads();
    if (part != 0 || lane != 0 || n >= N) return;
#pragma unroll
    for (int m = 0; m < MAXM; ++m) {
        if (m < M) {
            float s = 0.f;
            for (int p = 0; p < wpr; ++p) s += part_sum[warp + p][m];
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

// M = 1 (batch-1 decode): the common case, with the fewest registers.
extern "C" __global__ void __launch_bounds__(32 * GEMV_WARPS)
gemv_m1(const bf16* __restrict__ x, int ldx, long long stride_x, const bf16* __restrict__ W, int ldw,
        long long stride_w, void* __restrict__ y, int ldy, long long stride_y, int M, int N, int K, int y_f32,
        int accumulate, int wpr) {
    gemv_rows<1>(x, ldx, stride_x, W, ldw, stride_w, y, ldy, stride_y, 1, N, K, y_f32, accumulate, wpr);
}

// 1 <= M <= 8 (small decode batches): the same weight chunks feed every x row.
extern "C" __global__ void __launch_bounds__(32 * GEMV_WARPS)
gemv_m8(const bf16* __restrict__ x, int ldx, long long stride_x, const bf16* __restrict__ W, int ldw,
        long long stride_w, void* __restrict__ y, int ldy, long long stride_y, int M, int N, int K, int y_f32,
        int accumulate, int wpr) {
    gemv_rows<8>(x, ldx, stride_x, W, ldw, stride_w, y, ldy, stride_y, M, N, K, y_f32, accumulate, wpr);
}
