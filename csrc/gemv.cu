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
// x is read through L1 (plain loads, not __ldg: the kernel may run under PDL, see common.cuh):
// every warp of an SM reads the same chunks. Each warp reduces with shuffles; the wpr partial sums
// of a row meet in shared memory.
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
__device__ __forceinline__ void gemv_rows(const bf16* x, int ldx, long long stride_x,
                                          const bf16* W, int ldw, long long stride_w,
                                          void* y, int ldy, long long stride_y, int M, int N,
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
    pdl_trigger();
    // The first round of weight loads is issued before pdl_wait, so that it overlaps the tail of
    // the kernel before (the weights are constant; x and y are not read before the wait).
    bool waited = false;
    if (n < N) {
        const uint4* wrow = reinterpret_cast<const uint4*>(W + (size_t)b * stride_w + (size_t)n * ldw);
        for (int c0 = c_begin; c0 < c_end; c0 += 32 * GEMV_INFLIGHT) {
            uint4 w[GEMV_INFLIGHT];
#pragma unroll
            for (int i = 0; i < GEMV_INFLIGHT; ++i) {
                const int c = c0 + lane + 32 * i;
                w[i] = c < c_end ? __ldcs(wrow + c) : make_uint4(0, 0, 0, 0);
            }
            if (!waited) {
                pdl_wait();
                waited = true;
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
                            bf16x8_to_f32(reinterpret_cast<const uint4*>(x + (size_t)m * ldx)[c], xf);
#pragma unroll
                            for (int j = 0; j < 8; ++j) acc[m] += wf[j] * xf[j];
                        }
                    }
                }
            }
        }
    }
    if (!waited) pdl_wait();
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
gemv_m1(const bf16* x, int ldx, long long stride_x, const bf16* W, int ldw,
        long long stride_w, void* y, int ldy, long long stride_y, int M, int N, int K, int y_f32,
        int accumulate, int wpr) {
    gemv_rows<1>(x, ldx, stride_x, W, ldw, stride_w, y, ldy, stride_y, 1, N, K, y_f32, accumulate, wpr);
}

// 1 <= M <= 8 (small decode batches): the same weight chunks feed every x row.
extern "C" __global__ void __launch_bounds__(32 * GEMV_WARPS)
gemv_m8(const bf16* x, int ldx, long long stride_x, const bf16* W, int ldw,
        long long stride_w, void* y, int ldy, long long stride_y, int M, int N, int K, int y_f32,
        int accumulate, int wpr) {
    gemv_rows<8>(x, ldx, stride_x, W, ldw, stride_w, y, ldy, stride_y, M, N, K, y_f32, accumulate, wpr);
}

// Persistent, software-pipelined single-row GEMV (M = 1), over the flattened rows of a batch:
//   y[r] = sum_k x[b][k] * W[b][n, k]        (+ y[r] when accumulate; fp32 sums)
// for r = b * N + n, 0 <= r < R = batch * N. Operands as above (x row b at x + b * stride_x, W row
// (b, n) at W + b * stride_w + n * ldw, y[r] at y + b * stride_y + n); ldx and ldy are unused.
//
// Work split: every block stays resident for the whole kernel (grid G = one block per SM) and owns
// whole rows, the contiguous run [r0, r1) = [R * blk / G, R * (blk + 1) / G), at most rows_cap =
// ceil(R / G) of them. Those rows are one stream of L = (r1 - r0) * C 16-byte chunks (C = K / 8 a
// row), which the block's PW = PIPE_WARPS warps split evenly at chunk granularity, across row
// boundaries: warp w takes [L * w / PW, L * (w + 1) / PW). So blocks differ by at most one row (3%
// of the work at N = 3712 on 132 SMs) and a block's warps by at most one chunk.
//
// Pipeline: a warp walks its range in steps of 32 consecutive chunks of one row (lane j loads
// chunk j of the step; a step stops early at the end of a row or of the range), PIPE_U steps per
// item, into two register buffers A and B. Items 0 (A) and 1 (B) are issued before x is staged;
// then the loop uses A, issues item i + 2 into it, uses B, issues item i + 3 into it, and so on:
// while the warp waits for one item the next is already in flight, so each warp keeps one to two
// items (4 to 8 KB at PIPE_U = 8; 64 to 128 KB per SM) in flight from its first load to its last,
// with no wave boundaries and no tail of idle warps. Two cursors walk the same step sequence, one
// issuing loads and one doing the math one to two items behind it, so a buffer is always used for
// the steps that were loaded into it.
//
// Sums: a lane accumulates its chunks' products; at the last step of a row piece the warp reduces
// with shuffles. A row that lies wholly inside one warp's range is added to rowsum[row] (shared
// memory) at once; a row split between warps (only the first and last row of each range can be)
// leaves one partial per warp in part[warp][0 (first row) or 1 (last row)], and after a barrier the
// thread of the warp where the row starts adds them in warp order, so the result does not depend
// on timing. rowsum starts as y (accumulate) or 0, read once before the loop, and is written to y
// once at the end, one thread per row, coalesced.
//
// x: the batch members of the block's rows are staged in shared memory once per block, while the
// first two items are in flight; the math reads them there (no L1 eviction by the weight stream).
// Dynamic shared memory (host: kernels::gemv_pipe_smem): rowsum, rows_cap floats rounded up to
// 16 bytes, then x, min(batch, ceil(rows_cap / N) + 1) * K bf16 (the most members a block touches).
// Launch: grid (G, 1), block 32 * PIPE_WARPS, one block per SM (<= 128 registers, 0 spills).
#define PIPE_WARPS 16  // mirrored by kernels::PIPE_WARPS (the launch's block size)
#ifndef PIPE_U          // steps per item; can be tried from the build: ZAMBA_NVCC_FLAGS=-DPIPE_U=4
#define PIPE_U 8
#endif

