// Prefill attention of the shared block as one online-softmax ("flash") kernel on the tensor cores.
//
// For one sequence entry with `len` new queries after `past` cached positions, query t (absolute
// position past + t) of head h sees keys 0..=past+t of kv head h / (NA / NKV):
//   O[t, h] = sum_j softmax_j(scale * Q[t, h] . K[j]) V[j]
// K and V come from the cache, bf16 [slots, NKV, ctx, HD] (kv_append has already written this
// step's rows); Q from qkv rows row0 + t (row stride ldqkv, head h at columns h*HD); O goes to
// `out` rows row0 + t (row stride ldo) at columns h*HD, rounded to bf16.
//
// Tiling. A block takes FA_BQ = 64 queries of one head and walks the key tiles of FA_BK = 32
// keys that any of its queries can see (tiles past the causal limit are never loaded). Shared
// memory holds the Q block, one K tile and one V tile, each row padded to HD + 8 bf16 so that the
// 8 row addresses of an ldmatrix fall in distinct banks. 8 warps: warps 2i and 2i+1 own queries
// 16i..16i+15 of the block; both compute the same S = Q K^T for the tile (16 x 32, mma over HD/16
// k-steps), and each keeps the output accumulator for one half of the head dimension (HD/16 n8
// tiles: 29 for HD = 464, so 116 fp32 registers instead of 232 for the whole row). The duplicated
// Q K^T costs FLOPs, not memory traffic: both warps read the same K tile from shared memory.
//
// Per tile, each warp: S in fp32 registers (mma.m16n8k16, bf16 inputs), scaled by scale*log2(e)
// and masked (key > past + t, and keys past the end, get -inf); online softmax per row with a
// running max m and running sum l (fp32): m' = max(m, rowmax S), O *= 2^(m - m'), l = l 2^(m - m')
// + sum 2^(S - m'); P = 2^(S - m') rounded to bf16 is, register for register, the A operand of the
// next mma (the FlashAttention-2 layout identity), and O += P V over the warp's HD/2 columns (V
// fragments through ldmatrix.trans). At the end O / l in fp32, rounded to bf16. Every row sees
// key 0 in the first tile, so m is finite from then on and no 2^(-inf - -inf) arises.
//
// Pipeline (cp.async, one K and one V buffer): the V tile loads while S and the softmax run, and
// the next K tile loads while P V runs; two barriers per tile.
//
// Rows past `len` in the last query block are loaded as zeros, computed (they see every valid
// key) and not written. K/V rows at positions >= past + min(q0 + 64, len) are never read from
// global memory: they are zero-filled in shared memory (the cache may hold anything there) and
// masked. Needs HD % 16 == 0 and HD <= FA_MAX_HD (src/gpu/engine.rs checks).
//
// Launch: grid (NA, ceil(len / 64)), block 256, dynamic shared memory (64 + 2 * 32) * (HD + 8) * 2
// bytes (118 KB for HD = 464; the launcher raises the 48 KB default at load time). Block y takes
// query block ceil(len/64) - 1 - y, so the longest blocks start first. ptxas (CUDA 13.0): 201
// registers on sm_80, 203 on sm_90, no spills; one block (8 warps) per SM.
#include "common.cuh"

#define FA_BQ 64
#define FA_BK 32
#define FA_WARPS 8
#define FA_PAD 8
#define FA_MAX_HD 512
#define FA_MAX_NT (FA_MAX_HD / 16)  // n8 tiles of O per warp (half the head dimension)

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

__device__ __forceinline__ void fa_ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
__device__ __forceinline__ void fa_ldsm_x4_trans(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
__device__ __forceinline__ void fa_ldsm_x2_trans(uint32_t (&r)[2], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(addr));
}

// D += A B for one m16n8k16 tile: bf16 inputs, fp32 accumulators.
__device__ __forceinline__ void fa_mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two fp32 values as one bf16x2 register, `lo` in the low half (the lower column index).
__device__ __forceinline__ uint32_t fa_pack(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
}

// Copies FA_BK rows of a K or V tile (positions k0.., row length HD) into shared memory;
// positions >= n_valid are zero-filled instead of read.
__device__ __forceinline__ void fa_load_kv(bf16* dst, const bf16* __restrict__ base, int k0, int n_valid,
                                           int HD, int LD) {
    const int cpr = HD / 8;
    for (int c = threadIdx.x; c < FA_BK * cpr; c += blockDim.x) {
        const int r = c / cpr, col = (c - r * cpr) * 8;
        const bool ok = k0 + r < n_valid;
        fa_cp_async16(fa_smem_addr(dst + r * LD + col), base + (size_t)(ok ? k0 + r : k0) * HD + col, ok);
    }
}

