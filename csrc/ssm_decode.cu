// The one-token (decode) forms of the selective scan (scan.cu has the math, the layouts and the
// prefill): each entry of the batch has one token and continues from its slot's state, which is
// updated in place. ssm_decode reads dtr (dt_proj's output) like the prefill; ssm_decode_dt
// computes dtr itself from xdbl and the dt_proj weight (what the engine runs for batches of at
// most 8, so that they need no dt_proj GEMM).
#include "ssm_common.cuh"

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
        acc = ssm_update8(s, A, B, C, dt, u);
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