// One position in a warp's step sequence. Chunk indices are block-local: chunk c of block row rho
// is rho * C + c.
struct PipeCursor {
    int g;         // the current step's first chunk
    int e;         // end of the current row piece: min(row_base + C, end of the warp's range)
    int row_base;  // chunk 0 of the current row (rho * C)
    int rho;       // the current row, block-local
    int n, b;      // its output feature and batch member
};

__device__ __forceinline__ PipeCursor pipe_cursor(int beg, int end, int r0, int C, int N) {
    PipeCursor c;
    c.g = beg;
    c.rho = beg / C;
    c.row_base = c.rho * C;
    c.e = min(c.row_base + C, end);
    const int r = r0 + c.rho;
    c.b = r / N;
    c.n = r - c.b * N;
    return c;
}

// Moves to the next step: 32 chunks on, or to the next row once this row's piece is done (then
// returns true). Past the last step, g >= end (row_base + C >= end there, since the piece ended at
// end).
__device__ __forceinline__ bool pipe_advance(PipeCursor& c, int end, int C, int N) {
    c.g += 32;
    if (c.g < c.e) return false;
    c.rho += 1;
    c.row_base += C;
    c.g = c.row_base;
    c.e = min(c.row_base + C, end);
    if (++c.n == N) {
        c.n = 0;
        ++c.b;
    }
    return true;
}

// The weight row of the cursor's current row, in 16-byte chunks.
__device__ __forceinline__ const uint4* pipe_wrow(const bf16* __restrict__ W, int ldw, long long stride_w,
                                                  const PipeCursor& c) {
    return reinterpret_cast<const uint4*>(W + (size_t)c.b * stride_w + (size_t)c.n * ldw);
}

// Issues the loads of the next PIPE_U steps (those before the end of the range) into w; wrow
// follows the cursor's row.
__device__ __forceinline__ void pipe_issue(uint4 (&w)[PIPE_U], PipeCursor& c, const uint4*& wrow, int end,
                                           const bf16* __restrict__ W, int ldw, long long stride_w, int C, int N,
                                           int lane) {
#pragma unroll
    for (int u = 0; u < PIPE_U; ++u) {
        if (c.g < end) {
            if (c.g + lane < c.e) w[u] = __ldcs(wrow + (c.g - c.row_base + lane));
            if (pipe_advance(c, end, C, N) && c.g < end) wrow = pipe_wrow(W, ldw, stride_w, c);
        }
    }
}

