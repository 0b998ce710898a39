// Depthwise causal conv1d + SiLU over the Mamba channels, in its prefill and one-token forms.
//
// Batch layout: the tokens of all sequences in a forward are concatenated (M rows). Entry e owns
// rows [entry_start[e], entry_start[e] + len_e) and the state of slot entry_slot[e]; tok_entry[m]
// names the entry of row m. The conv state of a slot is [K-1, DI] bf16: its last K-1 conv inputs,
// oldest first. Weights are fp32 [DI, K]; tap k multiplies x[t - (K-1) + k].
#include "common.cuh"

#define MAX_CONV 8

// The weights and biases of channels c0 .. c0 + 7 for K <= KW taps, tap k of channel c0 + ch in
// wt[KW - K + k][ch] (slots below KW - K are 0) and the biases in b. The thread's 8·K weights and
// 8 biases are contiguous: with K == KW they are read as float4s (a warp's scalar loads at a
// 128-byte stride cost one cache line each). Needs bias + c0 and (K == KW) w + c0·K 16-byte aligned.
template <int KW>
__device__ __forceinline__ void conv_load_weights(const float* w, const float* bias, int c0, int K,
                                                  float (&wt)[KW][8], float (&b)[8]) {
    const float4* b4 = reinterpret_cast<const float4*>(bias + c0);
    const float4 blo = b4[0], bhi = b4[1];
    b[0] = blo.x; b[1] = blo.y; b[2] = blo.z; b[3] = blo.w;
    b[4] = bhi.x; b[5] = bhi.y; b[6] = bhi.z; b[7] = bhi.w;
    if (K == KW) {
        const float4* w4 = reinterpret_cast<const float4*>(w + (size_t)c0 * KW);
#pragma unroll
        for (int ch = 0; ch < 8; ++ch) {
#pragma unroll
            for (int q = 0; q < KW / 4; ++q) {
                const float4 v = w4[ch * (KW / 4) + q];
                wt[4 * q][ch] = v.x; wt[4 * q + 1][ch] = v.y; wt[4 * q + 2][ch] = v.z; wt[4 * q + 3][ch] = v.w;
            }
        }
    } else {
#pragma unroll
        for (int ch = 0; ch < 8; ++ch) {
#pragma unroll
            for (int t = 0; t < KW; ++t) wt[t][ch] = t >= KW - K ? w[(size_t)(c0 + ch) * K + t - (KW - K)] : 0.f;
        }
    }
}

// Prefill: out[m, c] = silu(bias[c] + sum_k w[c, k] * x(j - (K-1) + k)), j = m - entry_start[e],
// where x(i) = xs[entry_start[e] + i, c] for i >= 0 and conv_state[slot, K-1+i, c] for i < 0.
// The sum is fp32, bias first, then the taps in order k = 0, 1, ...; silu is silu_fast (a few
// ulp, common.cuh); the output is bf16.
// xs rows have stride ldx (xs lives inside in_proj's [x | z] output). Does not touch the state:
// conv_state_update runs after it.
//
// Each thread computes 8 consecutive channels (16-byte loads and stores: needs DI % 8 == 0,
// ldx % 8 == 0 and 16-byte aligned xs, conv_state, out, w and bias) of CONV_ROWS consecutive rows. It loads
// those rows and the K-1 rows above them up front, all in flight together, and holds them: every
// row is read once. Entry info is looked up again only where a row's entry differs from the row
// before it. Where a row's tap reaches before its entry's first row, the entry's state replaces
// that held row: the entry's later rows want the same value there, and a later entry in the run
// starts after this entry's rows, so its taps that reach that far back are replaced again.
// Launch: grid (ceil(DI / (8 * CONV_THREADS)), ceil(M / CONV_ROWS)), block CONV_THREADS; the
// kernel conv1d_prefill for K <= 4, conv1d_prefill_k8 for larger K.
#define CONV_ROWS 8
#define CONV_THREADS 64

