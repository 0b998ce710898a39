// Depthwise causal conv1d + SiLU over the Mamba channels, in its prefill and one-token forms.
//
// Batch layout: the tokens of all sequences in a forward are concatenated (M rows). Entry e owns
// rows [entry_start[e], entry_start[e] + len_e) and the state of slot entry_slot[e]; tok_entry[m]
// names the entry of row m. The conv state of a slot is [K-1, DI] bf16: its last K-1 conv inputs,
// oldest first. Weights are fp32 [DI, K]; tap k multiplies x[t - (K-1) + k].
#include "common.cuh"

#define MAX_CONV 8

// Prefill: out[m, c] = silu(bias[c] + sum_k w[c, k] * x(j - (K-1) + k)), j = m - entry_start[e],
// where x(i) = xs[entry_start[e] + i, c] for i >= 0 and conv_state[slot, K-1+i, c] for i < 0.
// xs rows have stride ldx (xs lives inside in_proj's [x | z] output). Does not touch the state:
// conv_state_update runs after it. Each thread computes CONV_ROWS consecutive rows of one channel
// (its taps loaded once; the rows' overlapping inputs come from L1), so that the loads of
// neighbouring rows are in flight together.
// Launch: grid (ceil(DI/256), ceil(M/CONV_ROWS)), block 256.
#define CONV_ROWS 8
extern "C" __global__ void conv1d_prefill(const bf16* __restrict__ xs, int ldx,
                                          const int* __restrict__ tok_entry,
                                          const int* __restrict__ entry_start,
                                          const int* __restrict__ entry_slot,
                                          const bf16* __restrict__ conv_state,
                                          const float* __restrict__ w, const float* __restrict__ bias,
                                          bf16* __restrict__ out, int M, int DI, int K) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= DI) return;
    float wc[MAX_CONV];
#pragma unroll
    for (int k = 0; k < MAX_CONV; ++k) wc[k] = k < K ? w[c * K + k] : 0.f;
    const float b = bias[c];
#pragma unroll
    for (int r = 0; r < CONV_ROWS; ++r) {
        const int m = blockIdx.y * CONV_ROWS + r;
        if (m >= M) break;
        const int e = tok_entry[m];
        const int start = entry_start[e];
        const int j = m - start;
        const bf16* st = conv_state + (size_t)entry_slot[e] * (K - 1) * DI;
        float acc = b;
#pragma unroll
        for (int k = 0; k < MAX_CONV; ++k) {
            if (k < K) {
                const int i = j - (K - 1) + k;
                const float x =
                    i >= 0 ? to_f(xs[(size_t)(start + i) * ldx + c]) : to_f(st[(size_t)(K - 1 + i) * DI + c]);
                acc += wc[k] * x;
            }
        }
        out[(size_t)m * DI + c] = to_bf(silu(acc));
    }
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

// One-token update (decode): row b is entry b's only token. The window is [state (K-1), x];
// out[b, c] = silu(bias[c] + sum_k w[c, k] * window[k]); the state becomes window[1..K].
// Launch: grid (ceil(DI/256), B), block 256.
extern "C" __global__ void conv1d_update(const bf16* __restrict__ xs, int ldx,
                                         const int* __restrict__ entry_slot,
                                         bf16* __restrict__ conv_state,
                                         const float* __restrict__ w, const float* __restrict__ bias,
                                         bf16* __restrict__ out, int DI, int K) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    const int b = blockIdx.y;
    if (c >= DI) return;
    bf16* st = conv_state + (size_t)entry_slot[b] * (K - 1) * DI;
    bf16 win[MAX_CONV];
    float winf[MAX_CONV];
    for (int j = 0; j < K - 1; ++j) win[j] = st[(size_t)j * DI + c];
    win[K - 1] = xs[(size_t)b * ldx + c];
    for (int k = 0; k < K; ++k) winf[k] = to_f(win[k]);
    out[(size_t)b * DI + c] = conv_silu(bias[c], w + (size_t)c * K, winf, K);
    for (int j = 0; j < K - 1; ++j) st[(size_t)j * DI + c] = win[j + 1];
}
