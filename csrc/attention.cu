// RoPE-free causal attention of the shared block: KV-cache writes and flash-decoding for one-token
// steps. Prefill attention is csrc/flash_attn.cu.
//
// KV cache of one hybrid layer: K and V each bf16 [slots, NKV, ctx, HD]. qkv rows are
// [q (NA*HD) | k (NKV*HD) | v (NKV*HD)] with row stride ldqkv.
#include "common.cuh"

#define MAX_HD 512

// Appends each row's k and v to its sequence's cache at position entry_past[e] + (m - entry_start[e]).
// Each thread copies 8 consecutive elements (one 16-byte load and store for k and for v): needs
// HD % 8 == 0 (an 8-element chunk stays inside one head), q_width and ldqkv multiples of 8 and
// 16-byte aligned buffers (the host checks).
// Launch: grid (ceil(NKV*HD/8/256), M), block 256.
extern "C" __global__ void kv_append(const bf16* qkv, int ldqkv, int q_width,
                                     const int* tok_entry, const int* entry_start,
                                     const int* entry_past, const int* entry_slot,
                                     bf16* kc, bf16* vc, int NKV, int HD, int ctx) {
    pdl_enter();  // first: every access below may depend on the previous kernel
    const int i = (blockIdx.x * blockDim.x + threadIdx.x) * 8;
    const int m = blockIdx.y;
    const int kvw = NKV * HD;
    if (i >= kvw) return;
    const int e = tok_entry[m];
    const int pos = entry_past[e] + (m - entry_start[e]);
    if (pos >= ctx) return;  // the host checks the context limit; never write past the cache
    const int g = i / HD, d = i % HD;
    const size_t dst = (((size_t)entry_slot[e] * NKV + g) * ctx + pos) * HD + d;
    const bf16* src = qkv + (size_t)m * ldqkv + q_width + i;
    *reinterpret_cast<uint4*>(kc + dst) = *reinterpret_cast<const uint4*>(src);
    *reinterpret_cast<uint4*>(vc + dst) = *reinterpret_cast<const uint4*>(src + kvw);
}

// Flash-decoding, step 2, for head h of sequence b, by one block of T threads (T a multiple of
// 32, T >= HD / 4): out[d] = sum_s acc_s[d] e^(m_s - M) / sum_s l_s e^(m_s - M), M = max_s m_s,
// over the splits that saw keys (m_s = -inf: none). Warp 0 finds M and 1/L first; then thread t
// takes the 4-float column chunk j = t % (HD/4) of split group g = t / (HD/4) (G = T / (HD/4)
// groups) and sums splits g, g + G, ..., whose loads are independent of each other (one thread
// per column walking every split in a kernel of its own took 60 us under ncu at 32 splits,
// context 4000). The G group sums meet in `red` (T float4). Partials are read through L2
// (__ldcg): other blocks wrote them.
__device__ __forceinline__ void attn_combine_head(const float* acc_p, const float2* ml, bf16* o, int HD,
                                                  int n_splits, float4* red) {
    __shared__ float stats[2];
    if (threadIdx.x < 32) {
        float M = -INFINITY;
        for (int s = threadIdx.x; s < n_splits; s += 32) M = fmaxf(M, __ldcg(ml + s).x);
        M = warp_max(M);
        float L = 0.f;
        for (int s = threadIdx.x; s < n_splits; s += 32) {
            const float2 v = __ldcg(ml + s);
            if (v.x != -INFINITY) L += v.y * expf(v.x - M);
        }
        L = warp_sum(L);
        if (threadIdx.x == 0) {
            stats[0] = M;
            stats[1] = 1.f / L;
        }
    }
    __syncthreads();
    const int nc = HD / 4, groups = blockDim.x / nc;
    const int j = threadIdx.x % nc, grp = threadIdx.x / nc;
    const float M = stats[0];
    float4 a = make_float4(0.f, 0.f, 0.f, 0.f);
    if (grp < groups) {
        const float4* acc = reinterpret_cast<const float4*>(acc_p) + j;
#pragma unroll 8
        for (int s = grp; s < n_splits; s += groups) {
            const float ms = __ldcg(ml + s).x;
            const float4 v = __ldcg(acc + (size_t)s * nc);
            const float w = ms == -INFINITY ? 0.f : expf(ms - M);
            a.x += v.x * w;
            a.y += v.y * w;
            a.z += v.z * w;
            a.w += v.w * w;
        }
    }
    red[threadIdx.x] = a;
    __syncthreads();
    if (threadIdx.x < nc) {
        float4 t = red[j];
        for (int g = 1; g < groups; ++g) {
            const float4 v = red[g * nc + j];
            t.x += v.x;
            t.y += v.y;
            t.z += v.z;
            t.w += v.w;
        }
        const float inv = stats[1];
        o[4 * j] = to_bf(t.x * inv);
        o[4 * j + 1] = to_bf(t.y * inv);
        o[4 * j + 2] = to_bf(t.z * inv);
        o[4 * j + 3] = to_bf(t.w * inv);
    }
}