// The body for K <= KW taps: held row q is row m0 - (KW-1) + q, so the taps of row r are held rows
// r + KW-K .. r + KW-1 (tap k at r + KW-K + k), and the slots below KW-K are never used.
template <int KW>
__device__ __forceinline__ void conv1d_prefill_rows(const bf16* __restrict__ xs, int ldx,
                                                    const int* __restrict__ tok_entry,
                                                    const int* __restrict__ entry_start,
                                                    const int* __restrict__ entry_slot,
                                                    const bf16* __restrict__ conv_state,
                                                    const float* __restrict__ w, const float* __restrict__ bias,
                                                    bf16* __restrict__ out, int M, int DI, int K) {
    const int c0 = (blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (c0 >= DI) return;
    const int m0 = blockIdx.y * CONV_ROWS;
    // The rows' entries first, all in flight together (they decide which state rows replace held
    // rows; looked up one row at a time they cost a round trip per row).
    int ent[CONV_ROWS];
#pragma unroll
    for (int r = 0; r < CONV_ROWS; ++r) ent[r] = m0 + r < M ? tok_entry[m0 + r] : -1;
    Bf16x8 x[KW - 1 + CONV_ROWS];
#pragma unroll
    for (int q = 0; q < KW - 1 + CONV_ROWS; ++q) {
        const int m = m0 - (KW - 1) + q;
        x[q].u = q >= KW - K && m >= 0 && m < M ? *reinterpret_cast<const uint4*>(xs + (size_t)m * ldx + c0)
                                                : make_uint4(0, 0, 0, 0);
    }
    float wt[KW][8], b[8];
    conv_load_weights<KW>(w, bias, c0, K, wt, b);
    int e = -1, start = 0;
    const bf16* st = conv_state;
#pragma unroll
    for (int r = 0; r < CONV_ROWS; ++r) {
        const int m = m0 + r;
        if (m >= M) break;
        const int em = ent[r];
        if (em != e) {
            e = em;
            start = entry_start[e];
            st = conv_state + (size_t)entry_slot[e] * (K - 1) * DI + c0;
        }
        const int j = m - start;
        if (j < K - 1) {
#pragma unroll
            for (int t = 0; t < KW - 1; ++t) {
                const int i = j - (KW - 1) + t;
                if (t >= KW - K && i < 0) x[r + t].u = *reinterpret_cast<const uint4*>(st + (size_t)(K - 1 + i) * DI);
            }
        }
        float acc[8];
#pragma unroll
        for (int ch = 0; ch < 8; ++ch) acc[ch] = b[ch];
#pragma unroll
        for (int t = 0; t < KW; ++t) {
            if (t >= KW - K) {
#pragma unroll
                for (int ch = 0; ch < 8; ++ch) acc[ch] += wt[t][ch] * to_f(x[r + t].h[ch]);
            }
        }
        Bf16x8 o;
#pragma unroll
        for (int ch = 0; ch < 8; ++ch) o.h[ch] = to_bf(silu_fast(acc[ch]));
        *reinterpret_cast<uint4*>(out + (size_t)m * DI + c0) = o.u;
    }
}

// K <= 4 (Zamba's 4 among them). At most 128 registers, so that 16 warps fit on an SM.
extern "C" __global__ void __launch_bounds__(CONV_THREADS, 8)
    conv1d_prefill(const bf16* __restrict__ xs, int ldx, const int* __restrict__ tok_entry,
                   const int* __restrict__ entry_start, const int* __restrict__ entry_slot,
                   const bf16* __restrict__ conv_state, const float* __restrict__ w,
                   const float* __restrict__ bias, bf16* __restrict__ out, int M, int DI, int K) {
    conv1d_prefill_rows<4>(xs, ldx, tok_entry, entry_start, entry_slot, conv_state, w, bias, out, M, DI, K);
}

// 4 < K <= MAX_CONV: a kernel of its own, so that its larger register file does not cost the
// common one occupancy.
extern "C" __global__ void conv1d_prefill_k8(const bf16* __restrict__ xs, int ldx,
                                             const int* __restrict__ tok_entry,
                                             const int* __restrict__ entry_start,
                                             const int* __restrict__ entry_slot,
                                             const bf16* __restrict__ conv_state,
                                             const float* __restrict__ w, const float* __restrict__ bias,
                                             bf16* __restrict__ out, int M, int DI, int K) {
    conv1d_prefill_rows<MAX_CONV>(xs, ldx, tok_entry, entry_start, entry_slot, conv_state, w, bias, out, M,
                                  DI, K);
}

// After conv1d_prefill: each entry's slot keeps the last K-1 inputs of (old state ++ new tokens):
// new[j] = ext[len + j], ext(i) = i < K-1 ? old[i] : xs[start + i - (K-1)].
// Launch: grid (ceil(DI/256), n_entries), block 256.
extern "C" __global__ void conv_state_update(const bf16* __restrict__ xs, int ldx,
                                             const int* __restrict__ entry_start,
                                             const int* __restrict__ entry_len,
                                             const int* __restrict__ entry_slot,
                                             bf16* __restrict__ conv_state, int DI, int K) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    const int e = blockIdx.y;
    if (c >= DI) return;
    const int start = entry_start[e], len = entry_len[e];
    bf16* st = conv_state + (size_t)entry_slot[e] * (K - 1) * DI;
    bf16 next[MAX_CONV];
    for (int j = 0; j < K - 1; ++j) {
        const int i = len + j;
        next[j] = i < K - 1 ? st[(size_t)i * DI + c] : xs[(size_t)(start + i - (K - 1)) * ldx + c];
    }
    for (int j = 0; j < K - 1; ++j) st[(size_t)j * DI + c] = next[j];
}

