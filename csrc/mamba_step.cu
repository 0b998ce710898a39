// The whole one-token Mamba mixer after in_proj, for one sequence (decode at batch 1), in one
// persistent kernel: causal conv1d update, x_proj, dt_proj, the selective-state update, and
// out_proj added onto the fp32 residual stream.
//   xc[c]   = silu(conv_b[c] + sum_k conv_w[c, k] * win_k[c])   win = conv state, then x = xz[c]
//   xdbl[r] = sum_d xc[hh*DH + d] * x_proj[r, d]                 r = hh*XR + j over NH*XR rows
//   dt[c]   = softplus(bf16(sum_j xdbl[hh*XR + j] * dt_proj[c, j]) + dt_bias[c])   (j < R)
//   s[c,n]  = exp(dt*A[c,n]) * s[c,n] + dt * B[n] * xc[c];  y[c] = bf16((sum_n s*C[n] + D[c]*xc[c]) * silu(z[c]))
//   h[o]   += sum_c y[c] * out_proj[o, c]
// with the same roundings as the separate kernels (conv1d_update, gemv, ssm_decode_dt, the
// out_proj GEMM): xc, xdbl and y are bf16 values.
//
// Why one kernel: at batch 1 the four steps between in_proj and the next layer's norm were each
// a few microseconds of latency (launch, a DRAM round trip, a tail) while DRAM idled: conv1d_update
// 2.5, x_proj 3.2, ssm_decode_dt 7.6 and out_proj 17.9 us per layer in the replayed graph (55 MB:
// ~72% of copy bandwidth). Here the weights stream in while the latency-bound phases run: the
// last warp (the producer) issues TMA bulk copies of the block's x_proj rows, its dt_proj rows and
// its first MS_STAGES out_proj rows into shared memory, at most MS_DEPTH at a time, from the
// kernel's start (weights are constant: before griddepcontrol.wait). The other 31 warps (the
// workers) run the phases; out_proj then finds a third of its weights on chip and streams the
// rest through the ring, each worker thread refilling its own 16-byte chunk of a stage with
// cp.async (its own groups are all it waits on).
//   What the H200 taught (timestamps per block and phase, BENCHMARKS.md): (1) everything an SM
// receives queues on one path, so a deep prefetch holds back the phases' loads by (bytes in
// flight) / (the SM's share of bandwidth): with all rows requested at once the conv took 7 us
// instead of 3, and 1 or 2 copies in flight beat 3, 4 and 12; (2) a vector that every block reads
// (xc, xdbl) is staged in shared memory once per block: 16-byte loads of it by ~900 threads per SM
// queued at the few L2 slices holding it (5 us for the state update instead of 2); (3) issuing the
// prefetch from the worker threads themselves (cp.async) stalled them for up to 7 us behind
// their own requests, hence the producer warp.
//
// Launch: grid G = number of SMs (every block resident at once: 1024 threads and most of the
// shared memory, so one block per SM), block 1024 threads, dynamic shared memory from
// `mamba_step_smem` (src/gpu/kernels/mamba_step.rs). Block b owns channels [b*nch, ...) for the
// conv and the state update (16 lanes per channel, lane n = state n), x_proj rows [b*nxr, ...)
// (MS_XSEG warps per row, each a segment of DH), and out_proj rows [b*nout, ...) (all workers on
// one row, a 16-byte chunk per thread, partial sums kept per warp and added once at the end).
// Phases that read what other blocks wrote are separated by a grid-wide barrier (three in all) on
// a 64-bit counter that only grows: every launch on one counter must use the same grid. The
// launch is cooperative (src/gpu/device.rs): if the blocks could not all be resident at once it
// fails with an error rather than hang at the first barrier.
// The states are read before griddepcontrol.wait (see the worker section): an exception to the
// rule in common.cuh that holds because nothing in a decode step before this kernel writes them.
// The host checks what the layout needs (`mamba_step_fits`): DI % 8, DH % 8, R % 8, R <= 256,
// d_state 16, K <= 8, nch <= 62, DI / 8 <= 992, H <= 8 * 992, DI >= 66, the shared memory,
// 16-byte aligned weights.
//   With norm_w set, the kernel also computes the RMSNorm that comes next (the next Mamba layer's
// input norm, or the final norm), as the rmsnorm kernel (csrc/norm.cu) does:
//   norm_out[i] = bf16(w[i] * bf16(h[i] * rsqrt(mean(h^2) + eps)))
// Each block arrives once more on the barrier's counter after its out_proj rows are written (no
// wait); the last to arrive sees every block's h and computes the norm alone (a fixed order of
// sums: deterministic). That replaces a kernel of its own and a launch boundary per layer with a
// tail in one block: in the replayed graph the rmsnorm kernel had cost little more than that
// tail (tg64 7.204 / 7.208 -> 7.196 / 7.191 ms per token, BENCHMARKS.md).
#include "common.cuh"
#include "async_copy.cuh"

