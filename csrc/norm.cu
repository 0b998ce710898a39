// Embedding gather and RMSNorm.
#include "common.cuh"

// Embedding gather: e[m, :] = h[m, :] = table[ids[m], :].
// Launch: grid (M), block 256. Token ids were range-checked on the host; an id outside [0, V) is
// clamped to 0 so that a bad id can never read outside the table.
extern "C" __global__ void embed_gather(const int* __restrict__ ids, const bf16* __restrict__ table,
                                        bf16* __restrict__ e, bf16* __restrict__ h, int H, int V) {
    const int m = blockIdx.x;
    int id = ids[m];
    if (id < 0 || id >= V) id = 0;
    const bf16* src = table + (size_t)id * H;
    for (int i = threadIdx.x; i < H; i += blockDim.x) {
        bf16 v = src[i];
        e[(size_t)m * H + i] = v;
        h[(size_t)m * H + i] = v;
    }
}

// RMSNorm with HF's rounding, over a row that may be assembled from two sources:
//   x[i]  = i < D1 ? a[src, i] (+ add[src, i], rounded to bf16 like HF's bf16 residual add)
//                  : b[src, i - D1]                         (the concat(h, e) of the shared block)
//   r     = rsqrt(mean(x^2) + eps)                            (fp32)
//   out[row, i] = bf16( w[i] * bf16(x[i] * r) )
// with src = rows ? rows[row] : row (rows picks e.g. each sequence's last token for the logits).
// `add` and `b` may be null (then D2 must be 0 for b). Launch: grid (n_rows), block 256.
extern "C" __global__ void rmsnorm(const bf16* __restrict__ a, const bf16* __restrict__ add,
                                   const bf16* __restrict__ b, const int* __restrict__ rows,
                                   const bf16* __restrict__ w, bf16* __restrict__ out,
                                   int D1, int D2, float eps) {
    const int row = blockIdx.x;
    const int src = rows ? rows[row] : row;
    const int D = D1 + D2;
    const bf16* ar = a + (size_t)src * D1;
    const bf16* addr = add ? add + (size_t)src * D1 : nullptr;
    const bf16* br = b ? b + (size_t)src * D2 : nullptr;
    float ss = 0.f;
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        float x;
        if (i < D1) x = addr ? round_bf(to_f(ar[i]) + to_f(addr[i])) : to_f(ar[i]);
        else x = to_f(br[i - D1]);
        ss += x * x;
    }
    const float r = rsqrtf(block_sum(ss) / (float)D + eps);
    bf16* o = out + (size_t)row * D;
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        float x;
        if (i < D1) x = addr ? round_bf(to_f(ar[i]) + to_f(addr[i])) : to_f(ar[i]);
        else x = to_f(br[i - D1]);
        o[i] = to_bf(to_f(w[i]) * round_bf(x * r));
    }
}

// GELU-gated MLP activation: out[m, f] = bf16( gelu_erf(gu[m, f]) * gu[m, F + f] ), where each row
// of gu is [gate (F) | up (F)] from one fused GEMM. Launch: grid (ceil(M*F/256)), block 256.
extern "C" __global__ void gelu_mul(const bf16* __restrict__ gu, bf16* __restrict__ out, int M, int F) {
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)M * F) return;
    const size_t m = idx / F, f = idx % F;
    const float g = to_f(gu[m * 2 * F + f]);
    const float u = to_f(gu[m * 2 * F + F + f]);
    out[idx] = to_bf(gelu_erf(g) * u);
}
