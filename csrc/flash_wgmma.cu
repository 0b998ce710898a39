// Prefill attention of the shared block on Hopper's warpgroup MMA (wgmma, sm_90a), for head_dim 464
// (Zamba-7B); other GPUs and head sizes run flash_attn.cu's mma.sync kernels. It computes what
// those compute (see flash_attn.cu for the arguments and the cache layout):
//   O[t, h] = sum_j softmax_j(scale * Q[t, h] . K[j]) V[j],   key j <= past + t
// with the same online softmax in fp32 (scores in log2 units, P = 2^(S - m) rounded to bf16 as the
// A operand of P V, O / l in fp32 rounded to bf16).
//
// Why: the mma.sync kernel is latency-bound at this head size (8 warps per SM, each waiting on
// its own mma and ldmatrix results; BENCHMARKS.md). wgmma reads Q, K and V straight from shared
// memory and runs a whole 64-row product per instruction asynchronously.
//
// Tiling. A block takes 64 queries of one head (grid (NA, ceil(len / 64)), longest query blocks
// first) and walks the 64-key tiles any of them sees. 256 threads = 2 warpgroups. Warpgroup g:
//   S_g = Q K[g*32 .. g*32+32)^T       one m64n32k16 wgmma per 16 dims of HD (29), A and B from
//                                       shared memory: each group scores all 64 rows on its half
//                                       of the tile's keys (no product is computed twice);
//   O_g += P V[:, g*232 .. g*232+232)  one m64n232k16 wgmma per 16 keys (4), A = P from registers,
//                                       B = V from shared memory (MN-major): each group owns half
//                                       of the output columns (116 fp32 accumulators per thread).
// Warp w of group g holds rows 16(w%4).. of both; warps w and w + 4 (a "pair") exchange their row
// maxima through shared memory and a 64-thread named barrier, and every warp stores its P half as
// mma A fragments (one 16-byte word per lane per 16 keys), so that both groups multiply the full
// 64-key P by their half of V. Rows that see none of a tile's keys get P = 0; every row sees key 0
// in tile 0 (in group 0's half), so the running maxima are finite from then on.
//
// Shared memory: Q, one K tile and one V tile, each 64 rows x HD bf16 in wgmma's no-swizzle
// layout: 16-byte piece c (dims 8c..8c+7) of row r at byte c * 1024 + r * 16, so that every 8x8
// core matrix is 128 contiguous bytes (K-major for Q and K: core matrices 1024 bytes apart along
// the dims, 128 along the rows; V, read transposed, has the same layout as an MN-major operand:
// 128 bytes along the keys, 1024 along the dims). Then the pairs' P fragments and row statistics:
// 187,392 bytes at HD = 464. Loads are 16-byte cp.async; a warp copies 16 rows x 32 bytes per
// instruction (whole 32-byte sectors from global, 128 contiguous bytes per quarter-warp into
// shared memory). Pipeline: the V tile loads while S and the softmax run, the next K tile while
// P V runs; each group waits for its own wgmmas before the block barrier that lets a buffer be
// overwritten. Rows past `len` of the last query block are zero-filled, computed and not written;
// K/V rows past what the block's last query sees are zero-filled and masked, never read.
//
// Launch: grid (NA, ceil(len / 64)), block 256, dynamic shared memory FW_SMEM (the Rust launcher
// mirrors it and runs this kernel only on compute capability 9.0 with HD = 464).
#include "flash_common.cuh"
#include "wgmma.cuh"

#define FW_HD 464
#define FW_ROWS 64                       // queries per block, keys per tile
#define FW_CH (FW_HD / 8)                // 16-byte pieces per row (58)
#define FW_TILE (FW_ROWS * FW_HD * 2)    // bytes of a Q, K or V tile (59,392)
#define FW_NO (FW_HD / 2 / 8 * 4)        // O accumulators per thread (116: 29 n8 tiles)
#define FW_SMEM (3 * FW_TILE + 4 * 4 * 32 * 16 + 2 * 4 * 2 * 16 * 4)