#define MS_THREADS 1024
#define MS_WARPS (MS_THREADS / 32)
#define MS_WORKERS (MS_THREADS - 32)  // every warp but the last, which issues the TMA copies
#define MS_XSEG 7  // warps per x_proj row
#define MS_N 16
#define MS_MAX_K 8
#define MS_STAGES 10  // out_proj rows in the shared-memory ring
#define MS_DEPTH 1     // TMA copies in flight per block (H200: 1 and 2 beat 3, 4 and 12; see above)

struct MambaStepArgs {
    const bf16* xz;          // in_proj output [2*DI]: x, then z
    bf16* conv_state;        // [slots][K-1][DI]
    const float* conv_w;     // [DI][K]
    const float* conv_b;     // [DI]
    bf16* xc;                // [DI] conv output (scratch)
    const bf16* x_proj;      // [NH][XR][DH]
    bf16* xdbl;              // [NH][XR] (scratch)
    const bf16* dt_proj;     // [DI][R]
    const float* A;          // [DI][16]
    const float* D;          // [DI]
    const float* dt_bias;    // [DI]
    float* ssm_state;        // [slots][DI][16]
    bf16* y;                 // [DI] (scratch)
    const bf16* out_proj;    // [H][DI]
    float* h;                // [H] residual stream, added to
    const int* entry_slot;   // [1]: the sequence's state slot
    unsigned long long* barrier;
    const bf16* norm_w;      // [H] the next RMSNorm's weight, or null: no norm
    bf16* norm_out;          // [H] that norm of the updated h
    int DI, DH, NH, R, K, H;
    float eps;               // the norm's epsilon
    int pad;
};

#if __CUDA_ARCH__ >= 900
// Barrier of the worker warps (named barrier 1; the producer warp does not take part).
__device__ __forceinline__ void ms_workers_sync() { asm volatile("bar.sync 1, %0;" ::"n"(MS_WORKERS) : "memory"); }

// Grid-wide barrier: every block's writes before it are visible to every block after it. One
// thread per block arrives on a 64-bit counter that only grows, then waits until all G blocks of
// this round have arrived; the reads after it that see other blocks' data go through L2 (__ldcg).

__device__ __forceinline__ void ms_grid_sync(unsigned long long* ctr, unsigned G) {
    ms_workers_sync();
    if (threadIdx.x == 0) {
        // acq_rel: releases the block's writes (ordered before this by the bar.sync; release is
        // cumulative) and acquires the others'. It measured a little faster than __threadfence()
        // then a relaxed atomicAdd (BENCHMARKS.md).
        unsigned long long old;
        asm volatile("atom.add.acq_rel.gpu.global.u64 %0, [%1], 1;" : "=l"(old) : "l"(ctr) : "memory");
        const unsigned long long target = (old / G + 1) * G;
        unsigned long long cur;
        do {
            asm volatile("ld.acquire.gpu.global.u64 %0, [%1];" : "=l"(cur) : "l"(ctr) : "memory");
        } while (cur < target);
    }
    ms_workers_sync();
}

