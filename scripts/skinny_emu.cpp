// Host emulation of csrc/skinny.cu's skinny_gemm (scripts/cuda_emu.h), for checking its pipeline,
// index math and split-K reduction without a GPU: ldmatrix and mma.m16n8k16 are emulated per warp
// (a warp exchange), the TMA row copies as copies that complete on an emulated mbarrier (arrivals,
// expected bytes, phase), and a wait for a phase whose bytes never come aborts after 2 s instead
// of hanging. Every copy must read inside X's first M rows or W's tile rows and write inside the
// shared memory; results are compared with a double-precision reference, two launches must give
// the same bits, and the counters must be back at zero. Built and run by scripts/skinny_emu.sh.
#include <random>

#define SKINNY_HOST_EMU
#include "cuda_emu.h"

#include "skinny_emu_src.cu"

struct Case {
    int m, n, k, sms;
    bool f32, acc;
};

static int run(const Case& cs, std::mt19937& rng) {
    const int M = cs.m, N = cs.n, K = cs.k, ldx = K + 8, ldw = K + 16, ldy = N + 3;
    const int tiles = N / SK_BN, chunks = K / SK_BK;
    const int S = std::min(std::max(cs.sms / tiles, 1), 8) < chunks ? std::min(std::max(cs.sms / tiles, 1), 8) : chunks;
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    // X has 64 rows allocated (rows >= M hold NaN: the kernel must never read them), padding too.
    std::vector<bf16> x((size_t)64 * ldx, __float2bfloat16_rn(std::nanf(""))), W((size_t)N * ldw, __float2bfloat16_rn(std::nanf("")));
    for (int m = 0; m < M; ++m)
        for (int k = 0; k < K; ++k) x[(size_t)m * ldx + k] = __float2bfloat16_rn(u(rng));
    for (int n = 0; n < N; ++n)
        for (int k = 0; k < K; ++k) W[(size_t)n * ldw + k] = __float2bfloat16_rn(0.05f * u(rng));
    std::vector<float> y0((size_t)M * ldy);
    for (auto& v : y0) v = u(rng);
    std::vector<double> want((size_t)M * N);
    for (int m = 0; m < M; ++m)
        for (int n = 0; n < N; ++n) {
            double s = cs.acc ? y0[(size_t)m * ldy + n] : 0.0;
            for (int k = 0; k < K; ++k)
                s += (double)__bfloat162float(x[(size_t)m * ldx + k]) * __bfloat162float(W[(size_t)n * ldw + k]);
            want[(size_t)m * N + n] = s;
        }
    std::vector<float> ws((size_t)cs.sms * SK_BM * SK_BN, std::nanf(""));
    std::vector<unsigned> counters(tiles, 0);
    g_x_lo = reinterpret_cast<const char*>(x.data());
    g_x_hi = reinterpret_cast<const char*>(x.data() + (size_t)(M - 1) * ldx + K);
    g_w_lo = reinterpret_cast<const char*>(W.data());
    g_w_hi = reinterpret_cast<const char*>(W.data() + (size_t)(N - 1) * ldw + K);
    const size_t smem = SK_STAGES * (SK_BN + SK_BM) * SK_LD * 2 + 64;
    std::vector<std::vector<float>> outs;
    for (int rep = 0; rep < 2; ++rep) {
        std::vector<float> yf = y0;
        std::vector<bf16> yb((size_t)M * ldy, __float2bfloat16_rn(std::nanf("")));
        g_wx.clear();
        for (int w = 0; w < SK_THREADS / 32; ++w) g_wx.push_back(std::make_unique<WarpX>());
        emu_launch(tiles, S, SK_THREADS, smem, [&] {
            if (threadIdx.x == 0) {
                g_smem_lo = reinterpret_cast<const char*>(g_dyn_smem);
                g_smem_hi = g_smem_lo + smem;
            }
            __syncthreads();
            skinny_gemm(x.data(), ldx, W.data(), ldw, cs.f32 ? (void*)yf.data() : (void*)yb.data(), ldy, M, K,
                        cs.f32, cs.acc, ws.data(), counters.data());
        });
        for (unsigned c : counters)
            if (c != 0) {
                std::fprintf(stderr, "a counter was left at %u\n", c);
                return 1;
            }
        std::vector<float> got((size_t)M * N);
        for (int m = 0; m < M; ++m)
            for (int n = 0; n < N; ++n)
                got[(size_t)m * N + n] = cs.f32 ? yf[(size_t)m * ldy + n] : __bfloat162float(yb[(size_t)m * ldy + n]);
        outs.push_back(got);
    }
    double worst = 0;
    for (size_t i = 0; i < want.size(); ++i) {
        const double err = std::fabs(outs[0][i] - want[i]), tol = cs.f32 ? 1e-4 + 1e-5 * std::fabs(want[i])
                                                                               : 1e-3 + 8e-3 * std::fabs(want[i]);
        if (!(err <= tol)) {
            std::fprintf(stderr, "M %d N %d K %d: element %zu is %g, want %g\n", M, N, K, i, outs[0][i], want[i]);
            return 1;
        }
        worst = std::max(worst, err);
    }
    if (std::memcmp(outs[0].data(), outs[1].data(), outs[0].size() * 4) != 0) {
        std::fprintf(stderr, "M %d N %d K %d: two launches differ\n", M, N, K);
        return 1;
    }
    std::printf("ok  M %2d N %4d K %4d  %d x %d blocks (%s%s)  max abs err %.2e\n", M, N, K, tiles, S,
                cs.f32 ? "fp32" : "bf16", cs.acc ? ", added onto Y" : "", worst);
    return 0;
}

int main() {
    std::mt19937 rng(5);
    // (M, N, K, SMs, fp32 Y, added onto Y): K split evenly, unevenly (10 chunks over 8 blocks), not
    // at all (more tiles than SMs, or one chunk); 1, 5, 9, 17, 33, 37 and 64 rows; fewer chunks
    // than ring stages, and many more.
    const Case cases[] = {
        {64, 256, 1280, 16, true, true},  {37, 384, 512, 132, false, false}, {9, 128, 128, 132, false, false},
        {20, 256, 384, 2, false, false},  {17, 256, 2048, 8, true, false},   {64, 384, 256, 132, true, true},
        {1, 256, 1024, 132, false, false}, {5, 128, 768, 132, true, true},
        // Many chunks per block, so that each ring stage is reused (its mbarrier's parity flips):
        // 16 chunks in one block, and 12 in each of two.
        {64, 128, 2048, 1, true, true},    {33, 256, 3072, 4, false, false},
    };
    int bad = 0;
    for (const Case& c : cases) bad |= run(c, rng);
    return bad;
}
