// Skinny GEMM on the tensor cores, for decode batches of up to 64 rows:
//   Y[m, n] = sum_k X[m, k] * W[n, k]          (+ Y[m, n] with acc: fp32 Y only)
// X bf16 [M][ldx] (M <= 64), W bf16 [N][ldw] (a Linear weight), fp32 accumulation; Y bf16 (the
// sum rounded once) or fp32.
//
// Why: at up to 64 rows these GEMMs are weight streams (64 rows of X are 1-2% of the bytes), and
// cuBLAS's picks for the N = 3712 ones (out_proj, o_proj, down, linear) split K and reduce in a
// second kernel, or leave SMs idle: out_proj at 64 rows took 20.5 us for 55 MB, o_proj at one
// row 11.8 us for 28 MB (64% and 55% of copy bandwidth; BENCHMARKS.md, `bench --gemm-lt`).
//
// Tiling: block (t, s) owns W rows [128 t, 128 t + 128) (the N tile) and the s-th of S equal
// ranges of K's 128-wide chunks. 8 warps; warp w owns tile rows [16 w, 16 w + 16) (two n8 tiles)
// against all of X's 16-row groups below M (up to four m16 tiles): per 16-wide k step, up to 8
// mma.m16n8k16 (bf16 in, fp32 accumulate). A (X) and B (W rows: B = W^T is "col" layout, so a W
// row is a B column) come from shared memory through ldmatrix; rows are padded to 136 bf16 (272
// bytes) so that the 8 row addresses of each ldmatrix fall in distinct bank groups.
// K is walked through an SK_STAGES-deep ring of (W 128 x 128, X M x 128) chunks, each row one
// TMA bulk copy (256 bytes) completing on the stage's mbarrier: a first version with per-thread
// 16-byte cp.async copies streamed at ~1 TB/s (each SM's outstanding small requests were the
// limit). Warp 0 issues a stage's copies after the block barrier that frees it; the W copies of
// the first stages go before griddepcontrol.wait (weights are constant), X's after. X rows >= M
// are zeroed once and never copied.
// Split-K (S > 1): each block stores its fp32 partial tile to `ws`; the last of the tile's S
// blocks to arrive (a counter per tile, which it resets to 0 for the next launch) adds the S
// partials in the order s = 0..S-1 and writes Y: the same sums in the same order every run.
//
// Launch (sm_90: TMA): grid (N / 128, S), block 256, dynamic shared memory
// SK_STAGES * 192 * 136 * 2 + 64 bytes. The host checks: N % 128 == 0, K % 128 == 0, ldx and
// ldw multiples of 8, X and W 16-byte aligned, S <= number of 128-wide chunks, ws holding
// N / 128 * S * 64 * 128 floats and N / 128 zeroed counters.
#include "common.cuh"
#include "async_copy.cuh"

#define SK_BN 128
#define SK_BM 64
#define SK_BK 128
#define SK_LD 136  // padded row, in bf16
#define SK_STAGES 4
#define SK_THREADS 256

// The sm_90 primitives the kernel uses, each taking shared memory as a pointer, so that
// scripts/skinny_emu.cpp can run the kernel on the CPU with host versions of them
// (SKINNY_HOST_EMU).
#ifdef SKINNY_HOST_EMU
#include "skinny_emu_ops.h"
#elif __CUDA_ARCH__ >= 900
#include "mma.cuh"
// ldmatrix x4 and mma.m16n8k16 (mma.cuh).
__device__ __forceinline__ void sk_ldsm4(uint32_t (&r)[4], const bf16* p) { ldsm_x4(r, shared_addr(p)); }
__device__ __forceinline__ void sk_mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    mma_bf16_16816(c, a, b0, b1);
}
// One row (SK_BK bf16, 256 bytes) global -> shared by TMA, completing on bar (whose expected
// bytes the issuing warp has raised for the whole stage).
__device__ __forceinline__ void sk_row(bf16* dst, const bf16* src, uint64_t* bar) { tma_copy(dst, src, SK_BK * 2, bar); }
// An mbarrier for one arrival per phase.
__device__ __forceinline__ void sk_init(uint64_t* bar) { mbar_init(bar, 1); }
// Arrives once on bar and raises the bytes its current phase waits for.
__device__ __forceinline__ void sk_expect(uint64_t* bar, unsigned bytes) { mbar_arrive_expect_tx(bar, bytes); }
// The mbarriers' initialisation, and the block's generic-proxy shared-memory writes, ordered
// before the async proxy's (TMA) accesses that follow.
__device__ __forceinline__ void sk_fence_init() { asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory"); }
__device__ __forceinline__ void sk_fence_proxy() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }
// Waits for the mbarrier's phase `parity` to complete, as mbar_wait (async_copy.cuh) does, but
// traps after 2 s: a copy that never arrives becomes a launch error instead of a hung GPU.
__device__ __forceinline__ void sk_wait(uint64_t* bar, unsigned parity) {
    uint64_t t0 = 0;
    while (!mbar_try_wait(bar, parity)) {
        uint64_t t;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
        if (t0 == 0) t0 = t;
        else if (t - t0 > 2000000000ull) __trap();
    }
}
#endif