// The next RMSNorm (see the header), called by every worker thread after its block's h rows
// are written. The counter is the grid barrier's: G more arrivals keep it a multiple of G, and
// no block arrives here before all have passed the last barrier, so the arrival that sees
// old % G == G - 1 is the last of this round. scratch is MS_WARPS + 1 words of shared memory
// that nothing reads any more (the staged xc: static shared memory would not fit beside the
// dynamic allocation, which takes all a block may have).
#define MS_NORM_HELD 8
__device__ __forceinline__ void ms_next_norm(const MambaStepArgs& a, unsigned G, float* scratch) {
    float* red = scratch;
    int& last = *reinterpret_cast<int*>(scratch + MS_WARPS);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    ms_workers_sync();  // the block's h writes come before thread 0's release
    if (tid == 0) {
        unsigned long long old;
        asm volatile("atom.add.acq_rel.gpu.global.u64 %0, [%1], 1;" : "=l"(old) : "l"(a.barrier) : "memory");
        last = old % G == G - 1;
    }
    ms_workers_sync();  // orders the reads below after thread 0's acquire
    if (!last) return;
    // Every value and weight of the thread, loads all issued before any is used; h through L2.
    float x[MS_NORM_HELD];
    bf16 w[MS_NORM_HELD];
#pragma unroll
    for (int j = 0; j < MS_NORM_HELD; ++j) {
        const int i = tid + j * MS_WORKERS;
        x[j] = i < a.H ? __ldcg(a.h + i) : 0.f;
        w[j] = i < a.H ? a.norm_w[i] : bf16();
    }
    float ss = 0.f;
#pragma unroll
    for (int j = 0; j < MS_NORM_HELD; ++j) ss += x[j] * x[j];
    ss = warp_sum(ss);
    if (lane == 0) red[warp] = ss;
    ms_workers_sync();
    ss = lane < MS_WARPS - 1 ? red[lane] : 0.f;
    const float r = rsqrtf(warp_sum(ss) / (float)a.H + a.eps);
#pragma unroll
    for (int j = 0; j < MS_NORM_HELD; ++j) {
        const int i = tid + j * MS_WORKERS;
        if (i < a.H) a.norm_out[i] = to_bf(to_f(w[j]) * round_bf(x[j] * r));
    }
}
#endif

extern "C" __global__ void __launch_bounds__(MS_THREADS, 1) mamba_step(MambaStepArgs a) {
#if __CUDA_ARCH__ >= 900
    extern __shared__ __align__(16) unsigned char ms_smem[];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int G = gridDim.x, blk = blockIdx.x;
    const int XR = a.R + 2 * MS_N, XROWS = a.NH * XR;
    const int nch = (a.DI + G - 1) / G, nxr = (XROWS + G - 1) / G, nout = (a.H + G - 1) / G;
    const int c0 = blk * nch, ch = max(0, min(a.DI, c0 + nch) - c0);
    const int r0 = blk * nxr, xr = max(0, min(XROWS, r0 + nxr) - r0);
    const int o0 = blk * nout, no = max(0, min(a.H, o0 + nout) - o0);
    const int kch = a.DI / 8;  // out_proj: thread t < kch owns chunk t of every row
    // Shared memory, in this order (mamba_step_smem on the host adds up the same sizes).
    uint4* ring = reinterpret_cast<uint4*>(ms_smem);            // [MS_STAGES][DI / 8] out_proj rows
    bf16* xw = reinterpret_cast<bf16*>(ring + (size_t)MS_STAGES * kch);  // [nxr][DH] x_proj rows
    bf16* dw = xw + (size_t)nxr * a.DH;                         // [nch][R] dt_proj rows
    uint4* xs = reinterpret_cast<uint4*>(dw + (size_t)nch * a.R);  // [DI / 8] staged xc
    uint4* xds = xs + kch;                                      // [NH * XR / 8] staged xdbl
    float* us = reinterpret_cast<float*>(xds + XROWS / 8);      // [nch] xc values
    float* px = us + ((nch + 3) & ~3);                          // [nxr][MS_XSEG] x_proj partials
    float* po = px + nxr * MS_XSEG;                             // [nout][MS_WARPS] out_proj partials
    uint64_t* bars = reinterpret_cast<uint64_t*>(po + nout * MS_WARPS);  // xw, dw, ring rows
    pdl_trigger();
    if (tid == 0) {
        for (int b = 0; b < 2 + MS_STAGES; ++b) mbar_init(bars + b, 1);
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();  // the mbarriers are initialised before anyone uses them

    if (warp == MS_WARPS - 1) {
        // The producer warp: one lane issues the block's weight copies as TMA bulk copies (weights
        // are constant: no pdl_wait needed first), its x_proj rows, its dt_proj rows, then its
        // first MS_STAGES out_proj rows, keeping at most MS_DEPTH copies in flight. Everything an
        // SM receives queues on one path, so a deep prefetch would hold back the latency-bound
        // loads of the phases below by (bytes in flight) / (the SM's share of bandwidth); a few
        // copies in flight keep DRAM busy and those loads quick.
        if (lane == 0) {
            const int ncopy = 2 + min(MS_STAGES, no);
            for (int k = 0; k < ncopy; ++k) {
                if (k >= MS_DEPTH) mbar_wait(bars + k - MS_DEPTH, 0);
                if (k == 0) {
                    if (xr > 0) tma_load(xw, a.x_proj + (size_t)r0 * a.DH, xr * a.DH * 2, bars);
                    else asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(shared_addr(bars)) : "memory");
                } else if (k == 1) {
                    if (ch > 0) tma_load(dw, a.dt_proj + (size_t)c0 * a.R, ch * a.R * 2, bars + 1);
                    else asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(shared_addr(bars + 1)) : "memory");
                } else {
                    const int s = k - 2;
                    tma_load(ring + (size_t)s * kch, a.out_proj + (size_t)(o0 + s) * a.DI, a.DI * 2, bars + k);
                }
            }
        }
        pdl_wait();  // every thread waits before it exits (common.cuh)
        return;
    }

    // Worker warps. This thread's constants, and the states, are read before pdl_wait, so that
    // their DRAM round trips overlap the kernel before: a layer's states are written only by this
    // kernel (for that layer, one step earlier) and by prefill kernels, and a step starts after
    // the host's upload of its batch description (slot included), which waits for all earlier
    // work; nothing in the step before this kernel writes them.
    const bool conv_thread = tid < ch;
    const int cl = tid >> 4, n = tid & 15;
    const bool scan_thread = cl < ch;
    const int c = c0 + cl;
    const int slot = a.entry_slot[0];
    float cw[MS_MAX_K], cb = 0.f;
    bf16 win[MS_MAX_K];  // conv window: K - 1 from the state, then the new input
    bf16* cs = a.conv_state + (size_t)slot * (a.K - 1) * a.DI + c0 + tid;
