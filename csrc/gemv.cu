// Bandwidth-bound skinny GEMM for decode (M <= 8 rows of activations), batched:
//   y[b][m, n] = sum_k x[b][m, k] * W[b][n, k]        (+ y[b][m, n] when accumulate; fp32 sums)
// W is bf16 [N, K] row-major (a Linear weight), x bf16 [M, K] with row stride ldx, y bf16 or fp32
// [M, N] with row stride ldy; batch member b is offset by stride_x / stride_w / stride_y elements.
// A block owns GEMV_ROWS consecutive output features and splits K over all its threads: thread t
// streams the 16-byte chunks t, t + 256, ... of those weight rows (K % 8 == 0, 16-byte aligned
// rows), multiplies them with the same chunks of every x row, and the block reduces through
// shared memory. Every weight byte is read once; many blocks and several loads in flight per
// thread keep memory busy even for short (N = 264) or long (K = 14848) matrices.
// Launch: grid (ceil(N / GEMV_ROWS), batch), block GEMV_THREADS.
#include "common.cuh"

#define GEMV_THREADS 256
#define GEMV_ROWS 4
#define GEMV_MAX_M 8

__device__ __forceinline__ void bf16x8_to_f32(const uint4& raw, float* f) {
    const __nv_bfloat162* p = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const float2 v = __bfloat1622float2(p[i]);
        f[2 * i] = v.x;
        f[2 * i + 1] = v.y;
    }
}

extern "C" __global__ void __launch_bounds__(GEMV_THREADS)
gemv_bf16(const bf16* __restrict__ x, int ldx, long long stride_x,
          const bf16* __restrict__ W, long long stride_w,
          void* __restrict__ y, int ldy, long long stride_y,
          int M, int N, int K, int y_f32, int accumulate) {
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int n0 = blockIdx.x * GEMV_ROWS;
    const int b = blockIdx.y;
    x += (size_t)b * stride_x;
    W += (size_t)b * stride_w;
    const int chunks = K / 8;
    const uint4* wrow[GEMV_ROWS];
#pragma unroll
    for (int r = 0; r < GEMV_ROWS; ++r)  // a partial last group re-reads a valid row
        wrow[r] = reinterpret_cast<const uint4*>(W + (size_t)min(n0 + r, N - 1) * K);
    float acc[GEMV_MAX_M][GEMV_ROWS];
#pragma unroll
    for (int m = 0; m < GEMV_MAX_M; ++m)
#pragma unroll
        for (int r = 0; r < GEMV_ROWS; ++r) acc[m][r] = 0.f;
#pragma unroll 2
    for (int c = tid; c < chunks; c += GEMV_THREADS) {
        float w[GEMV_ROWS][8];
#pragma unroll
        for (int r = 0; r < GEMV_ROWS; ++r) bf16x8_to_f32(__ldcs(wrow[r] + c), w[r]);
#pragma unroll
        for (int m = 0; m < GEMV_MAX_M; ++m) {
            if (m < M) {
                float xv[8];
                bf16x8_to_f32(__ldg(reinterpret_cast<const uint4*>(x + (size_t)m * ldx) + c), xv);
#pragma unroll
                for (int r = 0; r < GEMV_ROWS; ++r)
#pragma unroll
                    for (int i = 0; i < 8; ++i) acc[m][r] += w[r][i] * xv[i];
            }
        }
    }
    __shared__ float red[GEMV_THREADS / 32][GEMV_MAX_M][GEMV_ROWS];
#pragma unroll
    for (int m = 0; m < GEMV_MAX_M; ++m) {
        if (m < M) {
#pragma unroll
            for (int r = 0; r < GEMV_ROWS; ++r) {
                const float s = warp_sum(acc[m][r]);
                if (lane == 0) red[warp][m][r] = s;
            }
        }
    }
    __syncthreads();
    if (tid < M * GEMV_ROWS) {
        const int m = tid / GEMV_ROWS, r = tid % GEMV_ROWS, n = n0 + r;
        if (n < N) {
            float s = 0.f;
#pragma unroll
            for (int w = 0; w < GEMV_THREADS / 32; ++w) s += red[w][m][r];
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