// Copies rows 0..63 (row r at src + r * stride, HD bf16 each) into a tile at dst in the layout
// above; rows >= n_ok are zero-filled instead of read (src row 0 stands in as their address).
__device__ __forceinline__ void fw_load_tile(uint32_t dst, const bf16* __restrict__ src, int stride, int n_ok) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int rl = (lane & 7) + ((lane >> 4) << 3);  // row within the 16-row unit
    const int cl = (lane >> 3) & 1;                  // piece within the 32-byte pair
    for (int u = warp; u < (FW_ROWS / 16) * (FW_CH / 2); u += 8) {
        const int rg = u / (FW_CH / 2), cp = u - rg * (FW_CH / 2);
        const int r = rg * 16 + rl, c = 2 * cp + cl;
        const bool ok = r < n_ok;
        fa_cp_async16(dst + c * 1024 + r * 16, src + (ok ? (size_t)r * stride : 0) + c * 8, ok);
    }
}

extern "C" __global__ void __launch_bounds__(256, 1)
    flash_attn_prefill_wg(const bf16* __restrict__ qkv, int ldqkv, int row0, const bf16* __restrict__ kc,
                          const bf16* __restrict__ vc, bf16* __restrict__ out, int ldo, int len, int past,
                          int slot, int NA, int NKV, int ctx, float scale) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    extern __shared__ __align__(128) unsigned char fw_smem[];
    const uint32_t q_sa = fa_smem_addr(fw_smem), k_sa = q_sa + FW_TILE, v_sa = k_sa + FW_TILE;
    uint4* p_s = reinterpret_cast<uint4*>(fw_smem + 3 * FW_TILE);  // [pair][16-key step][lane]
    float* x_s = reinterpret_cast<float*>(p_s + 4 * 4 * 32);       // [pair][group][16]
    float* l_s = x_s + 4 * 2 * 16;                                  // [pair][group][16]

    const int h = blockIdx.x;
    const int q0 = (gridDim.y - 1 - blockIdx.y) * FW_ROWS;
    const int kvh = h / (NA / NKV);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int grp = warp >> 2, pair = warp & 3;
    const int nk = past + len;
    const int q_rows = min(FW_ROWS, len - q0);
    const int nk_blk = past + q0 + q_rows;  // keys the block's last valid query sees
    const int n_tiles = (nk_blk + FW_ROWS - 1) / FW_ROWS;

    const size_t head_off = ((size_t)slot * NKV + kvh) * ctx * FW_HD;
    const bf16* kbase = kc + head_off;
    const bf16* vbase = vc + head_off;
    fw_load_tile(q_sa, qkv + (size_t)(row0 + q0) * ldqkv + (size_t)h * FW_HD, ldqkv, q_rows);
    fw_load_tile(k_sa, kbase, FW_HD, nk_blk);
    fa_cp_async_commit();

    // This thread: rows wq0 + gq and wq0 + gq + 8 of the entry, columns 2 tq, 2 tq + 1 of each n8 tile.
    const int wq0 = q0 + pair * 16;
    const int gq = lane >> 2, tq = lane & 3;
    const int lim0 = min(past + wq0 + gq, nk - 1);  // last visible key (rows past len: the last key)
    const int lim1 = min(past + wq0 + gq + 8, nk - 1);
    const float sl2 = scale * 1.4426950408889634f;
    const int kh = grp * 32;  // the group's first key of each tile in S

    uint4* p_pair = p_s + pair * 4 * 32 + lane;
    float* x_mine = x_s + (pair * 2 + grp) * 16;
    const float* x_other = x_s + (pair * 2 + (grp ^ 1)) * 16;

    float o[FW_NO];
#pragma unroll
    for (int i = 0; i < FW_NO; ++i) o[i] = 0.f;
    float m0 = -INFINITY, m1 = -INFINITY;  // running row maxima (the same in both warps of a pair)
    float l0 = 0.f, l1 = 0.f;              // this thread's partial row sums, over the group's keys

    for (int j = 0; j < n_tiles; ++j) {
        const int k0 = j * FW_ROWS;
        // K tile j (and Q) landed and are visible to wgmma; every group is done with V tile j - 1.
        fa_cp_async_wait_all();
        fence_proxy_async();
        __syncthreads();
        fw_load_tile(v_sa, vbase + (size_t)k0 * FW_HD, FW_HD, nk_blk - k0);
        fa_cp_async_commit();

        float s[16];
#pragma unroll
        for (int i = 0; i < 16; ++i) s[i] = 0.f;
        if (k0 + kh < nk_blk) {  // block-uniform; otherwise every key of the group is masked
            wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < FW_HD / 16; ++kk)
                wgmma_m64n32k16_ss(s, wgmma_desc(q_sa + kk * 2048, 1024, 128),
                                   wgmma_desc(k_sa + kk * 2048 + kh * 16, 1024, 128), kk);
            wgmma_commit();
            wgmma_wait<0>();
            wgmma_fence_regs(s);
        }
        float c0, c1;  // rescaling of O: 0 on the first tile
        fa_softmax_tile<4>(reinterpret_cast<float(&)[4][4]>(s), k0 + kh, gq, tq, lim0, lim1, sl2, x_mine, x_other, pair, m0, m1, l0, l1, c0, c1);