#pragma unroll
    for (int k = 0; k < MS_MAX_K; ++k) {
        cw[k] = (conv_thread && k < a.K) ? a.conv_w[(size_t)(c0 + tid) * a.K + k] : 0.f;
        win[k] = (conv_thread && k < a.K - 1) ? cs[(size_t)k * a.DI] : to_bf(0.f);
    }
    if (conv_thread) cb = a.conv_b[c0 + tid];
    float* sp = a.ssm_state + ((size_t)slot * a.DI + c) * MS_N + n;
    float An = 0.f, Dc = 0.f, bias = 0.f, st = 0.f;
    if (scan_thread) {
        An = a.A[(size_t)c * MS_N + n];
        Dc = a.D[c];
        bias = a.dt_bias[c];
        st = *sp;
    }
    pdl_wait();
    float z = 0.f, h_old = 0.f;
    if (scan_thread) z = to_f(a.xz[a.DI + c]);
    if (tid < no) h_old = a.h[o0 + tid];

    // Phase 1: conv1d update of this block's channels.
    if (conv_thread) {
        const int cc = c0 + tid;
        const bf16 xnew = a.xz[cc];
        float acc = cb;
#pragma unroll
        for (int k = 0; k < MS_MAX_K; ++k)
            if (k < a.K) acc += cw[k] * to_f(k == a.K - 1 ? xnew : win[k]);
        const bf16 v = to_bf(silu(acc));
        a.xc[cc] = v;
        us[tid] = to_f(v);
#pragma unroll
        for (int j = 0; j < MS_MAX_K - 1; ++j)
            if (j < a.K - 1) cs[(size_t)j * a.DI] = j + 1 == a.K - 1 ? xnew : win[j + 1];
    }
    ms_grid_sync(a.barrier, G);

    // Phase 2: x_proj rows of this block; warp task = (row, one MS_XSEG-th of DH). xc of the
    // heads the rows read is staged in shared memory once: a few hundred blocks' 16-byte loads of
    // one small region through L2 queue up at the few L2 slices that hold it.
    const int h0 = xr > 0 ? r0 / XR : 0, h1 = xr > 0 ? (r0 + xr - 1) / XR + 1 : 0;
    for (int k = tid; k < (h1 - h0) * a.DH / 8; k += MS_WORKERS)
        xs[k] = __ldcg(reinterpret_cast<const uint4*>(a.xc + (size_t)h0 * a.DH) + k);
    ms_workers_sync();
    mbar_wait(bars, 0);
    const int xchunks = a.DH / 8, xseg = (xchunks + MS_XSEG - 1) / MS_XSEG;
    for (int task = warp; task < xr * MS_XSEG; task += MS_WARPS - 1) {
        const int rl = task / MS_XSEG, sg = task % MS_XSEG;
        const uint4* wrow = reinterpret_cast<const uint4*>(xw + (size_t)rl * a.DH);
        const uint4* xrow = xs + (size_t)((r0 + rl) / XR - h0) * xchunks;
        float acc = 0.f;
        for (int k = sg * xseg + lane; k < min(xchunks, (sg + 1) * xseg); k += 32) acc += dot8_bf16(wrow[k], xrow[k]);
        acc = warp_sum(acc);
        if (lane == 0) px[task] = acc;
    }
    ms_workers_sync();
    if (tid < xr) {
        float s = 0.f;
        for (int sg = 0; sg < MS_XSEG; ++sg) s += px[tid * MS_XSEG + sg];
        a.xdbl[r0 + tid] = to_bf(s);
    }
    ms_grid_sync(a.barrier, G);

    // Phase 3: dt_proj and the state update, 16 lanes per channel; lane n takes dt_low chunks
    // n and n + 16 (R <= 256) and B[n], C[n], from xdbl staged in shared memory (as xc above).
    for (int k = tid; k < XROWS / 8; k += MS_WORKERS) xds[k] = __ldcg(reinterpret_cast<const uint4*>(a.xdbl) + k);
    ms_workers_sync();
    mbar_wait(bars + 1, 0);
    {
        float dot = 0.f, B = 0.f, C = 0.f, u = 0.f;
        if (scan_thread) {
            const bf16* xd = reinterpret_cast<const bf16*>(xds) + (size_t)(c / a.DH) * XR;
            const uint4* wr = reinterpret_cast<const uint4*>(dw + (size_t)cl * a.R);
            const uint4* xv = reinterpret_cast<const uint4*>(xd);
            const int r8 = a.R / 8;
            if (n < r8) dot += dot8_bf16(wr[n], xv[n]);
            if (n + 16 < r8) dot += dot8_bf16(wr[n + 16], xv[n + 16]);
            B = to_f(xd[a.R + n]);
            C = to_f(xd[a.R + MS_N + n]);
            u = us[cl];
        }
#pragma unroll
        for (int o = 8; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
        float p = 0.f;
        if (scan_thread) {
            const float dt = softplus(round_bf(dot) + bias);
            const float s = expf(dt * An) * st + dt * B * u;
            *sp = s;
            p = s * C;
        }
#pragma unroll
        for (int o = 8; o > 0; o >>= 1) p += __shfl_xor_sync(0xffffffffu, p, o);
        if (scan_thread && n == 0) a.y[c] = to_bf((p + Dc * u) * silu(z));
    }
    ms_grid_sync(a.barrier, G);

    // Phase 4: out_proj rows of this block through the ring: thread t reads chunk t of each row
    // against its chunk of y. Rows < MS_STAGES came by TMA (wait on their mbarrier); the thread
    // then refills the stage with its own chunk of row i + MS_STAGES by cp.async (one group per
    // row, empty or not), so rows past the first MS_STAGES wait on the thread's own groups.
    uint4 yv = make_uint4(0, 0, 0, 0);
    const bool row_thread = tid < kch;
    if (row_thread) yv = __ldcg(reinterpret_cast<const uint4*>(a.y) + tid);
    for (int i = 0; i < no; ++i) {
        const int s = i % MS_STAGES;
        if (i < MS_STAGES)
            mbar_wait(bars + 2 + i, 0);
        else
            cp_async_wait<MS_STAGES - 1>();
        float acc = row_thread ? dot8_bf16(ring[(size_t)s * kch + tid], yv) : 0.f;
        acc = warp_sum(acc);  // uses the stage's value: only then is the stage refilled
        if (lane == 0) po[i * MS_WARPS + warp] = acc;
        if (row_thread && i + MS_STAGES < no)
            cp_async16(ring + (size_t)s * kch + tid, a.out_proj + (size_t)(o0 + i + MS_STAGES) * a.DI + 8 * tid);
        cp_async_commit();
    }
    ms_workers_sync();
    if (tid < no) {
        float s = 0.f;
#pragma unroll 8
        for (int w = 0; w < MS_WARPS - 1; ++w) s += po[tid * MS_WARPS + w];
        a.h[o0 + tid] = h_old + s;
    }
    if (a.norm_w != nullptr) ms_next_norm(a, G, reinterpret_cast<float*>(xs));
#else
    __trap();  // sm_90 only; the host never launches it elsewhere
#endif
}
