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
// This file is the prefill (scan_seq), which walks each entry's tokens in one pass from its slot's
// state and writes the final state back; the one-token decode kernels are in ssm_decode.cu, the
// shared definitions in ssm_common.cuh.
#include "ssm_common.cuh"

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