#pragma unroll
        for (int nt = 0; nt < FW_NO / 4; ++nt) {
            o[4 * nt] *= c0;
            o[4 * nt + 1] *= c0;
            o[4 * nt + 2] *= c1;
            o[4 * nt + 3] *= c1;
        }
        // S's n8 tiles 2kk and 2kk + 1 are, register for register, the A fragment of 16-key step
        // 2 grp + kk of the tile (both warps of a pair hold the same positions in the same lanes).
#pragma unroll
        for (int kk = 0; kk < 2; ++kk)
            p_pair[(2 * grp + kk) * 32] =
                make_uint4(fa_pack(s[8 * kk], s[8 * kk + 1]), fa_pack(s[8 * kk + 2], s[8 * kk + 3]),
                           fa_pack(s[8 * kk + 4], s[8 * kk + 5]), fa_pack(s[8 * kk + 6], s[8 * kk + 7]));

        // V tile j landed and is visible to wgmma; both groups are done with K tile j; P is visible.
        fa_cp_async_wait_all();
        fence_proxy_async();
        __syncthreads();
        if (j + 1 < n_tiles) fw_load_tile(k_sa, kbase + (size_t)(k0 + FW_ROWS) * FW_HD, FW_HD, nk_blk - k0 - FW_ROWS);
        fa_cp_async_commit();

        // O += P V over the tile's 4 16-key steps (keys no row sees have P = 0 and zero-filled V;
        // skipping them would make the count of wgmmas data-dependent, and ptxas then fences each).
        uint32_t pa[4][4];
#pragma unroll
        for (int ks = 0; ks < 4; ++ks) {
            const uint4 pv = p_pair[ks * 32];
            pa[ks][0] = pv.x;
            pa[ks][1] = pv.y;
            pa[ks][2] = pv.z;
            pa[ks][3] = pv.w;
        }
        wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < 4; ++ks)
            wgmma_m64n232k16_rs_tb(o, pa[ks], wgmma_desc(v_sa + grp * (FW_CH / 2) * 1024 + ks * 256, 128, 1024), 1);
        wgmma_commit();
        wgmma_wait<0>();
        wgmma_fence_regs(o);
    }

    // Row sums over both groups of the pair (each group summed its own keys).
    fa_pair_share_row_sums(l0, l1, l_s + (pair * 2 + grp) * 16, gq, tq, pair);
    if (wq0 >= len) return;
    const float* l_other = l_s + (pair * 2 + (grp ^ 1)) * 16;
    const float i0 = 1.f / (l0 + l_other[gq]), i1 = 1.f / (l1 + l_other[gq + 8]);
    const int t0 = wq0 + gq, t1 = t0 + 8;
    bf16* o0 = out + (size_t)(row0 + t0) * ldo + (size_t)h * FW_HD + grp * (FW_HD / 2) + 2 * tq;
    bf16* o1 = o0 + (size_t)8 * ldo;
#pragma unroll
    for (int nt = 0; nt < FW_NO / 4; ++nt) {
        if (t0 < len)
            *reinterpret_cast<__nv_bfloat162*>(o0 + nt * 8) = __floats2bfloat162_rn(o[4 * nt] * i0, o[4 * nt + 1] * i0);
        if (t1 < len)
            *reinterpret_cast<__nv_bfloat162*>(o1 + nt * 8) =
                __floats2bfloat162_rn(o[4 * nt + 2] * i1, o[4 * nt + 3] * i1);
    }
#elif defined(__CUDA_ARCH__)
    __trap();  // built for a GPU without sm_90a's wgmma: the launcher never runs it there
#endif
}
