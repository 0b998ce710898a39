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
// Prefill is chunked over time so that every (chunk, channel) pair is one thread:
//   1. scan_chunk_local: each chunk scans from a zero state; it keeps its final state h_loc and
//      its total dt (the chunk's decay is exp(A * sum dt)).
//   2. scan_chunk_combine: per (entry, c, n), walks the entry's chunks in order and writes the
//      true initial state of each chunk, s_in[k] = decay(k-1) * s_in[k-1] + h_loc[k-1].
//   3. scan_chunk_output: each chunk rescans from its initial state and writes y; the entry's last
//      chunk writes the final state back to the slot.
// An entry with a single chunk skips 1 and 2: step 3 reads and writes the slot's state directly.
#include "common.cuh"

#define SCAN_N 16

// Chunk descriptors (one int array each): the entry, its first token row, its length, and flags.
#define CHUNK_SINGLE 1  // the entry has only this chunk
#define CHUNK_LAST 2    // the entry's last chunk

struct ScanArgs {
    const bf16* u; const bf16* dtr; const bf16* z; int ldz; const bf16* xdbl;
    const float* A; const float* D; const float* dt_bias;
    int DI, DH, NH, R;
};

template <bool OUT>
__device__ __forceinline__ void scan_steps(const ScanArgs& a, int c, int t0, int len, float* s,
                                           float& dtsum, bf16* __restrict__ y) {
    const int h = c / a.DH;
    const int XR = a.R + 2 * SCAN_N;
    float A[SCAN_N];
#pragma unroll
    for (int n = 0; n < SCAN_N; ++n) A[n] = a.A[(size_t)c * SCAN_N + n];
    const float D = a.D[c], bias = a.dt_bias[c];
    for (int t = t0; t < t0 + len; ++t) {
        const float dt = softplus(to_f(a.dtr[(size_t)t * a.DI + c]) + bias);
        const float u = to_f(a.u[(size_t)t * a.DI + c]);
        const bf16* bc = a.xdbl + ((size_t)t * a.NH + h) * XR + a.R;
        float acc = 0.f;
#pragma unroll
        for (int n = 0; n < SCAN_N; ++n) {
            s[n] = expf(dt * A[n]) * s[n] + dt * to_f(bc[n]) * u;
            if (OUT) acc += s[n] * to_f(bc[SCAN_N + n]);
        }
        if (OUT) {
            const float z = to_f(a.z[(size_t)t * a.ldz + c]);
            y[(size_t)t * a.DI + c] = to_bf((acc + D * u) * silu(z));
        } else {
            dtsum += dt;
        }
    }
}

// Step 1. Launch: grid (ceil(DI/128), n_chunks), block 128.
// h_loc: fp32 [n_chunks, DI, N]; dtsum: fp32 [n_chunks, DI].
extern "C" __global__ void scan_chunk_local(ScanArgs a, const int* __restrict__ chunk_t0,
                                            const int* __restrict__ chunk_len,
                                            const int* __restrict__ chunk_flags,
                                            float* __restrict__ h_loc, float* __restrict__ dtsum) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    const int k = blockIdx.y;
    if (c >= a.DI || (chunk_flags[k] & CHUNK_SINGLE)) return;
    float s[SCAN_N];
#pragma unroll
    for (int n = 0; n < SCAN_N; ++n) s[n] = 0.f;
    float ds = 0.f;
    scan_steps<false>(a, c, chunk_t0[k], chunk_len[k], s, ds, nullptr);
    float* out = h_loc + ((size_t)k * a.DI + c) * SCAN_N;
#pragma unroll
    for (int n = 0; n < SCAN_N; ++n) out[n] = s[n];
    dtsum[(size_t)k * a.DI + c] = ds;
}

// Step 2. Launch: grid (ceil(DI*N/256), n_entries), block 256. s_in: fp32 [n_chunks, DI, N].
extern "C" __global__ void scan_chunk_combine(const float* __restrict__ A, const int* __restrict__ entry_slot,
                                              const int* __restrict__ entry_chunk0,
                                              const int* __restrict__ entry_nchunks,
                                              const float* __restrict__ ssm_state,
                                              const float* __restrict__ h_loc, const float* __restrict__ dtsum,
                                              float* __restrict__ s_in, int DI) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;  // c * N + n
    const int e = blockIdx.y;
    const int nch = entry_nchunks[e];
    if (i >= DI * SCAN_N || nch < 2) return;
    const int c = i / SCAN_N;
    const float a = A[i];
    float s = ssm_state[(size_t)entry_slot[e] * DI * SCAN_N + i];
    for (int k = entry_chunk0[e]; k < entry_chunk0[e] + nch; ++k) {
        s_in[(size_t)k * DI * SCAN_N + i] = s;
        s = expf(a * dtsum[(size_t)k * DI + c]) * s + h_loc[(size_t)k * DI * SCAN_N + i];
    }
}

// Step 3. Launch: grid (ceil(DI/128), n_chunks), block 128. y: bf16 [M, DI].
extern "C" __global__ void scan_chunk_output(ScanArgs a, const int* __restrict__ chunk_entry,
                                             const int* __restrict__ chunk_t0,
                                             const int* __restrict__ chunk_len,
                                             const int* __restrict__ chunk_flags,
                                             const int* __restrict__ entry_slot,
                                             float* __restrict__ ssm_state, const float* __restrict__ s_in,
                                             bf16* __restrict__ y) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    const int k = blockIdx.y;
    if (c >= a.DI) return;
    const int flags = chunk_flags[k];
    float* slot_state = ssm_state + ((size_t)entry_slot[chunk_entry[k]] * a.DI + c) * SCAN_N;
    const float* init = (flags & CHUNK_SINGLE) ? slot_state : s_in + ((size_t)k * a.DI + c) * SCAN_N;
    float s[SCAN_N];
#pragma unroll
    for (int n = 0; n < SCAN_N; ++n) s[n] = init[n];
    float unused = 0.f;
    scan_steps<true>(a, c, chunk_t0[k], chunk_len[k], s, unused, y);
    if (flags & CHUNK_LAST) {
#pragma unroll
        for (int n = 0; n < SCAN_N; ++n) slot_state[n] = s[n];
    }
}

// One-token state update (decode): row b is entry b's only token, continuing from its slot's
// state, which is updated in place. The same math as above with T = 1.
// Launch: grid (ceil(DI/128), B), block 128.
extern "C" __global__ void ssm_decode(ScanArgs a, const int* __restrict__ entry_slot,
                                      float* __restrict__ ssm_state, bf16* __restrict__ y) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    const int b = blockIdx.y;
    if (c >= a.DI) return;
    float* st = ssm_state + ((size_t)entry_slot[b] * a.DI + c) * SCAN_N;
    float s[SCAN_N];
#pragma unroll
    for (int n = 0; n < SCAN_N; n += 4) {
        const float4 v = *reinterpret_cast<const float4*>(st + n);
        s[n] = v.x; s[n + 1] = v.y; s[n + 2] = v.z; s[n + 3] = v.w;
    }
    float unused = 0.f;
    scan_steps<true>(a, c, b, 1, s, unused, y);
#pragma unroll
    for (int n = 0; n < SCAN_N; n += 4)
        *reinterpret_cast<float4*>(st + n) = make_float4(s[n], s[n + 1], s[n + 2], s[n + 3]);
}
