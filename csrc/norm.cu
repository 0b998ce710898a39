// Embedding gather and RMSNorm.
#include "common.cuh"

// Embedding gather: e[m, :] = table[ids[m], :] (bf16) and the residual stream h[m, :] = the same
// values in fp32.
// Launch: grid (M), block 256. Token ids were range-checked on the host; an id outside [0, V) is
// clamped to 0 so that a bad id can never read outside the table.
extern "C" __global__ void embed_gather(const int* ids, const bf16* table,
                                        bf16* e, float* h, int H, int V) {
    pdl_enter();  // first: every access below may depend on the previous kernel
    const int m = blockIdx.x;
    int id = ids[m];
    if (id < 0 || id >= V) id = 0;
    const bf16* src = table + (size_t)id * H;
    for (int i = threadIdx.x; i < H; i += blockDim.x) {
        bf16 v = src[i];
        e[(size_t)m * H + i] = v;
        h[(size_t)m * H + i] = to_f(v);
    }
}

// RMSNorm with HF's rounding, over a row that may be assembled from two sources:
//   x[i]  = i < D1 ? a[src, i] (+ add[src, i])                (a is fp32 when a_f32, else bf16)
//                  : b[src, i - D1]                           (the concat(h, e) of the shared block)
//   r     = rsqrt(mean(x^2) + eps)                            (fp32)
//   out[row, i] = bf16( w[i] * bf16(x[i] * r) )
// with src = rows ? rows[row] : row (rows picks e.g. each sequence's last token for the logits).
// With a bf16 `a`, a + add is rounded to bf16 first, like HF's bf16 residual add; with the
// engine's fp32 residual stream it stays fp32. `add`, `b` and `rows` may be null.
// Launch: grid (n_rows); rmsnorm (8 held) with block 1024 for up to 64 rows of 2048 or more,
// rmsnorm_h16 (16 held) with block 256 or 512 for many rows.
__device__ __forceinline__ float norm_input(const void* a, int a_f32, const bf16* add, const bf16* b,
                                            size_t src, int D1, int D2, int i) {
    if (i >= D1) return to_f(b[src * D2 + (i - D1)]);
    const size_t k = src * D1 + i;
    if (a_f32) {
        float x = static_cast<const float*>(a)[k];
        return add ? x + to_f(add[k]) : x;
    }
    float x = to_f(static_cast<const bf16*>(a)[k]);
    return add ? round_bf(x + to_f(add[k])) : x;
}

// A row of up to HELD * blockDim.x values is read once and held in registers (with its weights),
// so the kernel waits for one round trip, not two; longer rows fall back to reading twice. The
// held path issues all of a thread's loads before it uses any (predicated loads in one basic
// block), so that they are in flight together: on the H200 a form that summed each value as it
// arrived waited for its loads one after another (38.5 µs for 2048 rows of 3712 and 5.5 µs for
// one row, against 25.0 and 4.1 µs now).
template <bool A_F32, int HELD>
__device__ __forceinline__ void rmsnorm_row(const void* a, const bf16* add,
                                            const bf16* b, const int* rows,
                                            const bf16* w, bf16* out,
                                            int D1, int D2, float eps) {
    const int row = blockIdx.x;
    const size_t src = rows ? rows[row] : row;
    const int D = D1 + D2;
    bf16* o = out + (size_t)row * D;
    float ss = 0.f;
    if (D <= HELD * (int)blockDim.x) {
        const float* af = static_cast<const float*>(a) + src * D1;
        const bf16* ab = static_cast<const bf16*>(a) + src * D1;
        const bf16* addr = add + src * D1;
        const bf16* br = b + src * D2 - D1;
        float xv[HELD], wv[HELD];
        bf16 av[HELD], bv[HELD], dv[HELD], wr[HELD];
#pragma unroll
        for (int j = 0; j < HELD; ++j) {
            const int i = threadIdx.x + j * blockDim.x;
            const bool in_a = i < D1, in_b = !in_a && i < D;
            xv[j] = 0.f;
            av[j] = bv[j] = dv[j] = wr[j] = bf16();
            if (A_F32 && in_a) xv[j] = af[i];
            if (!A_F32 && in_a) av[j] = ab[i];
            if (add && in_a) dv[j] = addr[i];
            if (in_b) bv[j] = br[i];
            if (i < D) wr[j] = w[i];
        }
#pragma unroll
        for (int j = 0; j < HELD; ++j) {
            const int i = threadIdx.x + j * blockDim.x;
            float x = A_F32 ? xv[j] : to_f(av[j]);
            if (add) x = A_F32 ? x + to_f(dv[j]) : round_bf(x + to_f(dv[j]));
            if (i >= D1) x = to_f(bv[j]);
            xv[j] = x;
            wv[j] = to_f(wr[j]);
            ss += x * x;
        }
        const float r = rsqrtf(block_sum(ss) / (float)D + eps);
#pragma unroll
        for (int j = 0; j < HELD; ++j) {
            const int i = threadIdx.x + j * blockDim.x;
            if (i < D) o[i] = to_bf(wv[j] * round_bf(xv[j] * r));
        }
        return;
    }
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        const float x = norm_input(a, A_F32, add, b, src, D1, D2, i);
        ss += x * x;
    }
    const float r = rsqrtf(block_sum(ss) / (float)D + eps);
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        const float x = norm_input(a, A_F32, add, b, src, D1, D2, i);
        o[i] = to_bf(to_f(w[i]) * round_bf(x * r));
    }
}

