// Depthwise causal conv1d + SiLU over the Mamba channels, in its prefill and one-token forms.
//
// Batch layout: the tokens of all sequences in a forward are concatenated (M rows). Entry e owns
// rows [entry_start[e], entry_start[e] + len_e) and the state of slot entry_slot[e]; tok_entry[m]
// names the entry of row m. The conv state of a slot is [K-1, DI] bf16: its last K-1 conv inputs,
// oldest first. Weights are fp32 [DI, K]; tap k multiplies x[t - (K-1) + k].
#include "common.cuh"
#include "conv_weights.cuh"

#define MAX_CONV 8

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
        conv_sum8<KW>(wt, b, x + r, K, acc);
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
    Bf16x8 o;
    conv_token8<KW>(wt, bs, win, K, o);
    *reinterpret_cast<uint4*>(out + (size_t)b * DI + c0) = o.u;
    conv_state_shift8<KW>(st, win, K, DI);
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
