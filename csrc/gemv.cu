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

// Issues the loads of chunks c0 + lane + 32 i (i < INFLIGHT) of weight row wrow, those before
// c_end (the others are zeros and never used).
template <int INFLIGHT>
__device__ __forceinline__ void gemv_issue(uint4 (&w)[INFLIGHT], const uint4* __restrict__ wrow, int c0, int c_end,
                                           int lane) {
#pragma unroll
    for (int i = 0; i < INFLIGHT; ++i) {
        const int c = c0 + lane + 32 * i;
        w[i] = c < c_end ? __ldcs(wrow + c) : make_uint4(0, 0, 0, 0);
    }
}

// acc[m] += the products of the chunks gemv_issue loaded into w with chunk c of x row m, for m < M,
// chunk by chunk in order, xchunk(m, c) returning that x chunk. Every kernel here accumulates a
// lane's chunks through this, so that the same lane, chunks and x give the same bits.
template <int MAXM, int INFLIGHT, class XChunk>
__device__ __forceinline__ void gemv_consume(const uint4 (&w)[INFLIGHT], int c0, int c_end, int lane, int M,
                                             const XChunk& xchunk, float (&acc)[MAXM]) {
#pragma unroll
    for (int i = 0; i < INFLIGHT; ++i) {
        const int c = c0 + lane + 32 * i;
        if (c < c_end) {
            float wf[8];
            bf16x8_to_f32(w[i], wf);
#pragma unroll
            for (int m = 0; m < MAXM; ++m) {
                if (m < M) {
                    float xf[8];
                    bf16x8_to_f32(xchunk(m, c), xf);
#pragma unroll
                    for (int j = 0; j < 8; ++j) acc[m] += wf[j] * xf[j];
                }
            }
        }
    }
}