// 4 consecutive bf16 values as floats.
__device__ __forceinline__ float4 bf16x4_to_f32(uint2 raw) {
    const float2 lo = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.x));
    const float2 hi = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.y));
    return make_float4(lo.x, lo.y, hi.x, hi.y);
}

// rmsnorm_row in 4-value chunks, for rows that fit the block at 4·HELD4 values per thread and
// a layout whose chunks are aligned (D1 % 4 == 0, D2 % 4 == 0, fp32 a 16-byte aligned, the bf16
// buffers 8-byte aligned; the host checks): one 16-byte (fp32) or 8-byte (bf16) load per chunk
// and source, all issued before any is used. The scalar form held 16 values in separate 4- and
// 2-byte loads and 79 registers, so a prefill of 2048 rows of 3712 ran 3 blocks per SM and
// moved its 46 MB at 1.8 TB/s (24.9 us; 14.3 us in chunks). Same arithmetic per value; the sum of
// squares is added in another order.
template <bool A_F32, int HELD4>
__device__ __forceinline__ void rmsnorm_row_v4(const void* a, const bf16* add, const bf16* b, const int* rows,
                                               const bf16* w, bf16* out, int D1, int D2, float eps) {
    const int row = blockIdx.x;
    const size_t src = rows ? rows[row] : row;
    const int D = D1 + D2;
    float4 af[HELD4];
    uint2 ab[HELD4], dv[HELD4], bv[HELD4], wr[HELD4];
    const uint2 z2 = make_uint2(0, 0);
#pragma unroll
    for (int j = 0; j < HELD4; ++j) {
        const int i = 4 * (threadIdx.x + j * blockDim.x);
        const bool in_a = i < D1, in_b = !in_a && i < D;
        af[j] = make_float4(0.f, 0.f, 0.f, 0.f);
        ab[j] = dv[j] = bv[j] = wr[j] = z2;
        if (A_F32 && in_a) af[j] = *reinterpret_cast<const float4*>(static_cast<const float*>(a) + src * D1 + i);
        if (!A_F32 && in_a) ab[j] = *reinterpret_cast<const uint2*>(static_cast<const bf16*>(a) + src * D1 + i);
        if (add && in_a) dv[j] = *reinterpret_cast<const uint2*>(add + src * D1 + i);
        if (in_b) bv[j] = *reinterpret_cast<const uint2*>(b + src * D2 + (i - D1));
        if (i < D) wr[j] = *reinterpret_cast<const uint2*>(w + i);
    }
    float ss = 0.f;
#pragma unroll
    for (int j = 0; j < HELD4; ++j) {
        const int i = 4 * (threadIdx.x + j * blockDim.x);
        float4 x = A_F32 ? af[j] : bf16x4_to_f32(ab[j]);
        if (add) {
            const float4 d = bf16x4_to_f32(dv[j]);
            if (A_F32) {
                x.x += d.x; x.y += d.y; x.z += d.z; x.w += d.w;
            } else {
                x.x = round_bf(x.x + d.x); x.y = round_bf(x.y + d.y);
                x.z = round_bf(x.z + d.z); x.w = round_bf(x.w + d.w);
            }
        }
        if (i >= D1) x = bf16x4_to_f32(bv[j]);  // the concat's second part, or 0 past D
        af[j] = x;
        ss += x.x * x.x + x.y * x.y + x.z * x.z + x.w * x.w;
    }
    const float r = rsqrtf(block_sum(ss) / (float)D + eps);
    bf16* o = out + (size_t)row * D;
#pragma unroll
    for (int j = 0; j < HELD4; ++j) {
        const int i = 4 * (threadIdx.x + j * blockDim.x);
        if (i < D) {
            const float4 wf = bf16x4_to_f32(wr[j]);
            const float4 x = af[j];
            __nv_bfloat162 lo = __floats2bfloat162_rn(wf.x * round_bf(x.x * r), wf.y * round_bf(x.y * r));
            __nv_bfloat162 hi = __floats2bfloat162_rn(wf.z * round_bf(x.z * r), wf.w * round_bf(x.w * r));
            uint2 v;
            v.x = *reinterpret_cast<uint32_t*>(&lo);
            v.y = *reinterpret_cast<uint32_t*>(&hi);
            *reinterpret_cast<uint2*>(o + i) = v;
        }
    }
}

