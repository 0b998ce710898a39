// The Mamba-1 selective scan with n_mamba_heads heads, fused with softplus(dt + bias), the D skip
// and the SiLU(z) gate. Everything inside is fp32; inputs and outputs are bf16; the state is fp32.
//
//   dt[t,c]    = softplus(dtr[t,c] + dt_bias[c])
//   state[c,n] = exp(dt * A[c,n]) * state[c,n] + dt * B[t,h,n] * u[t,c]       (h = c / DH)
//   y[t,c]     = (sum_n state[c,n] * C[t,h,n] + D[c] * u[t,c]) * silu(z[t,c])
//
// Layouts: u (the conv output) and dtr (dt_proj's output) are [M, DI]; z is read from in_proj's
// output with row stride ldz; xdbl (x_proj's output) is [M, NH, XR] with XR = R + 2N: per head
// dt_low (R), B (N), C (N). A is fp32 [DI, N]; the SSM state of a slot is fp32 [DI, N].
//
// Prefill (scan_seq) walks each entry's tokens in one pass from its slot's state and writes the
// final state back. Decode (one token per entry) has two kernels: ssm_decode reads dtr like the
// prefill; ssm_decode_dt computes dtr itself from xdbl and the dt_proj weight (what the engine runs
// for batches of at most 8, so that they need no dt_proj GEMM).
#include "common.cuh"

#define SCAN_N 16
#define LOG2E 1.4426950408889634f

struct ScanArgs {
    const bf16* u; const bf16* dtr; const bf16* z; int ldz; const bf16* xdbl;
    const float* A; const float* D; const float* dt_bias;
    int DI, DH, NH, R;
};

// Prefill in one pass per entry: a block of SEQ_WARPS warps owns SEQ_CH
// consecutive channels of one entry and walks all of its tokens; 8 lanes share a channel, each
// holding 2 of its 16 states, so the grid has DI·8 threads per entry (14 warps per SM at the 7B
// size: one lane's steps are serial, and the SM hides their latency with other warps) and no
// chunking (no second pass, no state combine).
//   Tokens are staged SEQ_TT at a time: every thread loads its share of the next tile (dtr, u, z
// for (t, c) pairs; B and C as 4-byte pairs, once for the block's head) into registers while the
// current tile is scanned, then converts it into shared memory: dt = softplus(dtr + bias) and
// dt·u as a float2, B and C in fp32. The scan loop reads SEQ_UNROLL steps' inputs before it
// computes them and stores each lane's partial sum of state·C afterwards, so its steps carry no
// shuffle or barrier and pipeline (the only dependency between steps is the state update). The
// tile's outputs y = (sum of the 8 partials + D·u)·silu(z) are written by the threads that staged
// u and z. exp(dt·A) is ex2.approx.ftz(dt·A·log2 e) (results below 2^-126 flush to 0); softplus
// and silu are the few-ulp forms of common.cuh (softplus_fast, silu_fast): with them the kernel's
// code is 976 instructions instead of 1216, and pp2048 went 98.4 -> 95.9 ms on the H200 (A/B in one
// binary). An earlier attempt with lg2/ex2 approximations in log1p lost accuracy for dt << 1 and
// changed the tiny-a greedy tokens; these forms keep HF's tokens and the CPU reference's bounds.
// Tried and not kept (pp2048 A/B in one binary): 16 lanes per channel with one state each, 256
// threads (106 against 97 ms: twice the warps, but more shared-memory traffic per state), and 8
// steps per loop turn (within noise). ncu at 2048 tokens (clocks locked, so slower than in a
// bench): 261 us, 122M warp instructions, 32.6M shared wavefronts, issue 67% busy; the pointer
// steps of the loads and the conflict-free epilogue (both below) make it 242 us, 110M, 28.8M. In
// the scan loop the MUFU pipe (2 ex2 per lane per token, 8 cycles per warp instruction) and issue
// (16 instructions per lane per token) are both near their limits, and the staging adds 4 MUFU
// ops per (t, c). Also measured and not kept: B and C as raw bf16 pairs in shared memory (fewer
// shared bytes, 20% more instructions: 262 and, with the two changes above, 284 us), and a
// software-pipelined form that stages the next tile inside the scan loop with shuffle-reduced
// partials and one barrier per tile (280 us, 124 registers; pp2048 98.0-98.9 against 96.8-97.8 ms).
// Needs DH % SEQ_CH == 0 (a block's channels share a head) and an even R (4-byte B/C loads); the
// host checks both.
// Launch: grid (DI / SEQ_CH, n_entries), block SEQ_THREADS.
#define SEQ_WARPS 4
#define SEQ_THREADS (32 * SEQ_WARPS)
#define SEQ_CH (SEQ_THREADS / 8)
// 64-token tiles: half the barriers per token of 32-token ones (201.8 against 209.7 us per call at
// 2048 tokens on the H200), at 120 registers and the whole 48 KB of static shared memory.
#define SEQ_TT 64
#define SEQ_PER (SEQ_TT * SEQ_CH / SEQ_THREADS)   // (t, c) pairs each thread stages per tile
#define SEQ_BCPER (SEQ_TT * SCAN_N / SEQ_THREADS)  // B/C pairs each thread stages per tile
#define SEQ_ROWS (SEQ_THREADS / SEQ_CH)            // tile rows apart of a thread's staged pairs
#define SEQ_UNROLL 4