// A row's sum from the warp sums of its wpr parts (part p at parts[p * stride]), in part order.
__device__ __forceinline__ float gemv_parts_sum(const float* parts, int stride, int wpr) {
    float s = 0.f;
    for (int p = 0; p < wpr; ++p) s += parts[p * stride];
    return s;
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
        const auto xchunk = [&](int m, int c) {
            return __ldg(reinterpret_cast<const uint4*>(x + (size_t)m * ldx) + c);
        };
        for (int c0 = c_begin; c0 < c_end; c0 += 32 * GEMV_INFLIGHT) {
            uint4 w[GEMV_INFLIGHT];
            gemv_issue(w, wrow, c0, c_end, lane);
            gemv_consume(w, c0, c_end, lane, M, xchunk, acc);
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
            const float s = gemv_parts_sum(&part_sum[warp][m], MAXM, wpr);
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

// x_proj for one token (batch-1 decode) with conv1d_update's conv computed on the fly, so that
// decode runs no conv kernel. Per head hh = blockIdx.y, channels c = hh·DH + i (i < DH):
//   u[i]     = conv_silu(bias[c], w[c, :], (conv_state[slot, 0..K-2, c], x[c]))   (bf16, = xc[c])
//   y[hh, n] = sum_i W[hh][n, i] · u[i]                         (n < XR; fp32 sums, bf16 out)
// with slot = entry_slot[0], x in_proj's x row, W x_proj's weight [NH][XR][DH] and y xdbl [NH][XR].
// u is what conv1d_update writes to xc, and each row is summed exactly as gemv_m1 sums it for the
// same wpr (the same lanes take the same chunks in the same order through gemv_issue and
// gemv_consume; gemv_parts_sum), so y has the unfused path's bits. The conv state is only read
// (ssm_decode_dt_conv shifts it afterwards); xc is not written.
//
// A block first computes its head's DH values of u into shared memory (8 channels per thread and
// step, all 14 loads of a step issued together: 28 bytes per channel, mostly L2 hits), with its
// first weight loads already in flight. Then its XC_WARPS warps take XC_WARPS / wpr rows at a time,
// wpr warps per row as in gemv_m1, for rows_per_block / (XC_WARPS / wpr) passes. A warp's work is
// a sequence of items, one per pass and round of XC_INFLIGHT chunks per lane (one round while its
// part of a row has at most 32 · XC_INFLIGHT chunks), double-buffered: item i + 1 is in flight
// while item i is used. Every block recomputes its head's u, so the host gives blocks several
// passes (fewer blocks) to keep that traffic small.
// Needs DH % 8 == 0, K == FUSED_CONV_K, XC_WARPS % wpr == 0 and rows_per_block a multiple of
// XC_WARPS / wpr.
// Launch: grid (ceil(XR / rows_per_block), NH), block 32 · XC_WARPS, DH · 2 bytes of dynamic shared
// memory.
#define XC_WARPS 16  // mirrored by kernels::XC_WARPS
#define XC_INFLIGHT 8
static_assert(FUSED_CONV_K == 4, "one float4 holds a channel's conv taps");

extern "C" __global__ void __launch_bounds__(32 * XC_WARPS)
xproj_conv_m1(const bf16* __restrict__ xs, const int* __restrict__ entry_slot, const bf16* __restrict__ conv_state,
              const float* __restrict__ conv_w, const float* __restrict__ conv_b, const bf16* __restrict__ W,
              bf16* __restrict__ y, int DI, int DH, int XR, int wpr, int rows_per_block) {
    extern __shared__ uint4 xc_u[];  // u as DH / 8 chunks of 8 bf16
    __shared__ float part_sum[2][XC_WARPS];
    constexpr int K = FUSED_CONV_K;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int hh = blockIdx.y;
    const int rows_per_pass = XC_WARPS / wpr;
    const int part = warp % wpr;
    const int chunks = DH / 8;
    const int seg = (chunks + wpr - 1) / wpr;
    const int c_begin = part * seg, c_end = min(chunks, c_begin + seg);
    const int rounds = (seg + 32 * XC_INFLIGHT - 1) / (32 * XC_INFLIGHT);
    const int items = rows_per_block / rows_per_pass * rounds;
    const bf16* Wh = W + (size_t)hh * XR * DH;
    // Item i: this warp's row n in pass i / rounds, from chunk c0 (round i % rounds); n >= XR is
    // past the matrix (no loads, no math).
    const auto item = [&](int i, int& n, int& c0) {
        n = blockIdx.x * rows_per_block + i / rounds * rows_per_pass + warp / wpr;
        c0 = c_begin + i % rounds * 32 * XC_INFLIGHT;
    };
    const auto issue = [&](uint4(&w)[XC_INFLIGHT], int i) {
        int n, c0;
        item(i, n, c0);
        if (n < XR) gemv_issue(w, reinterpret_cast<const uint4*>(Wh + (size_t)n * DH), c0, c_end, lane);
    };
    uint4 wa[XC_INFLIGHT], wb[XC_INFLIGHT];
    issue(wa, 0);

    // u into shared memory.
    {
        const bf16* st = conv_state + (size_t)entry_slot[0] * (K - 1) * DI + (size_t)hh * DH;
        const uint4* xh = reinterpret_cast<const uint4*>(xs + (size_t)hh * DH);
        const float4* wh = reinterpret_cast<const float4*>(conv_w + (size_t)hh * DH * K);
        const float4* bh = reinterpret_cast<const float4*>(conv_b + (size_t)hh * DH);
        for (int q = threadIdx.x; q < chunks; q += blockDim.x) {
            uint4 win[K];
#pragma unroll
            for (int j = 0; j < K - 1; ++j) win[j] = __ldg(reinterpret_cast<const uint4*>(st + (size_t)j * DI) + q);
            win[K - 1] = __ldg(xh + q);
            float4 wv[8];
#pragma unroll
            for (int i = 0; i < 8; ++i) wv[i] = __ldg(wh + 8 * q + i);
            const float4 b0 = __ldg(bh + 2 * q), b1 = __ldg(bh + 2 * q + 1);
            const float bias[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
            float wf[K][8];
#pragma unroll
            for (int k = 0; k < K; ++k) bf16x8_to_f32(win[k], wf[k]);
            uint4 out;
            bf16* o = reinterpret_cast<bf16*>(&out);
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                const float taps[K] = {wv[i].x, wv[i].y, wv[i].z, wv[i].w};
                const float window[K] = {wf[0][i], wf[1][i], wf[2][i], wf[3][i]};
                o[i] = conv_silu(bias[i], taps, window, K);
            }
            xc_u[q] = out;
        }
    }
    __syncthreads();

    float acc[1] = {0.f};
    const auto xchunk = [&](int, int c) { return xc_u[c]; };
    const auto use = [&](const uint4(&w)[XC_INFLIGHT], int i) {
        int n, c0;
        item(i, n, c0);
        if (n < XR) gemv_consume(w, c0, c_end, lane, 1, xchunk, acc);
        if (i % rounds != rounds - 1) return;  // the row goes on (block-uniform)
        // The pass's rows are done. part_sum alternates between passes: pass p + 2 writes a half
        // only after the barrier of pass p + 1, which its readers of pass p have passed.
        const int half = (i / rounds) & 1;
        const float s = warp_sum(acc[0]);
        acc[0] = 0.f;
        if (lane == 0) part_sum[half][warp] = s;
        if (wpr > 1) __syncthreads();
        if (part == 0 && lane == 0 && n < XR)
            y[(size_t)hh * XR + n] = to_bf(gemv_parts_sum(&part_sum[half][warp], 1, wpr));
    };
    for (int i = 0; i < items; i += 2) {
        if (i + 1 < items) issue(wb, i + 1);
        use(wa, i);
        if (i + 1 == items) break;
        if (i + 2 < items) issue(wa, i + 2);
        use(wb, i + 1);
    }
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