// Flash-decoding, step 1: one query per sequence (row b of qkv), split over the keys. Block
// (h, split, b) covers keys [split*split_len, min((split+1)*split_len, n_keys)) of head h, where
// n_keys = seq_len[b] (the cache already holds this step's key). Each warp takes DEC_KEYS keys at a
// time (warp w: keys k0 + DEC_KEYS*w + DEC_KEYS*DEC_WARPS*j + u), keeps a running max m, sum l and
// weighted value sum acc (online softmax), and the block merges its warps. Writes unnormalised acc
// [B, NA, n_splits, HD] and (m, l) [B, NA, n_splits, 2]; the last block of (h, b) to finish (it
// counts in count[b * NA + h], zero between launches) then runs step 2, attn_combine_head, into
// out[b * ldo + h * HD ..]: one kernel where a second one cost a launch and ~3.5 us at batch 1
// (ncu) and 21 us at batch 64. Every block reaches the count, splits without keys included.
// Lane j owns the 8-element chunks j and j + 32 of the head dimension (HD % 8 == 0, HD <= 512)
// and holds q's values there in registers (loaded as 16-byte chunks, like K and V: ldqkv % 8 == 0
// and 16-byte aligned buffers, which kv_append's launcher checks for the same qkv and cache). Per
// group of DEC_KEYS keys a lane issues all of their K and V loads before it uses any, so that a
// warp waits for one memory round trip per group, not two per key. With one key at a time (32
// dependent steps per warp in a 128-key split) kv_append and the attention cost 43 us per hybrid
// layer in the batch-1 decode graph on the H200, 7% of a step; with 4 keys, 16 us (BENCHMARKS.md,
// fifth session).
// Launch: grid (NA, n_splits, B), block 32 * DEC_WARPS: attn_decode 4 warps, attn_decode_w8 8
// (the host takes 8 for a few sequences: half the dependent steps per warp).
#define DEC_KEYS 4
template <int DEC_WARPS>
__device__ __forceinline__ void attn_decode_body(const bf16* qkv, int ldqkv, const bf16* kc, const bf16* vc,
                                                 const int* entry_slot, const int* seq_len, float* part_acc,
                                                 float* part_ml, unsigned* count, bf16* out, int ldo, int NA,
                                                 int NKV, int HD, int ctx, int split_len, float scale) {
    pdl_enter();  // first: every access below may depend on the previous kernel
    const int h = blockIdx.x, split = blockIdx.y, b = blockIdx.z, n_splits = gridDim.y;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = h / (NA / NKV);
    const int n_keys = seq_len[b];
    const int k0 = split * split_len, k1 = min(k0 + split_len, n_keys);
    __shared__ __align__(16) float w_acc[DEC_WARPS][MAX_HD];  // also the combine's float4 scratch
    __shared__ float w_m[DEC_WARPS], w_l[DEC_WARPS];
    const int nchunk = HD / 8;
    const size_t base = ((size_t)entry_slot[b] * NKV + g) * ctx * HD;
    const uint4 zero = make_uint4(0, 0, 0, 0);
    // This lane's chunks of q, straight from qkv into registers (16-byte loads, like K and V).
    float qr[2][8], acc[2][8];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int ch = lane + 32 * i;
        const uint4 raw =
            ch < nchunk ? *reinterpret_cast<const uint4*>(qkv + (size_t)b * ldqkv + h * HD + ch * 8) : zero;
#pragma unroll
        for (int x = 0; x < 8; ++x) {
            qr[i][x] = to_f(reinterpret_cast<const bf16*>(&raw)[x]);
            acc[i][x] = 0.f;
        }
    }
    float m = -INFINITY, l = 0.f;
    for (int p0 = k0 + DEC_KEYS * warp; p0 < k1; p0 += DEC_KEYS * DEC_WARPS) {
        uint4 kr[DEC_KEYS][2], vr[DEC_KEYS][2];
#pragma unroll
        for (int u = 0; u < DEC_KEYS; ++u)
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                const int ch = lane + 32 * i;
                const bool in = p0 + u < k1 && ch < nchunk;
                const size_t o = base + (size_t)(p0 + u) * HD + ch * 8;
                kr[u][i] = in ? *reinterpret_cast<const uint4*>(kc + o) : zero;
                vr[u][i] = in ? *reinterpret_cast<const uint4*>(vc + o) : zero;
            }
        float s[DEC_KEYS];
