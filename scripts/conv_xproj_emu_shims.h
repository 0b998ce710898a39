// Host stand-ins for the GPU-only helpers csrc/conv_xproj.cu uses, for scripts/conv_xproj_emu.cpp
// (scripts/conv_xproj_emu.sh puts them where the kernel includes flash_common.cuh and mma.cuh):
// cp.async becomes a 16-byte copy (the kernel waits for all of its copies before it reads them,
// so copying at once changes nothing it can see), and mma.m16n8k16 a warp-wide exchange of the
// fragments through scripts/cuda_emu.h's warp barriers, then the 16x8 product in fp32.
#pragma once
#include "cuda_emu.h"

// A shared-window address is 32 bits on the GPU; here the high half of the host pointer is kept
// per thread, and the copy that follows rebuilds the pointer from it.
inline thread_local uint64_t g_smem_hi;
inline uint32_t fa_smem_addr(const void* p) {
    const auto v = reinterpret_cast<uint64_t>(p);
    g_smem_hi = v >> 32;
    return static_cast<uint32_t>(v);
}
inline void fa_cp_async16(uint32_t dst, const void* src, bool valid) {
    void* d = reinterpret_cast<void*>((g_smem_hi << 32) | dst);
    if (valid) std::memcpy(d, src, 16);
    else std::memset(d, 0, 16);
}
inline void fa_cp_async_commit() {}
inline void fa_cp_async_wait_all() {}

struct MmaExchange {
    uint32_t a[32][4];
    uint32_t b[32][2];
};
inline MmaExchange g_mma[32];  // per warp of the block

// The two bf16 halves of a fragment register: the lower-indexed element is in the low half.
inline float frag_lo(uint32_t v) { return __uint_as_float(v << 16); }
inline float frag_hi(uint32_t v) { return __uint_as_float(v & 0xffff0000u); }

// D += A B with the PTX fragment layout of mma.m16n8k16.row.col (bf16 in, fp32 accumulate): lane
// 4g + t holds A[g][2t..2t+1], A[g+8][2t..], A[g][2t+8..], A[g+8][2t+8..] in a[0..3], B[2t..2t+1][g]
// in b0, B[2t+8..2t+9][g] in b1, and D[g][2t], D[g][2t+1], D[g+8][2t], D[g+8][2t+1] in d[0..3].
inline void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    WarpEmu& w = *g_warps[warp];
    MmaExchange& x = g_mma[warp];
    for (int i = 0; i < 4; ++i) x.a[lane][i] = a[i];
    x.b[lane][0] = b0;
    x.b[lane][1] = b1;
    w.bar.arrive_and_wait();
    float A[16][16], B[16][8];
    for (int l = 0; l < 32; ++l) {
        const int g = l / 4, t = l % 4;
        const int rows[4] = {g, g + 8, g, g + 8}, cols[4] = {2 * t, 2 * t, 2 * t + 8, 2 * t + 8};
        for (int i = 0; i < 4; ++i) {
            A[rows[i]][cols[i]] = frag_lo(x.a[l][i]);
            A[rows[i]][cols[i] + 1] = frag_hi(x.a[l][i]);
        }
        B[2 * t][g] = frag_lo(x.b[l][0]);
        B[2 * t + 1][g] = frag_hi(x.b[l][0]);
        B[2 * t + 8][g] = frag_lo(x.b[l][1]);
        B[2 * t + 9][g] = frag_hi(x.b[l][1]);
    }
    w.bar.arrive_and_wait();  // every lane has read the exchange before the next call writes it
    const int g = lane / 4, t = lane % 4;
    const int rows[4] = {g, g, g + 8, g + 8}, cols[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
    for (int i = 0; i < 4; ++i) {
        float s = 0.f;
        for (int k = 0; k < 16; ++k) s += A[rows[i]][k] * B[k][cols[i]];
        d[i] += s;
    }
}