extern "C" __global__ void __launch_bounds__(FA_WARPS * 32, 1)
    flash_attn_prefill(const bf16* __restrict__ qkv, int ldqkv, int row0, const bf16* __restrict__ kc,
                       const bf16* __restrict__ vc, bf16* __restrict__ out, int ldo, int len, int past,
                       int slot, int NA, int NKV, int HD, int ctx, float scale) {
    extern __shared__ __align__(16) unsigned char fa_smem[];
    const int LD = HD + FA_PAD;
    bf16* q_s = reinterpret_cast<bf16*>(fa_smem);
    bf16* k_s = q_s + FA_BQ * LD;
    bf16* v_s = k_s + FA_BK * LD;

    const int h = blockIdx.x;
    const int q0 = (gridDim.y - 1 - blockIdx.y) * FA_BQ;  // first query (index into the entry)
    const int kvh = h / (NA / NKV);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int qg = warp >> 1, half = warp & 1;
    const int nk = past + len;                 // keys of the sequence after this step
    const int q_rows = min(FA_BQ, len - q0);   // valid queries of the block
    const int nk_blk = past + q0 + q_rows;     // keys the block's last valid query sees
    const int n_tiles = (nk_blk + FA_BK - 1) / FA_BK;

    const size_t head_off = ((size_t)slot * NKV + kvh) * ctx * HD;
    const bf16* kbase = kc + head_off;
    const bf16* vbase = vc + head_off;

    // Q block (rows >= q_rows zero-filled) and the first K tile.
    {
        const bf16* qbase = qkv + (size_t)(row0 + q0) * ldqkv + (size_t)h * HD;
        const int cpr = HD / 8;
        for (int c = threadIdx.x; c < FA_BQ * cpr; c += blockDim.x) {
            const int r = c / cpr, col = (c - r * cpr) * 8;
            const bool ok = r < q_rows;
            fa_cp_async16(fa_smem_addr(q_s + r * LD + col), qbase + (size_t)(ok ? r : 0) * ldqkv + col, ok);
        }
    }
    fa_load_kv(k_s, kbase, 0, nk_blk, HD, LD);
    fa_cp_async_commit();

    // This warp: queries wq0..wq0+15 of the entry; this thread: rows gq and gq + 8 of those,
    // columns 2*tq, 2*tq + 1 of each n8 tile.
    const int wq0 = q0 + qg * 16;
    const bool warp_live = wq0 < len;
    const int gq = lane >> 2, tq = lane & 3;
    // Last visible key of the thread's two rows (rows past len clamp to the last key) and of the warp.
    const int lim0 = min(past + wq0 + gq, nk - 1);
    const int lim1 = min(past + wq0 + gq + 8, nk - 1);
    const int lim_warp = min(past + wq0 + 15, nk - 1);
    const float sl2 = scale * 1.4426950408889634f;  // scores in log2 units
    const int NT = HD / 16;                          // O's n8 tiles per warp
    const int dbase = half * (HD / 2);               // the warp's first output column

    // ldmatrix row addresses of this lane (bytes, shared window).
    // Q (A operand, 16x16 at k-step kk): lanes 0-15 rows 0-15 at column 0, lanes 16-31 at column 8.
    const uint32_t q_addr = fa_smem_addr(q_s + (qg * 16 + (lane & 15)) * LD + (lane >> 4) * 8);
    // K (B operand of S, two n8 tiles): matrix i = lane/8 holds keys (i/2)*8.. at dims (i%2)*8..
    const uint32_t k_addr = fa_smem_addr(k_s + ((lane & 7) + (lane >> 4) * 8) * LD + ((lane >> 3) & 1) * 8);
    // V (B operand of P V, transposed, two n8 tiles): matrix i holds keys (i%2)*8.. at dims (i/2)*8..
    const uint32_t v_addr =
        fa_smem_addr(v_s + ((lane & 7) + ((lane >> 3) & 1) * 8) * LD + dbase + (lane >> 4) * 8);

    float o[FA_MAX_NT][4];
#pragma unroll
    for (int nt = 0; nt < FA_MAX_NT; ++nt) o[nt][0] = o[nt][1] = o[nt][2] = o[nt][3] = 0.f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;  // l: this thread's partial sums

    for (int j = 0; j < n_tiles; ++j) {
        const int k0 = j * FA_BK;
        // K tile j (and Q) landed; every warp is done with V tile j - 1.
        fa_cp_async_wait_all();
        __syncthreads();
        fa_load_kv(v_s, vbase, k0, nk_blk, HD, LD);
        fa_cp_async_commit();

        const bool active = warp_live && k0 <= lim_warp;  // warp-uniform
        uint32_t pa[2][4];
        if (active) {
            float s[4][4];
#pragma unroll
            for (int nt = 0; nt < 4; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll 2
            for (int kk = 0; kk < HD / 16; ++kk) {
                uint32_t a[4];
                fa_ldsm_x4(a, q_addr + kk * 32);
#pragma unroll
                for (int np = 0; np < 2; ++np) {
                    uint32_t b[4];
                    fa_ldsm_x4(b, k_addr + (np * 16 * LD + kk * 16) * 2);
                    fa_mma(s[2 * np], a, b[0], b[1]);
                    fa_mma(s[2 * np + 1], a, b[2], b[3]);
                }
            }
            // Scale, mask, row max over the 4 lanes that share a row.
            float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
            for (int nt = 0; nt < 4; ++nt)
#pragma unroll
                for (int c = 0; c < 2; ++c) {
                    const int key = k0 + nt * 8 + 2 * tq + c;
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
            const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
            const float c0 = exp2f(m0 - mn0), c1 = exp2f(m1 - mn1);  // 0 on the first tile
            m0 = mn0;
            m1 = mn1;
            float rs0 = 0.f, rs1 = 0.f;
#pragma unroll
            for (int nt = 0; nt < 4; ++nt)
#pragma unroll
                for (int c = 0; c < 2; ++c) {
                    s[nt][c] = exp2f(s[nt][c] - mn0);
                    s[nt][2 + c] = exp2f(s[nt][2 + c] - mn1);
                    rs0 += s[nt][c];
                    rs1 += s[nt][2 + c];
                }
            l0 = l0 * c0 + rs0;
            l1 = l1 * c1 + rs1;
#pragma unroll
            for (int nt = 0; nt < FA_MAX_NT; ++nt)
                if (nt < NT) {
                    o[nt][0] *= c0;
                    o[nt][1] *= c0;
                    o[nt][2] *= c1;
                    o[nt][3] *= c1;
                }
            // The S accumulators of n8 tiles 2kk and 2kk+1 are the A fragment of key step kk.
#pragma unroll
            for (int kk = 0; kk < 2; ++kk) {
                pa[kk][0] = fa_pack(s[2 * kk][0], s[2 * kk][1]);
                pa[kk][1] = fa_pack(s[2 * kk][2], s[2 * kk][3]);
                pa[kk][2] = fa_pack(s[2 * kk + 1][0], s[2 * kk + 1][1]);
                pa[kk][3] = fa_pack(s[2 * kk + 1][2], s[2 * kk + 1][3]);
            }
        }

        // V tile j landed; every warp is done with K tile j.
        fa_cp_async_wait_all();
        __syncthreads();
        if (j + 1 < n_tiles) fa_load_kv(k_s, kbase, k0 + FA_BK, nk_blk, HD, LD);
        fa_cp_async_commit();

        if (active) {
#pragma unroll
            for (int kk = 0; kk < 2; ++kk)
#pragma unroll
                for (int np = 0; np < FA_MAX_NT / 2; ++np) {
                    const uint32_t addr = v_addr + (kk * 16 * LD + np * 16) * 2;
                    if (2 * np + 1 < NT) {
                        uint32_t b[4];
                        fa_ldsm_x4_trans(b, addr);
                        fa_mma(o[2 * np], pa[kk], b[0], b[1]);
                        fa_mma(o[2 * np + 1], pa[kk], b[2], b[3]);
                    } else if (2 * np < NT) {
                        uint32_t b[2];
                        fa_ldsm_x2_trans(b, addr);
                        fa_mma(o[2 * np], pa[kk], b[0], b[1]);
                    }
                }
        }
    }

    if (!warp_live) return;
#pragma unroll
    for (int off = 1; off < 4; off <<= 1) {
        l0 += __shfl_xor_sync(0xffffffffu, l0, off);
        l1 += __shfl_xor_sync(0xffffffffu, l1, off);
    }
    const float i0 = 1.f / l0, i1 = 1.f / l1;
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
