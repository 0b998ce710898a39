// Prefill attention of the shared block as one online-softmax ("flash") kernel on the tensor cores.
//
// For one sequence entry with `len` new queries after `past` cached positions, query t (absolute
// position past + t) of head h sees keys 0..=past+t of kv head h / (NA / NKV):
//   O[t, h] = sum_j softmax_j(scale * Q[t, h] . K[j]) V[j]
// K and V come from the cache, bf16 [slots, NKV, ctx, HD] (kv_append has already written this
// step's rows); Q from qkv rows row0 + t (row stride ldqkv, head h at columns h*HD); O goes to
// `out` rows row0 + t (row stride ldo) at columns h*HD, rounded to bf16.
//
// Tiling. A block takes FA_BQ = 64 queries of one head and walks the key tiles of BK = 64 keys
// (32 in flash_attn_prefill_k32, see Launch) that any of its queries can see (tiles past the
// causal limit are never loaded). Shared memory holds the Q block, one K tile and one V tile, each
// row padded to HD + 8 bf16 so that the 8 row addresses of an ldmatrix fall in distinct banks,
// and the pairs' P and row statistics. 8 warps: warps 2i and 2i+1 (a pair) own queries
// 16i..16i+15 of the block. Each warp of a pair computes S = Q K^T for its half of the tile's keys
// (16 x BK/2, mma over HD/16 k-steps: no Q K^T is computed twice) and keeps the output
// accumulator for its half of the head dimension (HD/16 n8 tiles: 29 for HD = 464, so 116 fp32
// registers instead of 232 for the whole row). The pair exchanges its row maxima, then P, through
// shared memory, so that each warp multiplies the full P rows (16 x BK) by its half of V.
//
// Per tile, each warp: S in fp32 registers (mma.m16n8k16, bf16 inputs), scaled by scale*log2(e)
// and masked (key > past + t, and keys past the end, get -inf); row max over its keys, then over
// the pair (each warp stores its 16 maxima, a named barrier of the pair's 64 threads, each reads
// the other's); online softmax per row with a running max m (the same in both warps) and a
// running sum l (fp32, each warp over its own keys): m' = max(m, rowmax S), O *= 2^(m - m'),
// l = l 2^(m - m') + sum 2^(S - m'); P = 2^(S - m') rounded to bf16 is, register for register,
// the A operand of an mma (the FlashAttention-2 layout identity); both warps hold the same (row,
// column) positions in the same lanes, so each stores its P fragments as one 16-byte word per lane
// per 16-key step and reads the pair's full P back the same way, after the block barrier that
// also publishes the V tile. O += P V over the warp's HD/2 columns (V fragments through
// ldmatrix.trans), skipping 16-key steps that no row of the pair sees. At the end l is summed
// over the pair, and O / l in fp32 is rounded to bf16. Every row sees key 0 in the first tile (in
// warp 0's half), so m is finite from then on and no 2^(-inf - -inf) arises.
//
// Pipeline (cp.async, one K and one V buffer): the V tile loads while S and the softmax run, and
// the next K tile loads while P V runs; two block barriers and one pair barrier per tile. Each
// thread walks its 16-byte pieces of a tile without a division per piece (FaCopyPlan). A second
// K and V buffer of 64 keys would not fit (302 KB at HD = 464), and Q stays in shared memory,
// re-read every tile: its fragments would take another 116 registers per thread next to O's.
//
// Rows past `len` in the last query block are loaded as zeros, computed (they see every valid
// key) and not written. K/V rows at positions >= past + min(q0 + 64, len) are never read from
// global memory: they are zero-filled in shared memory (the cache may hold anything there) and
// masked. Needs HD % 16 == 0 and HD <= FA_MAX_HD (src/gpu/engine/mod.rs checks).
//
// Launch: grid (NA, ceil(len / 64)), block 256, dynamic shared memory fa_smem_bytes(BK, HD) =
// (64 + 2 BK) (HD + 8) 2 + 128 BK + 1024 bytes: for HD = 464, 186 KB with BK = 64
// (flash_attn_prefill) and 123 KB with BK = 32 (flash_attn_prefill_k32). The launcher raises the
// 48 KB default at load time, capped at what the GPU allows, and runs the 64-key kernel where it
// fits (the H100/H200 allow 227 KB; the A100, 163 KB, runs the 32-key one). Block y takes query
// block ceil(len/64) - 1 - y, so the longest blocks start first. ptxas (CUDA 13.0), no spills:
// BK = 64, 212 registers on sm_80 and 215 on sm_90; BK = 32, 194 and 200 (16 barriers reserved:
// the pair barrier's id is a register); one block (8 warps) per SM.
#include "flash_common.cuh"
#include "mma.cuh"