// The kernels' shared body: PDL entry, then the row with the input type known at compile time,
// HELD values per thread, as single values or (CHUNKS) in 4-value chunks (rmsnorm_row_v4). The
// chunked forms are kernels of their own so that their register count is not the scalar path's;
// the host picks them where the layout allows (D1 % 4 == 0, D2 % 4 == 0, fp32 a 16-byte aligned,
// the bf16 buffers 8-byte aligned, the row within HELD values per thread).
template <int HELD, bool CHUNKS>
__device__ __forceinline__ void rmsnorm_kernel(const void* a, int a_f32, const bf16* add, const bf16* b,
                                               const int* rows, const bf16* w, bf16* out, int D1, int D2,
                                               float eps) {
    pdl_enter();  // first: every access below may depend on the previous kernel
    if (CHUNKS && a_f32)
        rmsnorm_row_v4<true, HELD / 4>(a, add, b, rows, w, out, D1, D2, eps);
    else if (CHUNKS)
        rmsnorm_row_v4<false, HELD / 4>(a, add, b, rows, w, out, D1, D2, eps);
    else if (a_f32)
        rmsnorm_row<true, HELD>(a, add, b, rows, w, out, D1, D2, eps);
    else
        rmsnorm_row<false, HELD>(a, add, b, rows, w, out, D1, D2, eps);
}

// 8 values held per thread (the decode launch: 1024 threads for a few long rows).
extern "C" __global__ void rmsnorm(const void* a, int a_f32, const bf16* add, const bf16* b, const int* rows,
                                   const bf16* w, bf16* out, int D1, int D2, float eps) {
    rmsnorm_kernel<8, false>(a, a_f32, add, b, rows, w, out, D1, D2, eps);
}

// 16 values held per thread (the prefill launch: 256 or 512 threads per row, many rows).
extern "C" __global__ void rmsnorm_h16(const void* a, int a_f32, const bf16* add, const bf16* b, const int* rows,
                                       const bf16* w, bf16* out, int D1, int D2, float eps) {
    rmsnorm_kernel<16, false>(a, a_f32, add, b, rows, w, out, D1, D2, eps);
}

// rmsnorm and rmsnorm_h16 in 4-value chunks (the same launches).
extern "C" __global__ void rmsnorm_v4(const void* a, int a_f32, const bf16* add, const bf16* b, const int* rows,
                                      const bf16* w, bf16* out, int D1, int D2, float eps) {
    rmsnorm_kernel<8, true>(a, a_f32, add, b, rows, w, out, D1, D2, eps);
}
extern "C" __global__ void rmsnorm_h16_v4(const void* a, int a_f32, const bf16* add, const bf16* b,
                                          const int* rows, const bf16* w, bf16* out, int D1, int D2,
                                          float eps) {
    rmsnorm_kernel<16, true>(a, a_f32, add, b, rows, w, out, D1, D2, eps);
}

// GELU-gated MLP activation: out[m, f] = bf16( gelu_erf(gu[m, f]) * gu[m, F + f] ), where each row
// of gu is [gate (F) | up (F)] from one fused GEMM. Each thread computes 8 consecutive f of one row
// (16-byte loads and stores: needs F % 8 == 0 and 16-byte aligned buffers; the host checks).
// Launch: grid (ceil(F/8/256), M), block 256.
extern "C" __global__ void gelu_mul(const bf16* gu, bf16* out, int F) {
    pdl_enter();  // first: every access below may depend on the previous kernel
    const int f = (blockIdx.x * blockDim.x + threadIdx.x) * 8;
    const size_t m = blockIdx.y;
    if (f >= F) return;
    Bf16x8 g, u, o;
    g.u = *reinterpret_cast<const uint4*>(gu + m * 2 * F + f);
    u.u = *reinterpret_cast<const uint4*>(gu + m * 2 * F + F + f);
#pragma unroll
    for (int j = 0; j < 8; ++j) o.h[j] = to_bf(gelu_erf(to_f(g.h[j])) * to_f(u.h[j]));
    *reinterpret_cast<uint4*>(out + m * F + f) = o.u;
}