// bf16 to fp32 is exact by moving the 16 bits to the top: one instruction per value.
__device__ __forceinline__ void bf16x8_bits_to_f32(const uint4& raw, float* f) {
    const uint32_t u[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        f[2 * i] = __uint_as_float(u[i] << 16);
        f[2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
    }
}

// The math of the PIPE_U steps whose loads pipe_issue put in w (the same steps: c trails the
// issuing cursor by whole items). Ends of row pieces are reduced and recorded as described above;
// part points at this warp's two partials.
__device__ __forceinline__ void pipe_consume(const uint4 (&w)[PIPE_U], PipeCursor& c, int beg, int end,
                                             const uint4* xs, int b_lo, int C, int N, int lane, float& acc,
                                             float* rowsum, float* part) {
#pragma unroll
    for (int u = 0; u < PIPE_U; ++u) {
        if (c.g < end) {
            if (c.g + lane < c.e) {
                float wf[8], xf[8];
                bf16x8_bits_to_f32(w[u], wf);
                bf16x8_bits_to_f32(xs[(c.b - b_lo) * C + (c.g - c.row_base + lane)], xf);
#pragma unroll
                for (int j = 0; j < 8; ++j) acc += wf[j] * xf[j];
            }
            if (c.g + 32 >= c.e) {  // the last step of this row piece (warp-uniform)
                const float s = warp_sum(acc);
                acc = 0.f;
                if (lane == 0) {
                    if (c.row_base >= beg && c.row_base + C <= end)
                        rowsum[c.rho] += s;  // the whole row is this warp's
                    else
                        part[c.rho == beg / C ? 0 : 1] = s;  // first or last row of the range, shared
                }
            }
            pipe_advance(c, end, C, N);
        }
    }
}

extern "C" __global__ void __launch_bounds__(32 * PIPE_WARPS, 1)
gemv_pipe(const bf16* __restrict__ x, int ldx, long long stride_x, const bf16* __restrict__ W, int ldw,
          long long stride_w, void* __restrict__ y, int ldy, long long stride_y, int M, int N, int K, int y_f32,
          int accumulate, int batch, int rows_cap) {
    extern __shared__ uint4 pipe_smem[];
    __shared__ float part[PIPE_WARPS][2];
    float* rowsum = reinterpret_cast<float*>(pipe_smem);
    uint4* xs = pipe_smem + (rows_cap + 3) / 4;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int C = K / 8;
    const long long R = (long long)batch * N;
    const int r0 = (int)(R * blockIdx.x / gridDim.x);
    const int r1 = (int)(R * (blockIdx.x + 1) / gridDim.x);
    const int rows = r1 - r0;
    if (rows == 0) return;  // the whole block (more blocks than rows)
    const long long L = (long long)rows * C;
    const int beg = (int)(L * warp / PIPE_WARPS), end = (int)(L * (warp + 1) / PIPE_WARPS);
    const int b_lo = r0 / N, b_hi = (r1 - 1) / N;

    // Items 0 and 1 in flight first.
    PipeCursor ld = pipe_cursor(beg, end, r0, C, N);
    PipeCursor cc = ld;
    const uint4* wrow = pipe_wrow(W, ldw, stride_w, ld);
    uint4 wa[PIPE_U], wb[PIPE_U];
    pipe_issue(wa, ld, wrow, end, W, ldw, stride_w, C, N, lane);
    pipe_issue(wb, ld, wrow, end, W, ldw, stride_w, C, N, lane);

    // Then x (members b_lo..b_hi, C chunks each) into shared memory, and rowsum's start values:
    // each thread's loads are issued together, so this costs about one L2 round trip.
    {
        float y0 = 0.f;
        const int i0 = threadIdx.x;
        if (accumulate && i0 < rows) {
            const int r = r0 + i0, b = r / N;
            const size_t o = (size_t)b * stride_y + (r - b * N);
            y0 = y_f32 ? static_cast<const float*>(y)[o] : to_f(static_cast<const bf16*>(y)[o]);
        }
        const int xchunks = (b_hi - b_lo + 1) * C;
        for (int c0 = 0; c0 < xchunks; c0 += 4 * blockDim.x) {
            uint4 v[4];
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int i = c0 + j * blockDim.x + threadIdx.x;
                if (i < xchunks) {
                    const int bi = i / C;
                    v[j] = __ldg(reinterpret_cast<const uint4*>(x + (size_t)(b_lo + bi) * stride_x) + (i - bi * C));
                }
            }
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int i = c0 + j * blockDim.x + threadIdx.x;
                if (i < xchunks) xs[i] = v[j];
            }
        }
        if (i0 < rows) rowsum[i0] = y0;
        for (int i = i0 + blockDim.x; i < rows; i += blockDim.x) {
            float v = 0.f;
            if (accumulate) {
                const int r = r0 + i, b = r / N;
                const size_t o = (size_t)b * stride_y + (r - b * N);
                v = y_f32 ? static_cast<const float*>(y)[o] : to_f(static_cast<const bf16*>(y)[o]);
            }
            rowsum[i] = v;
        }
    }
    __syncthreads();

    // The pipeline: use item i, issue item i + 2 into the buffer it freed.
    float acc = 0.f;
    for (;;) {
        pipe_consume(wa, cc, beg, end, xs, b_lo, C, N, lane, acc, rowsum, part[warp]);
        if (cc.g >= end) break;
        pipe_issue(wa, ld, wrow, end, W, ldw, stride_w, C, N, lane);
        pipe_consume(wb, cc, beg, end, xs, b_lo, C, N, lane, acc, rowsum, part[warp]);
        if (cc.g >= end) break;
        pipe_issue(wb, ld, wrow, end, W, ldw, stride_w, C, N, lane);
    }
    __syncthreads();

    // Rows split between warps: the warp where the row starts (the row is its range's last) adds
    // the partials of every warp that holds a piece of it, in warp order.
    if (threadIdx.x < PIPE_WARPS) {
        const int t = threadIdx.x;
        const int a = (int)(L * t / PIPE_WARPS), a1 = (int)(L * (t + 1) / PIPE_WARPS);
        if (a < a1) {
            const int rl = (a1 - 1) / C;
            if (rl * C >= a && (rl + 1) * C > a1) {
                float s = part[t][rl == a / C ? 0 : 1];
                for (int u = t + 1; u < PIPE_WARPS; ++u) {
                    const int au = (int)(L * u / PIPE_WARPS), au1 = (int)(L * (u + 1) / PIPE_WARPS);
                    if (au >= (rl + 1) * C) break;
                    if (au < au1) s += part[u][0];  // row rl is the first of warp u's range
                }
                rowsum[rl] += s;
            }
        }
    }
    __syncthreads();

    for (int i = threadIdx.x; i < rows; i += blockDim.x) {
        const int r = r0 + i, b = r / N;
        const size_t o = (size_t)b * stride_y + (r - b * N);
        if (y_f32)
            static_cast<float*>(y)[o] = rowsum[i];
        else
            static_cast<bf16*>(y)[o] = to_bf(rowsum[i]);
    }
}