#define FA_BQ 64
#define FA_WARPS 8
#define FA_PAIRS (FA_WARPS / 2)
#define FA_PAD 8
#define FA_MAX_HD 512
#define FA_MAX_NT (FA_MAX_HD / 16)  // n8 tiles of O per warp (half the head dimension)

// How this thread walks the 16-byte chunks of a tile of rows of HD bf16: chunks t, t + 256, ...
// (row c / cpr, chunk column c % cpr), stepped without a division per chunk.
struct FaCopyPlan {
    int r0, c0, dr, dc, cpr;
};

__device__ __forceinline__ FaCopyPlan fa_copy_plan(int HD) {
    FaCopyPlan p;
    p.cpr = HD / 8;
    p.r0 = threadIdx.x / p.cpr;
    p.c0 = threadIdx.x - p.r0 * p.cpr;
    p.dr = (FA_WARPS * 32) / p.cpr;
    p.dc = (FA_WARPS * 32) - p.dr * p.cpr;
    return p;
}

// Copies `rows` rows (row i at src + i * stride, HD bf16 each) to shared memory at dst (rows of
// LD bf16); rows >= n_ok are zero-filled instead of read (n_ok >= 1: row 0 stands in as the
// address of a copy that reads nothing).
__device__ __forceinline__ void fa_load_rows(uint32_t dst, const bf16* __restrict__ src, int stride, int rows,
                                             int n_ok, int LD, const FaCopyPlan& p) {
    int r = p.r0, c = p.c0;
    while (r < rows) {
        const bool ok = r < n_ok;
        fa_cp_async16(dst + (r * LD + c * 8) * 2, src + (ok ? r * stride : 0) + c * 8, ok);
        r += p.dr;
        c += p.dc;
        if (c >= p.cpr) {
            c -= p.cpr;
            ++r;
        }
    }
}

// Shared memory of one block, in bytes (the Rust launcher's flash_smem_bytes mirrors this).
__host__ __device__ constexpr int fa_smem_bytes(int BK, int HD) {
    return (FA_BQ + 2 * BK) * (HD + FA_PAD) * 2      // Q block, K tile, V tile
           + FA_PAIRS * (BK / 16) * 32 * 16          // P of each pair, as A fragments
           + 2 * FA_PAIRS * 2 * 16 * 4;              // row maxima, then row sums, of each warp
}

