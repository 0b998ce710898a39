// Host emulation of csrc/gemv.cu's gemv_pipe (scripts/cuda_emu.h), for checking its index math
// without a GPU. Built and run by scripts/gemv_pipe_emu.sh, which rewrites the dynamic shared array
// declarations; compares with a double-precision reference, for many shapes and grid sizes.
#include <random>

#include "cuda_emu.h"

// Bounds of the weight allocation: every streamed load must fall inside a row's first K elements.
static const char* g_w_lo;
static const char* g_w_hi;
static long long g_loads;
static std::function<bool(const void*)> g_w_in_row;

static void check_weight_load(const void* p, size_t bytes) {
    const char* c = static_cast<const char*>(p);
    if (c < g_w_lo || c + bytes > g_w_hi || !g_w_in_row(p)) {
        std::fprintf(stderr, "weight load outside the matrix at byte %lld\n", (long long)(c - g_w_lo));
        std::abort();
    }
    __atomic_add_fetch(&g_loads, 1, __ATOMIC_RELAXED);
}

#include "gemv_pipe_emu_src.cu"

struct Case {
    int n, k, batch, ldw, grid;
    bool f32, acc;
};

static int run(const Case& cs, std::mt19937& rng) {
    const int N = cs.n, K = cs.k, B = cs.batch, ldw = cs.ldw, G = cs.grid;
    const long long stride_w = (long long)N * ldw + 8 * (B > 1);  // a gap between members
    const long long stride_x = K + 8 * (B > 1), stride_y = N + 3 * (B > 1);
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    std::vector<bf16> W(stride_w * B), x(stride_x * B);
    for (auto& v : W) v = __float2bfloat16_rn(std::nanf(""));  // padding and gaps poison the sums
    for (auto& v : x) v = __float2bfloat16_rn(std::nanf(""));
    for (int b = 0; b < B; ++b)
        for (int n = 0; n < N; ++n)
            for (int k = 0; k < K; ++k) W[b * stride_w + (long long)n * ldw + k] = __float2bfloat16_rn(0.05f * u(rng));
    for (int b = 0; b < B; ++b)
        for (int k = 0; k < K; ++k) x[b * stride_x + k] = __float2bfloat16_rn(u(rng));
    std::vector<float> yf(stride_y * B, std::nanf(""));
    std::vector<bf16> yb(stride_y * B, __float2bfloat16_rn(std::nanf("")));
    std::vector<double> y0(stride_y * B, 0.0);
    for (int b = 0; b < B; ++b)
        for (int n = 0; n < N; ++n) {
            const long long o = b * stride_y + n;
            const float v = cs.acc ? u(rng) : 0.f;
            yf[o] = v;
            yb[o] = __float2bfloat16_rn(v);
            y0[o] = cs.f32 ? v : __bfloat162float(yb[o]);
        }
    g_w_lo = reinterpret_cast<const char*>(W.data());
    g_w_hi = reinterpret_cast<const char*>(W.data() + W.size());
    g_w_in_row = [&](const void* p) {
        const long long e = reinterpret_cast<const bf16*>(p) - W.data();
        const long long b = e / stride_w, rem = e % stride_w;
        return b < B && rem < (long long)N * ldw && rem % ldw + 8 <= K;
    };
    g_loads = 0;
    // The host side of kernels::gemv_pipe: rows_cap and the dynamic shared memory layout.
    const long long R = (long long)B * N;
    const int rows_cap = (int)((R + G - 1) / G);
    const int span = std::min<long long>(B, (rows_cap + N - 1) / N + 1);
    const size_t smem = (size_t)(rows_cap + 3) / 4 * 16 + (size_t)span * K * 2;
    g_ldcs_hook = check_weight_load;
    emu_launch(G, 1, 32 * PIPE_WARPS, smem, [&] {
        gemv_pipe(x.data(), 0, stride_x, W.data(), ldw, stride_w, cs.f32 ? (void*)yf.data() : (void*)yb.data(), 0,
                  stride_y, 1, N, K, cs.f32, cs.acc, B, rows_cap);
    });
    int bad = 0;
    double worst = 0;
    for (int b = 0; b < B; ++b)
        for (int n = 0; n < N; ++n) {
            double ref = y0[b * stride_y + n];
            for (int k = 0; k < K; ++k)
                ref += (double)__bfloat162float(W[b * stride_w + (long long)n * ldw + k]) *
                       __bfloat162float(x[b * stride_x + k]);
            const long long o = b * stride_y + n;
            const double got = cs.f32 ? yf[o] : __bfloat162float(yb[o]);
            const double err = std::fabs(got - ref), tol = cs.f32 ? 1e-4 + 1e-4 * std::fabs(ref)
                                                                 : 1e-3 + std::fabs(ref) / 128.0;
            worst = std::max(worst, err);
            if (!(err <= tol) && bad++ < 5) std::fprintf(stderr, "  row %d/%d: got %g want %g\n", b, n, got, ref);
        }
    // Gaps between the members of y must stay untouched.
    for (int b = 0; b < B; ++b)
        for (long long o = b * stride_y + N; o < (b + 1) * stride_y; ++o)
            if (cs.f32 ? !std::isnan(yf[o]) : !std::isnan(__bfloat162float(yb[o]))) bad++;
    // Each 16-byte chunk of the matrix streamed exactly once (with the in-row check above).
    const bool loads_ok = g_loads == R * (K / 8);
    std::printf("%s N %d K %d batch %d ldw %d grid %d %s%s: max err %.3g, loads %lld/%lld\n",
                bad || !loads_ok ? "FAIL" : "ok  ", N, K, B, ldw, G, cs.f32 ? "f32" : "bf16", cs.acc ? " acc" : "",
                worst, g_loads, R * (K / 8));
    return bad || !loads_ok;
}

int main(int argc, char** argv) {
    std::setvbuf(stdout, nullptr, _IOLBF, 0);
    std::mt19937 rng(1);
    std::vector<Case> cases = {
        {1000, 3712, 1, 3712, 132, false, false},   // N divisible by nothing
        {1000, 232, 1, 232, 132, true, true},       // K = 232, 29 chunks per row
        {264, 3712, 2, 3712, 132, false, false},    // x_proj, 2 heads
        {3712, 232, 2, 232, 132, false, false},     // dt_proj, 2 heads
        {3712, 3712, 1, 3712, 132, true, true},     // o_proj onto the residual
        {3712, 7424, 1, 7424, 132, true, true},     // out_proj onto the residual
        {333, 1000, 1, 1024, 7, false, true},       // ldw > K, bf16 accumulate
        {5, 3712, 1, 3712, 132, false, false},      // fewer rows than blocks
        {3, 14848, 1, 14848, 1, true, false},       // rows shared by many warps
        {1, 8, 1, 8, 1, false, false},              // one chunk in all
        {37, 8, 3, 16, 2, true, true},              // one chunk per row, batch 3
        {100, 40, 3, 40, 1, false, false},          // many rows per warp, members in one block
        {7, 1000, 1, 1000, 3, true, false},
        {50, 512, 1, 512, 200, false, false},
    };
    if (argc > 1 && std::strcmp(argv[1], "big") == 0) {
        cases.push_back({14848, 3712, 1, 3712, 132, false, false});  // in_proj
        cases.push_back({3712, 14848, 1, 14848, 132, true, true});  // down
        cases.push_back({32000, 3712, 1, 3712, 132, false, false});  // lm_head
    }
    int fails = 0;
    for (const auto& c : cases) fails += run(c, rng);
    std::printf("%zu cases, %d failed\n", cases.size(), fails);
    return fails != 0;
}