// One-token update (decode): row b is entry b's only token. Per channel c the window is
// [state (K-1 rows, oldest first), x]:
//   out[b, c] = silu(bias[c] + sum_k w[c, k] * window[k])    (fp32, bias first, taps in order)
// and the state becomes window[1..K].
// Each thread takes 8 consecutive channels of one entry in 16-byte loads and stores (DI % 8 == 0,
// ldx % 8 == 0, 16-byte aligned buffers; the host checks), so a batch of 64 issues an eighth of
// the requests of a thread per channel (that form took 8.8 us per layer at batch 64, for ~8 MB).
// The weights, the bias and the entry's conv-state rows are read before griddepcontrol.wait: the
// weights are constant, and a layer's conv state is written only by this kernel one step earlier
// (or by prefill), never by an earlier kernel of the same step; the step's slot table is uploaded
// before the step starts.
// Launch: grid (ceil(DI / 8 / CONV_UPD_THREADS), B), block CONV_UPD_THREADS; conv1d_update for
// K <= 4, conv1d_update_k8 for larger K. Held slot q of the window is tap q - (KW - K).
#define CONV_UPD_THREADS 128

template <int KW>
__device__ __forceinline__ void conv1d_update_body(const bf16* xs, int ldx, const int* entry_slot,
                                                   bf16* conv_state, const float* w, const float* bias,
                                                   bf16* out, int DI, int K) {
    pdl_trigger();
    const int c0 = (blockIdx.x * blockDim.x + threadIdx.x) * 8;
    const int b = blockIdx.y;
    if (c0 >= DI) {
        pdl_wait();  // every thread waits before it exits (common.cuh)
        return;
    }
    float wt[KW][8], bs[8];
    conv_load_weights<KW>(w, bias, c0, K, wt, bs);
    bf16* st = conv_state + (size_t)entry_slot[b] * (K - 1) * DI + c0;
    Bf16x8 win[KW];
#pragma unroll
    for (int q = 0; q < KW - 1; ++q) {
        const int j = q - (KW - K);  // state row j, oldest first
        win[q].u = j >= 0 ? *reinterpret_cast<const uint4*>(st + (size_t)j * DI) : make_uint4(0, 0, 0, 0);
    }
    pdl_wait();
    win[KW - 1].u = *reinterpret_cast<const uint4*>(xs + (size_t)b * ldx + c0);
    float acc[8];
#pragma unroll
    for (int ch = 0; ch < 8; ++ch) acc[ch] = bs[ch];
#pragma unroll
    for (int t = 0; t < KW; ++t) {
        if (t >= KW - K) {
#pragma unroll
            for (int ch = 0; ch < 8; ++ch) acc[ch] += wt[t][ch] * to_f(win[t].h[ch]);
        }
    }
    Bf16x8 o;
#pragma unroll
    for (int ch = 0; ch < 8; ++ch) o.h[ch] = to_bf(silu(acc[ch]));
    *reinterpret_cast<uint4*>(out + (size_t)b * DI + c0) = o.u;
#pragma unroll
    for (int q = 0; q < KW - 1; ++q) {
        const int j = q - (KW - K);
        if (j >= 0) *reinterpret_cast<uint4*>(st + (size_t)j * DI) = win[q + 1].u;
    }
}