template <int BK>
__device__ __forceinline__ void fa_prefill(const bf16* __restrict__ qkv, int ldqkv, int row0,
                                           const bf16* __restrict__ kc, const bf16* __restrict__ vc,
                                           bf16* __restrict__ out, int ldo, int len, int past, int slot, int NA,
                                           int NKV, int HD, int ctx, float scale) {
    constexpr int KS = BK / 16;       // 16-key steps of P V per tile
    constexpr int NS = BK / 16;       // n8 tiles of S per warp (half the tile's keys)
    constexpr int KH = BK / 2;        // keys per warp in Q K^T
    extern __shared__ __align__(16) unsigned char fa_smem[];
    const int LD = HD + FA_PAD;
    bf16* q_s = reinterpret_cast<bf16*>(fa_smem);
    bf16* k_s = q_s + FA_BQ * LD;
    bf16* v_s = k_s + BK * LD;
    uint4* p_s = reinterpret_cast<uint4*>(v_s + BK * LD);          // [pair][KS][lane]
    float* x_s = reinterpret_cast<float*>(p_s + FA_PAIRS * KS * 32);  // [pair][half][16]
    float* l_s = x_s + FA_PAIRS * 2 * 16;                              // [pair][half][16]

    const int h = blockIdx.x;
    const int q0 = (gridDim.y - 1 - blockIdx.y) * FA_BQ;  // first query (index into the entry)
    const int kvh = h / (NA / NKV);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int pair = warp >> 1, half = warp & 1;
    const int nk = past + len;                 // keys of the sequence after this step
    const int q_rows = min(FA_BQ, len - q0);   // valid queries of the block
    const int nk_blk = past + q0 + q_rows;     // keys the block's last valid query sees
    const int n_tiles = (nk_blk + BK - 1) / BK;

    const size_t head_off = ((size_t)slot * NKV + kvh) * ctx * HD;
    const bf16* kbase = kc + head_off;
    const bf16* vbase = vc + head_off;
    const FaCopyPlan plan = fa_copy_plan(HD);
    const uint32_t q_sa = fa_smem_addr(q_s), k_sa = fa_smem_addr(k_s), v_sa = fa_smem_addr(v_s);

    // Q block (rows >= q_rows zero-filled) and the first K tile.
    fa_load_rows(q_sa, qkv + (size_t)(row0 + q0) * ldqkv + (size_t)h * HD, ldqkv, FA_BQ, q_rows, LD, plan);
    fa_load_rows(k_sa, kbase, HD, BK, nk_blk, LD, plan);
    fa_cp_async_commit();

    // This pair: queries wq0..wq0+15 of the entry; this thread: rows gq and gq + 8 of those,
    // columns 2*tq, 2*tq + 1 of each n8 tile.
    const int wq0 = q0 + pair * 16;
    const bool pair_live = wq0 < len;
    const int gq = lane >> 2, tq = lane & 3;
    // Last visible key of the thread's two rows (rows past len clamp to the last key) and of the pair.
    const int lim0 = min(past + wq0 + gq, nk - 1);
    const int lim1 = min(past + wq0 + gq + 8, nk - 1);
    const int lim_pair = min(past + wq0 + 15, nk - 1);
    const float sl2 = scale * 1.4426950408889634f;  // scores in log2 units
    const int NT = HD / 16;                          // O's n8 tiles per warp
    const int dbase = half * (HD / 2);               // the warp's first output column
    const int kh = half * KH;                        // the warp's first key of each tile (Q K^T)

    // ldmatrix row addresses of this lane (bytes, shared window).
    // Q (A operand, 16x16 at k-step kk): lanes 0-15 rows 0-15 at column 0, lanes 16-31 at column 8.
    const uint32_t q_addr = q_sa + ((pair * 16 + (lane & 15)) * LD + (lane >> 4) * 8) * 2;
    // K (B operand of S, two n8 tiles): matrix i = lane/8 holds keys kh + (i/2)*8.. at dims (i%2)*8..
    const uint32_t k_addr = k_sa + ((kh + (lane & 7) + (lane >> 4) * 8) * LD + ((lane >> 3) & 1) * 8) * 2;
    // V (B operand of P V, transposed, two n8 tiles): matrix i holds keys (i%2)*8.. at dims (i/2)*8..
    const uint32_t v_addr = v_sa + (((lane & 7) + ((lane >> 3) & 1) * 8) * LD + dbase + (lane >> 4) * 8) * 2;
    // This pair's P fragments (one uint4 per lane per 16-key step) and row statistics.
    uint4* p_pair = p_s + pair * KS * 32 + lane;
    float* x_mine = x_s + (pair * 2 + half) * 16;
    const float* x_other = x_s + (pair * 2 + (half ^ 1)) * 16;

    float o[FA_MAX_NT][4];
#pragma unroll
    for (int nt = 0; nt < FA_MAX_NT; ++nt) o[nt][0] = o[nt][1] = o[nt][2] = o[nt][3] = 0.f;
    float m0 = -INFINITY, m1 = -INFINITY;  // running row maxima (the same in both warps of a pair)
    float l0 = 0.f, l1 = 0.f;              // this thread's partial row sums, over the warp's keys

    for (int j = 0; j < n_tiles; ++j) {
        const int k0 = j * BK;
        // K tile j (and Q) landed; every warp is done with V tile j - 1 and with the pairs' P.
        fa_cp_async_wait_all();
        __syncthreads();
        fa_load_rows(v_sa, vbase + (size_t)k0 * HD, HD, BK, nk_blk - k0, LD, plan);
        fa_cp_async_commit();

        const bool active = pair_live && k0 <= lim_pair;  // pair-uniform
        if (active) {
            // S for the pair's 16 queries and this warp's KH keys of the tile, over all of HD.
            float s[NS][4];
#pragma unroll
            for (int nt = 0; nt < NS; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
            if (k0 + kh <= lim_pair) {  // warp-uniform; otherwise every key is masked below
#pragma unroll 2
                for (int kk = 0; kk < HD / 16; ++kk) {
                    uint32_t a[4];
                    ldsm_x4(a, q_addr + kk * 32);
#pragma unroll
                    for (int np = 0; np < NS / 2; ++np) {
                        uint32_t b[4];
                        ldsm_x4(b, k_addr + (np * 16 * LD + kk * 16) * 2);
                        mma_bf16_16816(s[2 * np], a, b[0], b[1]);
                        mma_bf16_16816(s[2 * np + 1], a, b[2], b[3]);
                    }
                }
            }
            float c0, c1;  // rescaling of O: 0 on the first tile
            fa_softmax_tile<NS>(s, k0 + kh, gq, tq, lim0, lim1, sl2, x_mine, x_other, pair, m0, m1, l0, l1, c0, c1);
#pragma unroll
            for (int nt = 0; nt < FA_MAX_NT; ++nt)
                if (nt < NT) {
                    o[nt][0] *= c0;
                    o[nt][1] *= c0;
                    o[nt][2] *= c1;
                    o[nt][3] *= c1;
                }
            // The S accumulators of n8 tiles 2kk and 2kk+1 are, register for register, the A
            // fragment of 16-key step half * NS/2 + kk of the tile; both warps of the pair hold the
            // same (row, column) positions in the same lanes, so the partner reads them as they are.
#pragma unroll
            for (int kk = 0; kk < NS / 2; ++kk)
                p_pair[(half * (NS / 2) + kk) * 32] =
                    make_uint4(fa_pack(s[2 * kk][0], s[2 * kk][1]), fa_pack(s[2 * kk][2], s[2 * kk][3]),
                               fa_pack(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                               fa_pack(s[2 * kk + 1][2], s[2 * kk + 1][3]));
        }

        // V tile j landed; every warp is done with K tile j; the pairs' P are visible.
        fa_cp_async_wait_all();
        __syncthreads();
        if (j + 1 < n_tiles) fa_load_rows(k_sa, kbase + (size_t)(k0 + BK) * HD, HD, BK, nk_blk - k0 - BK, LD, plan);
        fa_cp_async_commit();

        if (active) {
            // O (this warp's HD/2 columns) += P V, over the 16-key steps that any row of the pair
            // sees (the others have P = 0).
#pragma unroll
            for (int ks = 0; ks < KS; ++ks)
                if (k0 + ks * 16 <= lim_pair) {
                    const uint4 pv = p_pair[ks * 32];
                    const uint32_t pa[4] = {pv.x, pv.y, pv.z, pv.w};
#pragma unroll
                    for (int np = 0; np < FA_MAX_NT / 2; ++np) {
                        const uint32_t addr = v_addr + (ks * 16 * LD + np * 16) * 2;
                        if (2 * np + 1 < NT) {
                            uint32_t b[4];
                            ldsm_x4_trans(b, addr);
                            mma_bf16_16816(o[2 * np], pa, b[0], b[1]);
                            mma_bf16_16816(o[2 * np + 1], pa, b[2], b[3]);
                        } else if (2 * np < NT) {
                            uint32_t b[2];
                            ldsm_x2_trans(b, addr);
                            mma_bf16_16816(o[2 * np], pa, b[0], b[1]);
                        }
                    }
                }
        }
    }

    // Row sums over both warps of the pair (each warp summed its own keys).
    fa_pair_share_row_sums(l0, l1, l_s + (pair * 2 + half) * 16, gq, tq, pair);
    if (!pair_live) return;
    const float* l_other = l_s + (pair * 2 + (half ^ 1)) * 16;
    const float i0 = 1.f / (l0 + l_other[gq]), i1 = 1.f / (l1 + l_other[gq + 8]);
    const int t0 = wq0 + gq, t1 = t0 + 8;
    bf16* o0 = out + (size_t)(row0 + t0) * ldo + (size_t)h * HD + dbase + 2 * tq;
    bf16* o1 = o0 + (size_t)8 * ldo;
#pragma unroll
    for (int nt = 0; nt < FA_MAX_NT; ++nt)
        if (nt < NT) {
            if (t0 < len)
                *reinterpret_cast<__nv_bfloat162*>(o0 + nt * 8) = __floats2bfloat162_rn(o[nt][0] * i0, o[nt][1] * i0);
            if (t1 < len)
                *reinterpret_cast<__nv_bfloat162*>(o1 + nt * 8) = __floats2bfloat162_rn(o[nt][2] * i1, o[nt][3] * i1);
        }
}

// 64-key tiles (186 KB of shared memory at HD = 464: GPUs that allow a block about 190 KB or more,
// such as the H100/H200), and 32-key tiles for the others (123 KB: the A100). The launcher picks.
extern "C" __global__ void __launch_bounds__(FA_WARPS * 32, 1)
    flash_attn_prefill(const bf16* __restrict__ qkv, int ldqkv, int row0, const bf16* __restrict__ kc,
                       const bf16* __restrict__ vc, bf16* __restrict__ out, int ldo, int len, int past,
                       int slot, int NA, int NKV, int HD, int ctx, float scale) {
    fa_prefill<64>(qkv, ldqkv, row0, kc, vc, out, ldo, len, past, slot, NA, NKV, HD, ctx, scale);
}

extern "C" __global__ void __launch_bounds__(FA_WARPS * 32, 1)
    flash_attn_prefill_k32(const bf16* __restrict__ qkv, int ldqkv, int row0, const bf16* __restrict__ kc,
                           const bf16* __restrict__ vc, bf16* __restrict__ out, int ldo, int len, int past,
                           int slot, int NA, int NKV, int HD, int ctx, float scale) {
    fa_prefill<32>(qkv, ldqkv, row0, kc, vc, out, ldo, len, past, slot, NA, NKV, HD, ctx, scale);
}