#if __CUDA_ARCH__ >= 900 || defined(SKINNY_HOST_EMU)
// The epilogue's write of one value: bf16, or fp32 added onto Y (acc) or replacing it.
__device__ __forceinline__ void sk_store(void* y, size_t i, float v, int y_f32, int acc) {
    if (y_f32) {
        float* yf = static_cast<float*>(y);
        yf[i] = acc ? yf[i] + v : v;
    } else {
        static_cast<bf16*>(y)[i] = to_bf(v);
    }
}
#endif

extern "C" __global__ void __launch_bounds__(SK_THREADS, 1)
    skinny_gemm(const bf16* x, int ldx, const bf16* W, int ldw, void* y, int ldy, int M, int K,
                int y_f32, int acc, float* ws, unsigned* counters) {
#if __CUDA_ARCH__ >= 900 || defined(SKINNY_HOST_EMU)
    extern __shared__ __align__(128) unsigned char sk_raw[];
    bf16* sk_buf = reinterpret_cast<bf16*>(sk_raw);  // [SK_STAGES][SK_BN + SK_BM][SK_LD]
    uint64_t* full = reinterpret_cast<uint64_t*>(sk_raw + (size_t)SK_STAGES * (SK_BN + SK_BM) * SK_LD * 2);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int tile = blockIdx.x, s = blockIdx.y, S = gridDim.y;
    const int n0 = tile * SK_BN;
    const int chunks = K / SK_BK, c0 = s * chunks / S, nc = (s + 1) * chunks / S - c0;
    const int mtiles = (M + 15) / 16;
    auto stage_w = [&](int st) { return sk_buf + (size_t)st * (SK_BN + SK_BM) * SK_LD; };
    auto stage_x = [&](int st) { return stage_w(st) + SK_BN * SK_LD; };
    // Warp 0: chunk c's W rows (and X rows below M with with_x) into stage st; with_w raises the
    // stage's expected bytes for both first.
    auto issue = [&](int c, int st, bool with_w, bool with_x) {
        if (with_w) {
            if (lane == 0) sk_expect(full + st, (SK_BN + M) * SK_BK * 2);
            __syncwarp();
            for (int r = lane; r < SK_BN; r += 32)
                sk_row(stage_w(st) + r * SK_LD, W + (size_t)(n0 + r) * ldw + (size_t)c * SK_BK, full + st);
        }
        if (with_x)
            for (int r = lane; r < M; r += 32)
                sk_row(stage_x(st) + r * SK_LD, x + (size_t)r * ldx + (size_t)c * SK_BK, full + st);
    };
    pdl_trigger();
    if (tid < SK_STAGES) sk_init(full + tid);
    // X rows >= M stay zero in every stage (never copied).
    for (int e = tid; e < SK_STAGES * (SK_BM - M) * (SK_LD / 8); e += SK_THREADS) {
        const int st = e / ((SK_BM - M) * (SK_LD / 8)), rem = e % ((SK_BM - M) * (SK_LD / 8));
        reinterpret_cast<uint4*>(stage_x(st) + (M + rem / (SK_LD / 8)) * SK_LD)[rem % (SK_LD / 8)] =
            make_uint4(0, 0, 0, 0);
    }
    sk_fence_init();
    sk_fence_proxy();
    __syncthreads();
    if (warp == 0)
        for (int st = 0; st < SK_STAGES - 1 && st < nc; ++st) issue(c0 + st, st, true, false);
    pdl_wait();
    if (warp == 0)
        for (int st = 0; st < SK_STAGES - 1 && st < nc; ++st) issue(c0 + st, st, false, true);
    float accs[4][2][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) accs[i][j][r] = 0.f;
    // ldmatrix lane addresses: A (X rows) row lane % 16, k half lane / 16; B (W rows) row
    // 16 w + 8 (lane / 16) + lane % 8, k half (lane / 8) % 2.
    const int a_row = lane & 15, a_k = (lane >> 4) * 8;
    const int b_row = warp * 16 + (lane >> 4) * 8 + (lane & 7), b_k = ((lane >> 3) & 1) * 8;
    for (int i = 0; i < nc; ++i) {
        if (i > 0) __syncthreads();  // every warp is done with chunk i - 1: its stage is free
        // Chunk i + SK_STAGES - 1 goes into that stage (at i = 0: the last stage, still unused).
        const int next = i + SK_STAGES - 1;
        if (warp == 0 && next < nc) {
            sk_fence_proxy();
            issue(c0 + next, next % SK_STAGES, true, true);
        }
        sk_wait(full + i % SK_STAGES, (i / SK_STAGES) & 1);
        const bf16* sw = stage_w(i % SK_STAGES);
        const bf16* sx = stage_x(i % SK_STAGES);
#pragma unroll
        for (int kk = 0; kk < SK_BK; kk += 16) {
            uint32_t b[4];
            sk_ldsm4(b, sw + b_row * SK_LD + kk + b_k);
#pragma unroll
            for (int mi = 0; mi < 4; ++mi) {
                if (mi < mtiles) {
                    uint32_t a[4];
                    sk_ldsm4(a, sx + (mi * 16 + a_row) * SK_LD + kk + a_k);
                    sk_mma(accs[mi][0], a, b[0], b[1]);
                    sk_mma(accs[mi][1], a, b[2], b[3]);
                }
            }
        }
    }
    // Accumulator r of (mi, nj) is row mi * 16 + lane / 4 + 8 (r / 2), tile column
    // 16 w + 8 nj + 2 (lane % 4) + r % 2.
    const int col = warp * 16 + 2 * (lane & 3);
    if (S == 1) {
#pragma unroll
        for (int mi = 0; mi < 4; ++mi)
#pragma unroll
            for (int nj = 0; nj < 2; ++nj)
#pragma unroll
                for (int r = 0; r < 4; ++r) {
                    const int m = mi * 16 + (lane >> 2) + 8 * (r >> 1);
                    if (m < M) sk_store(y, (size_t)m * ldy + n0 + col + nj * 8 + (r & 1), accs[mi][nj][r], y_f32, acc);
                }
        return;
    }
    float* part = ws + ((size_t)tile * S + s) * SK_BM * SK_BN;
#pragma unroll
    for (int mi = 0; mi < 4; ++mi)
#pragma unroll
        for (int nj = 0; nj < 2; ++nj)
#pragma unroll
            for (int r = 0; r < 4; r += 2) {
                const int m = mi * 16 + (lane >> 2) + 8 * (r >> 1);
                if (m < M)
                    *reinterpret_cast<float2*>(part + m * SK_BN + col + nj * 8) =
                        make_float2(accs[mi][nj][r], accs[mi][nj][r + 1]);
            }
    __threadfence();  // this block's partial is visible device-wide before its arrival
    __syncthreads();
    __shared__ int last;
    if (tid == 0) last = atomicAdd(counters + tile, 1u) == (unsigned)(S - 1);
    __syncthreads();
    if (!last) return;
    __threadfence();  // the other blocks' partials (their arrivals came first) are read after this
    // Thread t adds up float4 t, t + 256, ... of the tile's first M rows: all of a thread's loads
    // are issued before any is added (8 float4 per round), so the tail waits one round trip per
    // round, not one per value.
    const float4* tp = reinterpret_cast<const float4*>(ws + (size_t)tile * S * SK_BM * SK_BN);
    const int n4 = M * SK_BN / 4, stride4 = SK_BM * SK_BN / 4;
    for (int e0 = tid; e0 < n4; e0 += 8 * SK_THREADS) {
        float4 v[8];
#pragma unroll
        for (int j = 0; j < 8; ++j) v[j] = make_float4(0.f, 0.f, 0.f, 0.f);
        for (int k = 0; k < S; ++k) {
            float4 p[8];
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                const int e = e0 + j * SK_THREADS;
                p[j] = e < n4 ? __ldcg(tp + (size_t)k * stride4 + e) : make_float4(0.f, 0.f, 0.f, 0.f);
            }
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                v[j].x += p[j].x;
                v[j].y += p[j].y;
                v[j].z += p[j].z;
                v[j].w += p[j].w;
            }
        }
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const int e = e0 + j * SK_THREADS;
            if (e < n4) {
                const int m = e / (SK_BN / 4), c = (e % (SK_BN / 4)) * 4;
                const size_t o = (size_t)m * ldy + n0 + c;
                sk_store(y, o, v[j].x, y_f32, acc);
                sk_store(y, o + 1, v[j].y, y_f32, acc);
                sk_store(y, o + 2, v[j].z, y_f32, acc);
                sk_store(y, o + 3, v[j].w, y_f32, acc);
            }
        }
    }
    if (tid == 0) counters[tile] = 0;  // ready for the next launch (kernels on one stream do not overlap)
#else
    __trap();  // sm_90 only (TMA); the host never launches it elsewhere
#endif
}