// K <= 4 (Zamba's 4 among them).
extern "C" __global__ void __launch_bounds__(CONV_UPD_THREADS)
    conv1d_update(const bf16* xs, int ldx, const int* entry_slot, bf16* conv_state, const float* w,
                  const float* bias, bf16* out, int DI, int K) {
    conv1d_update_body<4>(xs, ldx, entry_slot, conv_state, w, bias, out, DI, K);
}

// 4 < K <= MAX_CONV.
extern "C" __global__ void __launch_bounds__(CONV_UPD_THREADS)
    conv1d_update_k8(const bf16* xs, int ldx, const int* entry_slot, bf16* conv_state, const float* w,
                     const float* bias, bf16* out, int DI, int K) {
    conv1d_update_body<MAX_CONV>(xs, ldx, entry_slot, conv_state, w, bias, out, DI, K);
}

// Decode at batch B (one token per entry): the conv update of conv1d_update and the x_proj GEMM
// in two kernels, for batches past the single-row paths (the engine uses them from 9 entries):
//   xc[b, c]      = bf16(silu(bias[c] + sum_k w[c, k] * win_k[b, c]))   (conv1d_update's math;
//                   the conv state is updated the same way)
//   part[j, b, r] = sum_{c in block j} xc[b, c] * Wx[h][r][c - h*DH]     (fp32, tensor cores)
//   xdbl[b, h, r] = bf16(sum over the blocks j of head h, in order, of part[j, b, r])
// Block j owns CX_CH = 64 channels of one head (DH % 64 == 0) and CX_EB = 64 entries: it loads
// its slice of x_proj (XR rows x 64 channels, before griddepcontrol.wait: constant weights) and
// its entries' conv inputs, computes their conv outputs into shared memory (and xc), then the
// partial x_proj product on mma.m16n8k16 (A = xc rows, B = the weight slice; fragments read
// straight from shared memory, rows padded to 72 bf16 so that a fragment load hits 32 distinct
// banks). The reduction over blocks is conv_xproj_reduce, in a fixed order (deterministic).
// Why: at batch 64 conv1d_update cost 5.6 us and the x_proj GEMM 7.6 us per layer in the
// replayed graph (BENCHMARKS.md) for 4 MB of weights and a few MB of activations.
// Status: off by default (ZAMBA_CONV_XPROJ=1). The first form passed its tests on the H200 but
// was slower: ncu 13.6 + 4.9 us at batch 64 (its weight slice loaded by a load-then-store loop,
// one round trip per piece, and the reduction's loads one at a time). The current form (cp.async
// for the slice, every conv load issued first, 16 reduction loads in flight) is not measured.
// Launch: grid (DI / 64, ceil(B / 64)), block 256. Needs K <= 4, XR % 8 == 0, XR <= CX_XR_MAX,
// DH % 64 == 0, ldx % 8 == 0 and 16-byte aligned xs, conv_state, xc, w, bias and x_proj.
#include "flash_common.cuh"
#include "mma.cuh"
#define CX_CH 64
#define CX_EB 64
#define CX_XR_MAX 272
#define CX_LDS 72  // shared row stride in bf16 (64 + 8)

