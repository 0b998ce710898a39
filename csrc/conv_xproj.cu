// Decode at batch B (one token per entry): the conv update of conv1d_update and the x_proj GEMM
// in two kernels, for batches past the single-row paths (the engine can use them from 9 entries):
//   xc[b, c]      = bf16(silu(bias[c] + sum_k w[c, k] * win_k[b, c]))   (conv1d_update's math;
//                   the conv state is updated the same way)
//   part[j, b, r] = sum_{c in block j} xc[b, c] * Wx[h][r][c - h*DH]     (fp32, tensor cores)
//   xdbl[b, h, r] = bf16(sum over the blocks j of head h, in order, of part[j, b, r])
// Block j owns CX_CH = 64 channels of one head (DH % 64 == 0) and CX_EB = 64 entries: it loads
// its slice of x_proj (XR rows x 64 channels, before griddepcontrol.wait: constant weights) and
// its entries' conv inputs, computes their conv outputs into shared memory (and xc), then the
// partial x_proj product on mma.m16n8k16 (A = xc rows, B = the weight slice; fragments read
// straight from shared memory, rows padded to 72 bf16 so that a fragment load hits 32 distinct
// banks). The reduction over blocks is conv_xproj_reduce, in a fixed order (deterministic).
// Why: at batch 64 conv1d_update cost 5.6 us and the x_proj GEMM 7.6 us per layer in the
// replayed graph (BENCHMARKS.md) for 4 MB of weights and a few MB of activations.
// Status: off by default (ZAMBA_CONV_XPROJ=1). The first form passed its tests on the H200 but
// was slower: ncu 13.6 + 4.9 us at batch 64 (its weight slice loaded by a load-then-store loop,
// one round trip per piece, and the reduction's loads one at a time). The current form (cp.async
// for the slice, every conv load issued first, 16 reduction loads in flight) passes the host
// emulation (scripts/conv_xproj_emu.sh, Zamba-7B's sizes included) but has not run on a GPU yet.
// Launch: grid (DI / 64, ceil(B / 64)), block 256. Needs K <= 4, XR % 8 == 0, XR <= CX_XR_MAX,
// DH % 64 == 0, ldx % 8 == 0 and 16-byte aligned xs, conv_state, xc, w, bias and x_proj.
#include "common.cuh"
#include "conv_weights.cuh"
#include "flash_common.cuh"
#include "mma.cuh"

#define CX_CH 64
#define CX_EB 64
#define CX_XR_MAX 272
#define CX_LDS 72  // shared row stride in bf16 (64 + 8)