#pragma unroll
        for (int u = 0; u < DEC_KEYS; ++u) {
            float part = 0.f;
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                const bf16* k8 = reinterpret_cast<const bf16*>(&kr[u][i]);
#pragma unroll
                for (int x = 0; x < 8; ++x) part += qr[i][x] * to_f(k8[x]);
            }
            s[u] = warp_sum(part) * scale;
        }
        // Online softmax over the group's keys (key p0 is always in range, so m_new is finite).
        float m_new = m;
#pragma unroll
        for (int u = 0; u < DEC_KEYS; ++u)
            if (p0 + u < k1) m_new = fmaxf(m_new, s[u]);
        const float corr = expf(m - m_new);  // m = -inf on the first group: corr = 0
        float pw[DEC_KEYS];
        l *= corr;
#pragma unroll
        for (int u = 0; u < DEC_KEYS; ++u) {
            pw[u] = p0 + u < k1 ? expf(s[u] - m_new) : 0.f;
            l += pw[u];
        }
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
            for (int x = 0; x < 8; ++x) {
                float a = acc[i][x] * corr;
#pragma unroll
                for (int u = 0; u < DEC_KEYS; ++u)
                    a += pw[u] * to_f(reinterpret_cast<const bf16*>(&vr[u][i])[x]);
                acc[i][x] = a;
            }
        m = m_new;
    }
    // Merge the warps: each writes its (m, l, acc); then every thread combines one dimension.
    if (lane == 0) { w_m[warp] = m; w_l[warp] = l; }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int ch = lane + 32 * i;
        if (ch < nchunk)
#pragma unroll
            for (int x = 0; x < 8; ++x) w_acc[warp][ch * 8 + x] = acc[i][x];
    }
    __syncthreads();
    float M = -INFINITY;
    for (int w = 0; w < DEC_WARPS; ++w) M = fmaxf(M, w_m[w]);
    const size_t part = ((size_t)b * NA + h) * n_splits + split;
    float L = 0.f;
    for (int w = 0; w < DEC_WARPS; ++w) L += w_m[w] == -INFINITY ? 0.f : w_l[w] * expf(w_m[w] - M);
    for (int d = threadIdx.x; d < HD; d += blockDim.x) {
        float a = 0.f;
        for (int w = 0; w < DEC_WARPS; ++w) a += w_m[w] == -INFINITY ? 0.f : w_acc[w][d] * expf(w_m[w] - M);
        part_acc[part * HD + d] = a;
    }
    if (threadIdx.x == 0) { part_ml[part * 2] = M; part_ml[part * 2 + 1] = L; }
    // The last of the head's split blocks to finish combines them. Each thread's partial writes
    // are made visible device-wide before thread 0 counts the block in; the block that brings the
    // count to n_splits reads them all after a fence, then resets the count for the next launch
    // (which the stream orders after this one).
    __shared__ int last;
    __threadfence();
    __syncthreads();
    unsigned* cnt = count + (size_t)b * NA + h;
    if (threadIdx.x == 0) last = atomicAdd(cnt, 1u) == (unsigned)n_splits - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    const size_t p0 = ((size_t)b * NA + h) * n_splits;
    attn_combine_head(part_acc + p0 * HD, reinterpret_cast<const float2*>(part_ml) + p0,
                      out + (size_t)b * ldo + h * HD, HD, n_splits, reinterpret_cast<float4*>(&w_acc[0][0]));
    if (threadIdx.x == 0) *cnt = 0;
}

// The kernels: 4 warps per block (many sequences) and 8 (a few).
#define ATTN_DECODE_KERNEL(name, warps)                                                                     \
    extern "C" __global__ void __launch_bounds__(32 * warps)                                               \
        name(const bf16* qkv, int ldqkv, const bf16* kc, const bf16* vc, const int* entry_slot,             \
             const int* seq_len, float* part_acc, float* part_ml, unsigned* count, bf16* out, int ldo, int NA, \
             int NKV, int HD, int ctx, int split_len, float scale) {                                       \
        attn_decode_body<warps>(qkv, ldqkv, kc, vc, entry_slot, seq_len, part_acc, part_ml, count, out, ldo, NA, \
                                NKV, HD, ctx, split_len, scale);                                           \
    }
ATTN_DECODE_KERNEL(attn_decode, 4)
ATTN_DECODE_KERNEL(attn_decode_w8, 8)
