// Helpers shared by the two flash prefill kernels (flash_attn.cu with mma.sync, flash_wgmma.cu
// with wgmma): shared-window addresses, 16-byte cp.async with zero fill, the warp-pair barrier,
// bf16 packing, the online-softmax step of a key tile, and the final row sums.
#pragma once
#include "common.cuh"

__device__ __forceinline__ uint32_t fa_smem_addr(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy; zero-fills the destination (and reads nothing) when !valid.
__device__ __forceinline__ void fa_cp_async16(uint32_t dst, const void* src, bool valid) {
    const int n = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n));
}
__device__ __forceinline__ void fa_cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void fa_cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

// Barrier of the two warps of pair p (named barrier 1 + p; barrier 0 is __syncthreads).
__device__ __forceinline__ void fa_pair_sync(int p) {
    asm volatile("bar.sync %0, 64;\n" ::"r"(1 + p) : "memory");
}

// Two fp32 values as one bf16x2 register, `lo` in the low half (the lower column index).
__device__ __forceinline__ uint32_t fa_pack(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
}

// The online-softmax step of one key tile, for the S accumulators a warp holds in mma's m16n8
// layout (n8 tile nt: s[nt][c] is row gq and s[nt][2 + c] row gq + 8, both at key
// key0 + 8 nt + 2 tq + c, c = 0, 1), where the two warps of pair `pair` hold the same rows and
// each half of the tile's keys:
//   s = sl2 * S (scores in log2 units), or -inf past the row's last visible key (lim0, lim1);
//   m = max(m, the row's max over both warps' keys), exchanged through x_mine / x_other (16
//       floats per warp) and the pair's barrier;
//   s = 2^(s - m);  l = l * c + the row sum of this warp's s, with c = 2^(m_before - m), which
//       is returned in c0, c1 for the caller to rescale its O accumulators.
// Tile 0 shows key 0 to every row, so the maxima are finite from then on (c = 0 on the first
// tile) and no 2^(-inf - -inf) arises.
template <int NS>
__device__ __forceinline__ void fa_softmax_tile(float (&s)[NS][4], int key0, int gq, int tq, int lim0, int lim1,
                                                float sl2, float* x_mine, const float* x_other, int pair, float& m0,
                                                float& m1, float& l0, float& l1, float& c0, float& c1) {
    // Scale, mask, row max over the 4 lanes that share a row, then over the pair.
    float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < NS; ++nt)
#pragma unroll
        for (int c = 0; c < 2; ++c) {
            const int key = key0 + nt * 8 + 2 * tq + c;
            s[nt][c] = key <= lim0 ? s[nt][c] * sl2 : -INFINITY;
            s[nt][2 + c] = key <= lim1 ? s[nt][2 + c] * sl2 : -INFINITY;
            mx0 = fmaxf(mx0, s[nt][c]);
            mx1 = fmaxf(mx1, s[nt][2 + c]);
        }
#pragma unroll
    for (int off = 1; off < 4; off <<= 1) {
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, off));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, off));
    }
    if (tq == 0) {
        x_mine[gq] = mx0;
        x_mine[gq + 8] = mx1;
    }
    fa_pair_sync(pair);
    mx0 = fmaxf(mx0, x_other[gq]);
    mx1 = fmaxf(mx1, x_other[gq + 8]);
    const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
    c0 = exp2f(m0 - mn0);
    c1 = exp2f(m1 - mn1);
    m0 = mn0;
    m1 = mn1;
    float rs0 = 0.f, rs1 = 0.f;
#pragma unroll
    for (int nt = 0; nt < NS; ++nt)
#pragma unroll
        for (int c = 0; c < 2; ++c) {
            s[nt][c] = exp2f(s[nt][c] - mn0);
            s[nt][2 + c] = exp2f(s[nt][2 + c] - mn1);
            rs0 += s[nt][c];
            rs1 += s[nt][2 + c];
        }
    l0 = l0 * c0 + rs0;
    l1 = l1 * c1 + rs1;
}

// The final row sums of a thread's two rows (gq and gq + 8), where each warp of pair `pair`
// summed its own half of the keys into l0 and l1: sums them over the 4 lanes that share a row,
// stores them for the other warp at l_mine (16 floats per warp) and waits at the pair's barrier.
// Both warps of the pair call it, before either may exit; the caller then adds the other warp's
// sums (its l_mine) to its own.
__device__ __forceinline__ void fa_pair_share_row_sums(float& l0, float& l1, float* l_mine, int gq, int tq, int pair) {
#pragma unroll
    for (int off = 1; off < 4; off <<= 1) {
        l0 += __shfl_xor_sync(0xffffffffu, l0, off);
        l1 += __shfl_xor_sync(0xffffffffu, l1, off);
    }
    if (tq == 0) {
        l_mine[gq] = l0;
        l_mine[gq + 8] = l1;
    }
    fa_pair_sync(pair);
}