extern "C" __global__ void __launch_bounds__(256)
    conv_xproj(const bf16* xs, int ldx, const int* entry_slot, bf16* conv_state, const float* w,
               const float* bias, bf16* xc, const bf16* x_proj, float* part, int B, int DI, int DH, int XR,
               int K) {
    __shared__ __align__(16) bf16 xsm[CX_EB * CX_LDS];
    __shared__ __align__(16) bf16 wsm[CX_XR_MAX * CX_LDS];
    pdl_trigger();
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int c0 = blockIdx.x * CX_CH, h = c0 / DH, cl0 = c0 - h * DH;
    const int b0 = blockIdx.y * CX_EB, nb = min(CX_EB, B - b0);
    // The block's x_proj slice: row r, channels cl0 .. cl0 + 63 of head h, as 8 16-byte pieces,
    // all in flight at once (cp.async; a load-then-store loop waited for each in turn: 13.6 us).
    for (int i = tid; i < XR * 8; i += 256) {
        const int r = i >> 3, k = i & 7;
        fa_cp_async16(fa_smem_addr(wsm + r * CX_LDS + 8 * k), x_proj + ((size_t)h * XR + r) * DH + cl0 + 8 * k, true);
    }
    fa_cp_async_commit();
    pdl_wait();
    // The conv: item = (entry e, 8 channels q); entries past B give zero rows. Every load of
    // the thread's items (slot, then its state rows and input) is issued before any store.
    constexpr int IT = CX_EB * 8 / 256;
    int slot[IT];
#pragma unroll
    for (int it = 0; it < IT; ++it) {
        const int e = (tid + 256 * it) >> 3;
        slot[it] = e < nb ? entry_slot[b0 + e] : -1;
    }
    Bf16x8 win[IT][4];
#pragma unroll
    for (int it = 0; it < IT; ++it) {
        const int item = tid + 256 * it, e = item >> 3, c = c0 + 8 * (item & 7);
        const bf16* st = conv_state + (size_t)max(slot[it], 0) * (K - 1) * DI + c;
#pragma unroll
        for (int t = 0; t < 3; ++t) {
            const int j = t - (4 - K);  // state row j, oldest first
            win[it][t].u = slot[it] >= 0 && j >= 0 ? *reinterpret_cast<const uint4*>(st + (size_t)j * DI)
                                                   : make_uint4(0, 0, 0, 0);
        }
        win[it][3].u = slot[it] >= 0 ? *reinterpret_cast<const uint4*>(xs + (size_t)(b0 + e) * ldx + c)
                                     : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int it = 0; it < IT; ++it) {
        const int item = tid + 256 * it, e = item >> 3, c = c0 + 8 * (item & 7);
        Bf16x8 o;
        o.u = make_uint4(0, 0, 0, 0);
        if (slot[it] >= 0) {
            float wt[4][8], bs[8];
            conv_load_weights<4>(w, bias, c, K, wt, bs);
            conv_token8<4>(wt, bs, win[it], K, o);
            *reinterpret_cast<uint4*>(xc + (size_t)(b0 + e) * DI + c) = o.u;
            conv_state_shift8<4>(conv_state + (size_t)slot[it] * (K - 1) * DI + c, win[it], K, DI);
        }
        *reinterpret_cast<uint4*>(xsm + e * CX_LDS + 8 * (item & 7)) = o.u;
    }
    fa_cp_async_wait_all();
    __syncthreads();
    // part[j, b, r] for this block's entries: m16 tiles of entries x n8 tiles of rows, k = 64.
    const int mt_n = (nb + 15) >> 4, nt_n = XR >> 3;
    const int g = lane >> 2, t4 = lane & 3;
    for (int tile = warp; tile < mt_n * nt_n; tile += 8) {
        const int mt = tile / nt_n, nt = tile - mt * nt_n;
        float d[4] = {0.f, 0.f, 0.f, 0.f};
        const bf16* ar0 = xsm + (mt * 16 + g) * CX_LDS + 2 * t4;
        const bf16* ar1 = ar0 + 8 * CX_LDS;
        const bf16* br = wsm + (nt * 8 + g) * CX_LDS + 2 * t4;
#pragma unroll
        for (int ks = 0; ks < CX_CH / 16; ++ks) {
            const int k0 = ks * 16;
            const uint32_t a[4] = {*reinterpret_cast<const uint32_t*>(ar0 + k0),
                                   *reinterpret_cast<const uint32_t*>(ar1 + k0),
                                   *reinterpret_cast<const uint32_t*>(ar0 + k0 + 8),
                                   *reinterpret_cast<const uint32_t*>(ar1 + k0 + 8)};
            mma_bf16_16816(d, a, *reinterpret_cast<const uint32_t*>(br + k0),
                           *reinterpret_cast<const uint32_t*>(br + k0 + 8));
        }
        const int e0 = mt * 16 + g, r = nt * 8 + 2 * t4;
        float* p = part + ((size_t)blockIdx.x * B + b0) * XR + r;
        if (e0 < nb) *reinterpret_cast<float2*>(p + (size_t)e0 * XR) = make_float2(d[0], d[1]);
        if (e0 + 8 < nb) *reinterpret_cast<float2*>(p + (size_t)(e0 + 8) * XR) = make_float2(d[2], d[3]);
    }
}

// xdbl[b, h, r] = bf16(sum_{j < nbh} part[h * nbh + j, b, r]), nbh = DH / 64 blocks per head,
// summed in order of j. Launch: grid ceil(B * NH * XR / 256), block 256.
extern "C" __global__ void __launch_bounds__(256)
    conv_xproj_reduce(const float* part, bf16* xdbl, int B, int NH, int XR, int nbh) {
    pdl_enter();
    const int idx = blockIdx.x * 256 + threadIdx.x;
    if (idx >= B * NH * XR) return;
    const int b = idx / (NH * XR), rem = idx - b * NH * XR, h = rem / XR, r = rem - h * XR;
    const float* p = part + ((size_t)h * nbh * B + b) * XR + r;
    const size_t step = (size_t)B * XR;
    // 16 loads in flight at a time, then added in order (a plain loop waited on each in turn).
    float s = 0.f;
    for (int j0 = 0; j0 < nbh; j0 += 16) {
        float v[16];
#pragma unroll
        for (int j = 0; j < 16; ++j) v[j] = j0 + j < nbh ? p[(j0 + j) * step] : 0.f;
#pragma unroll
        for (int j = 0; j < 16; ++j) s += v[j];
    }
    xdbl[idx] = to_bf(s);
}
