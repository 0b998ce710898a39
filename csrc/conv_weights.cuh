// The conv weight loader shared by csrc/conv.cu and csrc/conv_xproj.cu.
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