extern "C" __global__ void __launch_bounds__(256)
    conv_xproj(const bf16* xs, int ldx, const int* entry_slot, bf16* conv_state, const float* w,
               const float* bias, bf16* xc, const bf16* x_proj, float* part, int B, int DI, int DH, int XR,
               int K) {
    __shared__ __align__(16) bf16 xsm[CX_EB * CX_LDS];
    __shared__ __align__(16) bf16 wsm[CX_XR_MAX * CX_LDS];
    pdl_trigger();
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int c0 = blockIdx.x * CX_CH, h = c0 / DH, cl0 = c0 - h * DH;
    const int b0 = blockIdx.y * CX_EB, nb = min(CX_EB, B - b0);
    // The block's x_proj slice: row r, channels cl0 .. cl0 + 63 of head h, as 8 16-byte pieces,
    // all in flight at once (cp.async; a load-then-store loop waited for each in turn: 13.6 us).
    for (int i = tid; i < XR * 8; i += 256) {
        const int r = i >> 3, k = i & 7;
        fa_cp_async16(fa_smem_addr(wsm + r * CX_LDS + 8 * k), x_proj + ((size_t)h * XR + r) * DH + cl0 + 8 * k, true);
    }
    fa_cp_async_commit();
    pdl_wait();
    // The conv: item = (entry e, 8 channels q); entries past B give zero rows. Every load of
    // the thread's items (slot, then its state rows and input) is issued before any store.
    constexpr int IT = CX_EB * 8 / 256;
    int slot[IT];
#pragma unroll
    for (int it = 0; it < IT; ++it) {
        const int e = (tid + 256 * it) >> 3;
        slot[it] = e < nb ? entry_slot[b0 + e] : -1;
    }
    Bf16x8 win[IT][4];
#pragma unroll
    for (int it = 0; it < IT; ++it) {
        const int item = tid + 256 * it, e = item >> 3, c = c0 + 8 * (item & 7);
        const bf16* st = conv_state + (size_t)max(slot[it], 0) * (K - 1) * DI + c;
#pragma unroll
        for (int t = 0; t < 3; ++t) {
            const int j = t - (4 - K);  // state row j, oldest first
            win[it][t].u = slot[it] >= 0 && j >= 0 ? *reinterpret_cast<const uint4*>(st + (size_t)j * DI)
                                                   : make_uint4(0, 0, 0, 0);
        }
        win[it][3].u = slot[it] >= 0 ? *reinterpret_cast<const uint4*>(xs + (size_t)(b0 + e) * ldx + c)
                                     : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int it = 0; it < IT; ++it) {
        const int item = tid + 256 * it, e = item >> 3, c = c0 + 8 * (item & 7);
        Bf16x8 o;
        o.u = make_uint4(0, 0, 0, 0);
        if (slot[it] >= 0) {
            float wt[4][8], bs[8];
            conv_load_weights<4>(w, bias, c, K, wt, bs);
            float acc[8];
#pragma unroll
            for (int ch = 0; ch < 8; ++ch) acc[ch] = bs[ch];
#pragma unroll
            for (int t = 0; t < 4; ++t)
                if (t >= 4 - K) {
#pragma unroll
                    for (int ch = 0; ch < 8; ++ch) acc[ch] += wt[t][ch] * to_f(win[it][t].h[ch]);
                }
#pragma unroll
            for (int ch = 0; ch < 8; ++ch) o.h[ch] = to_bf(silu(acc[ch]));
            *reinterpret_cast<uint4*>(xc + (size_t)(b0 + e) * DI + c) = o.u;
            bf16* st = conv_state + (size_t)slot[it] * (K - 1) * DI + c;
#pragma unroll
            for (int t = 0; t < 3; ++t) {
                const int j = t - (4 - K);
                if (j >= 0) *reinterpret_cast<uint4*>(st + (size_t)j * DI) = win[it][t + 1].u;
            }
        }
        *reinterpret_cast<uint4*>(xsm + e * CX_LDS + 8 * (item & 7)) = o.u;
    }
    fa_cp_async_wait_all();
    __syncthreads();
    // part[j, b, r] for this block's entries: m16 tiles of entries x n8 tiles of rows, k = 64.
    const int mt_n = (nb + 15) >> 4, nt_n = XR >> 3;
    const int g = lane >> 2, t4 = lane & 3;
    for (int tile = warp; tile < mt_n * nt_n; tile += 8) {
        const int mt = tile / nt_n, nt = tile - mt * nt_n;
        float d[4] = {0.f, 0.f, 0.f, 0.f};
        const bf16* ar0 = xsm + (mt * 16 + g) * CX_LDS + 2 * t4;
        const bf16* ar1 = ar0 + 8 * CX_LDS;
        const bf16* br = wsm + (nt * 8 + g) * CX_LDS + 2 * t4;
#pragma unroll
        for (int ks = 0; ks < CX_CH / 16; ++ks) {
            const int k0 = ks * 16;
            const uint32_t a[4] = {*reinterpret_cast<const uint32_t*>(ar0 + k0),
                                   *reinterpret_cast<const uint32_t*>(ar1 + k0),
                                   *reinterpret_cast<const uint32_t*>(ar0 + k0 + 8),
                                   *reinterpret_cast<const uint32_t*>(ar1 + k0 + 8)};
            mma_bf16_16816(d, a, *reinterpret_cast<const uint32_t*>(br + k0),
                           *reinterpret_cast<const uint32_t*>(br + k0 + 8));
        }
        const int e0 = mt * 16 + g, r = nt * 8 + 2 * t4;
        float* p = part + ((size_t)blockIdx.x * B + b0) * XR + r;
        if (e0 < nb) *reinterpret_cast<float2*>(p + (size_t)e0 * XR) = make_float2(d[0], d[1]);
        if (e0 + 8 < nb) *reinterpret_cast<float2*>(p + (size_t)(e0 + 8) * XR) = make_float2(d[2], d[3]);
    }
}

// xdbl[b, h, r] = bf16(sum_{j < nbh} part[h * nbh + j, b, r]), nbh = DH / 64 blocks per head,
// summed in order of j. Launch: grid ceil(B * NH * XR / 256), block 256.
extern "C" __global__ void __launch_bounds__(256)
    conv_xproj_reduce(const float* part, bf16* xdbl, int B, int NH, int XR, int nbh) {
    pdl_enter();
    const int idx = blockIdx.x * 256 + threadIdx.x;
    if (idx >= B * NH * XR) return;
    const int b = idx / (NH * XR), rem = idx - b * NH * XR, h = rem / XR, r = rem - h * XR;
    const float* p = part + ((size_t)h * nbh * B + b) * XR + r;
    const size_t step = (size_t)B * XR;
    // 16 loads in flight at a time, then added in order (a plain loop waited on each in turn).
    float s = 0.f;
    for (int j0 = 0; j0 < nbh; j0 += 16) {
        float v[16];
#pragma unroll
        for (int j = 0; j < 16; ++j) v[j] = j0 + j < nbh ? p[(j0 + j) * step] : 0.f;
#pragma unroll
        for (int j = 0; j < 16; ++j) s += v[j];
    }
    xdbl[idx] = to_bf(s);
}