struct SeqTile {
    float2 dtdu[SEQ_TT][SEQ_CH];      // dt, dt·u
    float2 bc[SEQ_TT][SCAN_N];        // B[0..N), then C[0..N), as pairs
    float part[SEQ_TT][SEQ_THREADS];  // thread i's partial sum of state·C (channel i / 8)
};

__device__ __forceinline__ float ex2_ftz(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

extern "C" __global__ void __launch_bounds__(SEQ_THREADS)
    scan_seq(ScanArgs a, const int* __restrict__ entry_start, const int* __restrict__ entry_len,
             const int* __restrict__ entry_slot, float* __restrict__ ssm_state, bf16* __restrict__ y) {
    static_assert(SCAN_N == 16 && SEQ_CH == SCAN_N && SEQ_ROWS == SEQ_THREADS / SCAN_N, "thread layout");
    __shared__ SeqTile sm;
    const int tid = threadIdx.x;
    const int c0 = blockIdx.x * SEQ_CH;
    const int e = blockIdx.y;
    const int start = entry_start[e], len = entry_len[e];
    const int h = c0 / a.DH;
    const int XR = a.R + 2 * SCAN_N;
    // Scan role: channel c0 + cl, states 2g and 2g + 1.
    const int cl = tid / 8, g = tid % 8;
    float* st = ssm_state + ((size_t)entry_slot[e] * a.DI + c0 + cl) * SCAN_N + 2 * g;
    const float2 s2 = *reinterpret_cast<const float2*>(st);
    float s0 = s2.x, s1 = s2.y;
    const float2 A2 = *reinterpret_cast<const float2*>(a.A + (size_t)(c0 + cl) * SCAN_N + 2 * g);
    const float a0 = A2.x * LOG2E, a1 = A2.y * LOG2E;
    // Staging role: channel c0 + sc and B/C pair sc (SEQ_CH == SCAN_N) at tile rows
    // st0 + SEQ_ROWS·j.
    const int sc = tid % SEQ_CH, st0 = tid / SEQ_CH;
    const float bias = a.dt_bias[c0 + sc], D = a.D[c0 + sc];
    const bf16* dtr = a.dtr + (size_t)(start + st0) * a.DI + c0 + sc;
    const bf16* u = a.u + (size_t)(start + st0) * a.DI + c0 + sc;
    const bf16* z = a.z + (size_t)(start + st0) * a.ldz + c0 + sc;
    const __nv_bfloat162* bc =
        reinterpret_cast<const __nv_bfloat162*>(a.xdbl + ((size_t)(start + st0) * a.NH + h) * XR + a.R) + sc;
    const size_t bc_row = (size_t)a.NH * XR / 2;  // in bf16 pairs
    bf16 rd[SEQ_PER], ru[SEQ_PER], rz[SEQ_PER];    // the next tile, as loaded
    __nv_bfloat162 rbc[SEQ_BCPER];
    float uu[SEQ_PER], sz[SEQ_PER];  // the current tile's u and silu(z)
    // Loads the next tile (tl valid rows) and moves the four pointers on by a tile. Pointer steps
    // instead of a 64-bit row product per load: 137 instructions per tile instead of 343.
    auto load_tile = [&](int tl) {
        const bf16 *pd = dtr, *pu = u, *pz = z;
        const __nv_bfloat162* pb = bc;
#pragma unroll
        for (int j = 0; j < SEQ_PER; ++j) {
            const bool in = st0 + SEQ_ROWS * j < tl;
            rd[j] = in ? *pd : bf16();
            ru[j] = in ? *pu : bf16();
            rz[j] = in ? *pz : bf16();
            rbc[j] = in ? *pb : __nv_bfloat162();
            pd += (size_t)SEQ_ROWS * a.DI;
            pu += (size_t)SEQ_ROWS * a.DI;
            pz += (size_t)SEQ_ROWS * a.ldz;
            pb += SEQ_ROWS * bc_row;
        }
        dtr += (size_t)SEQ_TT * a.DI;
        u += (size_t)SEQ_TT * a.DI;
        z += (size_t)SEQ_TT * a.ldz;
        bc += SEQ_TT * bc_row;
    };
    load_tile(min(SEQ_TT, len));
    for (int t0 = 0; t0 < len; t0 += SEQ_TT) {
        const int tl = min(SEQ_TT, len - t0);
        __syncthreads();  // the previous tile's readers of dtdu and bc are done
#pragma unroll
        for (int j = 0; j < SEQ_PER; ++j) {
            const int t = st0 + SEQ_ROWS * j;
            const float dt = softplus_fast(to_f(rd[j]) + bias);
            uu[j] = to_f(ru[j]);
            sz[j] = silu_fast(to_f(rz[j]));
            sm.dtdu[t][sc] = make_float2(dt, dt * uu[j]);
            sm.bc[t][sc] = __bfloat1622float2(rbc[j]);
        }
        __syncthreads();
        if (t0 + SEQ_TT < len) load_tile(min(SEQ_TT, len - t0 - SEQ_TT));
        int t = 0;
        for (; t + SEQ_UNROLL <= tl; t += SEQ_UNROLL) {
            float2 dd[SEQ_UNROLL], b[SEQ_UNROLL], c[SEQ_UNROLL];
            float p[SEQ_UNROLL];
#pragma unroll
            for (int k = 0; k < SEQ_UNROLL; ++k) {
                dd[k] = sm.dtdu[t + k][cl];
                b[k] = sm.bc[t + k][g];
                c[k] = sm.bc[t + k][SCAN_N / 2 + g];
            }
#pragma unroll
            for (int k = 0; k < SEQ_UNROLL; ++k) {
                s0 = ex2_ftz(dd[k].x * a0) * s0 + dd[k].y * b[k].x;
                s1 = ex2_ftz(dd[k].x * a1) * s1 + dd[k].y * b[k].y;
                p[k] = s0 * c[k].x + s1 * c[k].y;
            }
#pragma unroll
            for (int k = 0; k < SEQ_UNROLL; ++k) sm.part[t + k][tid] = p[k];
        }
        for (; t < tl; ++t) {
            const float2 dd = sm.dtdu[t][cl], b = sm.bc[t][g], c = sm.bc[t][SCAN_N / 2 + g];
            s0 = ex2_ftz(dd.x * a0) * s0 + dd.y * b.x;
            s1 = ex2_ftz(dd.x * a1) * s1 + dd.y * b.y;
            sm.part[t][tid] = s0 * c.x + s1 * c.y;
        }
        __syncthreads();
        // Lanes with sc % 8 >= 4 read their second float4 first, so that the 8 lanes of a
        // quarter-warp hit 8 distinct 16-byte bank groups (in order, lanes 4 apart collide); the sum
        // is the same (a + b == b + a). ncu: 4.07M bank conflicts per call before, 0.29M after.
        const int f = (sc >> 2) & 1;
#pragma unroll
        for (int j = 0; j < SEQ_PER; ++j) {
            const int t = st0 + SEQ_ROWS * j;
            if (t < tl) {
                const float4 p = reinterpret_cast<const float4*>(sm.part[t])[2 * sc + f];
                const float4 q = reinterpret_cast<const float4*>(sm.part[t])[2 * sc + 1 - f];
                const float sum = ((p.x + p.y) + (p.z + p.w)) + ((q.x + q.y) + (q.z + q.w));
                y[(size_t)(start + t0 + t) * a.DI + c0 + sc] = to_bf((sum + D * uu[j]) * sz[j]);
            }
        }
        // part is written again only after the next tile's second barrier, when every thread has
        // passed this epilogue.
    }
    *reinterpret_cast<float2*>(st) = make_float2(s0, s1);
}

// One-token state update (decode): row b is entry b's only token, continuing from its slot's
// state, which is updated in place, with h = c / DH, dt = softplus(dtr[b, c] + dt_bias[c]):
//   s[n] = exp(dt * A[c, n]) * s[n] + dt * B[b, h, n] * u[b, c]
//   y[b, c] = bf16((sum_n s[n] * C[b, h, n] + D[c] * u[b, c]) * silu(z[b, c]))
// Two lanes per channel: lane q of channel c holds states 8q..8q+7 (two float4s of the state and
// of A, 8 bf16 of B and of C in one 16-byte load each), and the two partial sums of state·C meet
// by one shuffle (each lane sums its states in two groups of four first, so that the total is
// added in the order of the earlier four-lane form). A warp reads 16 channels' states as 1 KB
// contiguous. The per-channel work (dt, softplus, the loads of dtr and u) is done by both lanes
// of a channel: with four lanes per channel it was done four times, and the kernel was bound by
// instruction issue at batch 64 (ncu: SM throughput 69%, DRAM 30%, 21 us per layer for 61 MB of
// state traffic; now 18.5 us). One thread per channel with its 16 states took 34 us with A, B and
// C loaded one value at a time, and 23.8 us with 16-byte loads (80 registers, fewer warps in
// flight). Four entries per thread did not help either. Lanes past DI compute nothing but take part
// in the shuffle. exp(dt·A), softplus and silu are the prefill scan's fast forms (ex2.approx.ftz,
// softplus_fast, silu_fast; see scan_seq).
// Launch: grid (ceil(DI / 128), B), block 256.

// Eight consecutive bf16 values as floats, in one 16-byte load when p is 16-byte aligned.
__device__ __forceinline__ void load8_bf16(const bf16* p, float (&v)[8]) {
    if ((reinterpret_cast<uintptr_t>(p) & 15) == 0) {
        Bf16x8 raw;
        raw.u = *reinterpret_cast<const uint4*>(p);
#pragma unroll
        for (int i = 0; i < 8; ++i) v[i] = to_f(raw.h[i]);
    } else {
#pragma unroll
        for (int i = 0; i < 8; ++i) v[i] = to_f(p[i]);
    }
}

extern "C" __global__ void ssm_decode(ScanArgs a, const int* entry_slot,
                                      float* ssm_state, bf16* y) {
    pdl_enter();  // first: every access below may depend on the previous kernel
    const int q = threadIdx.x & 1;
    const int c = blockIdx.x * (blockDim.x >> 1) + (threadIdx.x >> 1);
    const int b = blockIdx.y;
    const bool on = c < a.DI;
    float acc = 0.f, u = 0.f;
    float4 s[2] = {make_float4(0.f, 0.f, 0.f, 0.f), make_float4(0.f, 0.f, 0.f, 0.f)};
    float* st = nullptr;
    if (on) {
        st = ssm_state + ((size_t)entry_slot[b] * a.DI + c) * SCAN_N + 8 * q;
        s[0] = *reinterpret_cast<const float4*>(st);
        s[1] = *reinterpret_cast<const float4*>(st + 4);
        const float4* ap = reinterpret_cast<const float4*>(a.A + (size_t)c * SCAN_N + 8 * q);
        const float4 A[2] = {ap[0], ap[1]};
        const int h = c / a.DH, XR = a.R + 2 * SCAN_N;
        const bf16* bp = a.xdbl + ((size_t)b * a.NH + h) * XR + a.R + 8 * q;
        float B[8], C[8];
        load8_bf16(bp, B);
        load8_bf16(bp + SCAN_N, C);
        const float dt = softplus_fast(to_f(a.dtr[(size_t)b * a.DI + c]) + a.dt_bias[c]);
        u = to_f(a.u[(size_t)b * a.DI + c]);
#pragma unroll
        for (int g = 0; g < 2; ++g) {
            float4& sg = s[g];
            const float* Bg = B + 4 * g;
            sg.x = ex2_ftz(dt * (A[g].x * LOG2E)) * sg.x + dt * Bg[0] * u;
            sg.y = ex2_ftz(dt * (A[g].y * LOG2E)) * sg.y + dt * Bg[1] * u;
            sg.z = ex2_ftz(dt * (A[g].z * LOG2E)) * sg.z + dt * Bg[2] * u;
            sg.w = ex2_ftz(dt * (A[g].w * LOG2E)) * sg.w + dt * Bg[3] * u;
        }
        const float p0 = ((s[0].x * C[0] + s[0].y * C[1]) + s[0].z * C[2]) + s[0].w * C[3];
        const float p1 = ((s[1].x * C[4] + s[1].y * C[5]) + s[1].z * C[6]) + s[1].w * C[7];
        acc = p0 + p1;
    }
    acc += __shfl_xor_sync(0xffffffffu, acc, 1);
    if (!on) return;
    *reinterpret_cast<float4*>(st) = s[0];
    *reinterpret_cast<float4*>(st + 4) = s[1];
    if (q == 0) {
        const float z = to_f(a.z[(size_t)b * a.ldz + c]);
        y[(size_t)b * a.DI + c] = to_bf((acc + a.D[c] * u) * silu_fast(z));
    }
}

// One-token state update with dt_proj fused in (decode): replaces the dt_proj GEMM + ssm_decode.
// Row b is entry b's only token; its slot's state is updated in place. Per channel c = h·DH + d:
//
//   dtr[b,c]   = bf16( sum_k dt_low[b,h,k] * W[h][d][k] )    (fp32 dot, then rounded to bf16)
//   dt         = softplus(dtr[b,c] + dt_bias[c])
//   state[c,n] = exp(dt * A[c,n]) * state[c,n] + dt * B[b,h,n] * u[b,c]
//   y[b,c]     = (sum_n state[c,n] * C[b,h,n] + D[c] * u[b,c]) * silu(z[b,c])
//
// dt_low, B and C are read from xdbl ([B, NH, XR]: dt_low at 0, B at R, C at R + N); the dt_proj
// weight W is bf16 [NH][DH][R] (row-major per head, the GEMM's layout); a.dtr is not read. The dot
// is rounded to bf16 before the bias because the unfused path (and prefill, whose scan reads the
// bf16 dtr buffer) stores dt_proj's output as bf16: decode and prefill see the same dt.
//
// For a few entries (the engine uses it for batches of at most 8; larger ones run the dt_proj GEMM
// and ssm_decode). Needs R % 8 == 0 and R <= 256, so that one 16-byte chunk per lane covers a row.
// Launch: grid (NH * ceil(DH / DEC_WARPS), ceil(B / DEC_EB)), block DEC_WARPS * 32. A warp owns one
// channel c and the block's DEC_EB entries. It first issues every load that does not depend on dt
// (its dt_proj row and each entry's dt_low as one 16-byte chunk per lane; A, D, bias; per entry u,
// z, B, C and the state), so that the kernel waits for about one memory round trip; then each
// entry's dot is a warp_sum, and half-warp j updates the 16 states (lane n owns state n) of
// entries j, j + 2, ... and sums the C products over its 16 lanes.
#define DEC_WARPS 8
#define DEC_EB 4

extern "C" __global__ void __launch_bounds__(DEC_WARPS * 32)
    ssm_decode_dt(ScanArgs a, const bf16* dt_proj, const int* entry_slot,
                  int B, float* ssm_state, bf16* y) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int blocks_per_head = (a.DH + DEC_WARPS - 1) / DEC_WARPS;
    const int h = blockIdx.x / blocks_per_head;
    const int d = (blockIdx.x % blocks_per_head) * DEC_WARPS + warp;
    pdl_trigger();
    if (d >= a.DH) {  // warp-uniform; no barriers below
        pdl_wait();
        return;
    }
    const int c = h * a.DH + d;
    const int b0 = blockIdx.y * DEC_EB;
    const int nb = min(DEC_EB, B - b0);
    const int XR = a.R + 2 * SCAN_N;
    const int r8 = a.R / 8;
    const int half = lane >> 4, n = lane & 15;
    const uint4 zero = make_uint4(0, 0, 0, 0);

    // Loads that do not depend on dt, all issued before any is used: first the constant weights
    // (before pdl_wait: they overlap the previous kernel's tail), then the step's inputs.
    const uint4 wv = lane < r8 ? __ldg(reinterpret_cast<const uint4*>(dt_proj + (size_t)c * a.R) + lane) : zero;
    const float A = a.A[(size_t)c * SCAN_N + n];
    const float D = a.D[c], bias = a.dt_bias[c];
    pdl_wait();
    uint4 xv[DEC_EB];
#pragma unroll
    for (int e = 0; e < DEC_EB; ++e)
        xv[e] = (e < nb && lane < r8)
                    ? reinterpret_cast<const uint4*>(a.xdbl + ((size_t)(b0 + e) * a.NH + h) * XR)[lane]
                    : zero;
    constexpr int PER_HALF = DEC_EB / 2;
    float st[PER_HALF], bv[PER_HALF], cv[PER_HALF], u[PER_HALF], z[PER_HALF];
    float* sp[PER_HALF];
#pragma unroll
    for (int j = 0; j < PER_HALF; ++j) {
        const int e = half + 2 * j, b = b0 + e;
        sp[j] = nullptr;
        st[j] = bv[j] = cv[j] = u[j] = z[j] = 0.f;
        if (e < nb) {
            const bf16* bc = a.xdbl + ((size_t)b * a.NH + h) * XR + a.R;
            sp[j] = ssm_state + ((size_t)entry_slot[b] * a.DI + c) * SCAN_N + n;
            st[j] = *sp[j];
            bv[j] = to_f(bc[n]);
            cv[j] = to_f(bc[SCAN_N + n]);
            u[j] = to_f(a.u[(size_t)b * a.DI + c]);
            z[j] = to_f(a.z[(size_t)b * a.ldz + c]);
        }
    }
    float dot[DEC_EB];
#pragma unroll
    for (int e = 0; e < DEC_EB; ++e) dot[e] = warp_sum(dot8_bf16(wv, xv[e]));
#pragma unroll
    for (int j = 0; j < PER_HALF; ++j) {
        const int e = half + 2 * j;
        const float dd = half ? dot[2 * j + 1] : dot[2 * j];
        float p = 0.f;
        if (e < nb) {
            // dt_proj's output is a bf16 tensor in the unfused path: round before the bias.
            const float dt = softplus(round_bf(dd) + bias);
            const float s = expf(dt * A) * st[j] + dt * bv[j] * u[j];
            *sp[j] = s;
            p = s * cv[j];
        }
        // Sum over the 16 lanes of this half-warp (xor offsets < 16 stay inside it).
#pragma unroll
        for (int o = 8; o > 0; o >>= 1) p += __shfl_xor_sync(0xffffffffu, p, o);
        if (e < nb && n == 0) y[(size_t)(b0 + e) * a.DI + c] = to_bf((p + D * u[j]) * silu(z[j]));
    }
}
