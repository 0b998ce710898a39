// The conv pieces of csrc/conv.cu (scripts/conv_emu.sh checks them on the host): the weight
// loader, the conv sum of 8 channels, one token's conv and the shift of its conv state.
#pragma once
#include "common.cuh"

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

// The pre-activation conv of 8 channels for one token from its window (win[t] = tap t, KW
// entries; with K < KW taps the slots below KW - K are unused): acc = b + sum over t of
// wt[t] * win[t], in fp32, bias first, then the taps in order (conv1d_prefill and conv_token8).
template <int KW>
__device__ __forceinline__ void conv_sum8(const float (&wt)[KW][8], const float (&b)[8], const Bf16x8* win, int K,
                                          float (&acc)[8]) {
#pragma unroll
    for (int ch = 0; ch < 8; ++ch) acc[ch] = b[ch];
#pragma unroll
    for (int t = 0; t < KW; ++t) {
        if (t >= KW - K) {
#pragma unroll
            for (int ch = 0; ch < 8; ++ch) acc[ch] += wt[t][ch] * to_f(win[t].h[ch]);
        }
    }
}

// One token's conv of 8 channels from its window, as conv_sum8: bf16(silu(acc)) into o.
template <int KW>
__device__ __forceinline__ void conv_token8(const float (&wt)[KW][8], const float (&b)[8], const Bf16x8 (&win)[KW],
                                            int K, Bf16x8& o) {
    float acc[8];
    conv_sum8<KW>(wt, b, win, K, acc);
#pragma unroll
    for (int ch = 0; ch < 8; ++ch) o.h[ch] = to_bf(silu(acc[ch]));
}

// The conv state of those 8 channels after the token (st: its row 0, rows DI apart, oldest
// first): state row j = held slot j + KW - K + 1, i.e. the window without its oldest tap.
template <int KW>
__device__ __forceinline__ void conv_state_shift8(bf16* st, const Bf16x8 (&win)[KW], int K, int DI) {
#pragma unroll
    for (int q = 0; q < KW - 1; ++q) {
        const int j = q - (KW - K);
        if (j >= 0) *reinterpret_cast<uint4*>(st + (size_t)j * DI) = win[q + 1].u;
    }
}
