// Host emulation of csrc/norm.cu's rmsnorm_rows against rmsnorm with 256 threads per row (the
// launch it replaces), which it must match bit for bit, and against a double-precision reference.
// Every CUDA thread of a block is an OS thread, __syncthreads a block barrier, __shfl_xor_sync a
// warp barrier around an exchange array; blocks run one after another (so `static` stands in for
// __shared__). Built and run by scripts/norm_emu.sh with AddressSanitizer; every buffer has its
// exact size and the output starts as NaN, so a read outside a buffer or a missed write shows.
#include <barrier>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include <cuda_bf16.h>
#include <vector_functions.h>

#undef __global__
#undef __device__
#undef __forceinline__
#undef __launch_bounds__
#undef __shared__
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

struct Dim {
    unsigned x = 0, y = 0, z = 0;
};
thread_local Dim threadIdx, blockIdx;
Dim blockDim, gridDim;

struct WarpEmu {
    std::barrier<> bar{32};
    float vals[32];
};
static std::vector<WarpEmu*> g_warps;
static std::barrier<>* g_block_bar;

float __shfl_xor_sync(unsigned, float v, int o) {
    WarpEmu* w = g_warps[threadIdx.x / 32];
    const int lane = threadIdx.x % 32;
    w->vals[lane] = v;
    w->bar.arrive_and_wait();
    const float r = w->vals[lane ^ o];
    w->bar.arrive_and_wait();
    return r;
}
void __syncthreads() { g_block_bar->arrive_and_wait(); }
float rsqrtf(float x);

#include "norm.cu"

// rsqrtf's argument, mean(x^2) + eps, as every thread of each row saw it, per kernel: the two
// kernels must agree on it exactly (a different summation order shows here long before it flips
// an output), and so must the threads of a row.
static int g_kernel;  // 0: rmsnorm_rows, 1: rmsnorm
static std::vector<float> g_ms[2];
static std::mutex g_ms_lock;
static bool g_ms_split;
float rsqrtf(float x) {
    const unsigned row = g_kernel ? blockIdx.x : blockIdx.x * NORM_WARPS + threadIdx.x / 32;
    std::lock_guard<std::mutex> lock(g_ms_lock);
    float& seen = g_ms[g_kernel][row];
    if (std::isnan(seen))
        seen = x;
    else if (std::memcmp(&seen, &x, 4) != 0)
        g_ms_split = true;
    return 1.f / std::sqrt(x);
}


// Runs `kernel` over `grid` blocks of `threads` threads.
static void launch(int grid, int threads, const std::function<void()>& kernel) {
    blockDim = {(unsigned)threads, 1, 1};
    gridDim = {(unsigned)grid, 1, 1};
    for (int w = 0; w < threads / 32; ++w) g_warps.push_back(new WarpEmu);
    for (int blk = 0; blk < grid; ++blk) {
        std::barrier<> bar(threads);
        g_block_bar = &bar;
        std::vector<std::thread> ts;
        for (int t = 0; t < threads; ++t)
            ts.emplace_back([&, t] {
                threadIdx = {(unsigned)t, 0, 0};
                blockIdx = {(unsigned)blk, 0, 0};
                kernel();
            });
        for (auto& t : ts) t.join();
    }
    for (auto* w : g_warps) delete w;
    g_warps.clear();
}

static uint16_t bits(bf16 v) {
    uint16_t u;
    std::memcpy(&u, &v, 2);
    return u;
}

struct Case {
    int n_rows, D1, D2;
    bool a_f32, add, gather;
};

static int run(const Case& cs, std::mt19937& rng) {
    const int N = cs.n_rows, D1 = cs.D1, D2 = cs.D2, D = D1 + D2;
    const int src_rows = cs.gather ? 3 * N + 1 : N;
    std::uniform_real_distribution<float> u(-3.f, 3.f);
    std::vector<float> af(cs.a_f32 ? (size_t)src_rows * D1 : 0);
    std::vector<bf16> ab(cs.a_f32 ? 0 : (size_t)src_rows * D1), add(cs.add ? (size_t)src_rows * D1 : 0),
        b((size_t)src_rows * D2), w(D);
    for (auto& v : af) v = u(rng) + 1e-3f * u(rng);  // more bits than bf16 holds
    for (auto& v : ab) v = __float2bfloat16_rn(u(rng));
    for (auto& v : add) v = __float2bfloat16_rn(u(rng));
    for (auto& v : b) v = __float2bfloat16_rn(0.1f * u(rng));
    for (auto& v : w) v = __float2bfloat16_rn(1.f + 0.06f * u(rng));
    std::vector<int> rows(cs.gather ? N : 0);
    for (auto& r : rows) r = std::uniform_int_distribution<int>(0, src_rows - 1)(rng);
    const void* a = cs.a_f32 ? (const void*)af.data() : (const void*)ab.data();
    const bf16* addp = cs.add ? add.data() : nullptr;
    const bf16* bp = D2 ? b.data() : nullptr;
    const int* rp = cs.gather ? rows.data() : nullptr;
    const float eps = 1e-5f;
    const bf16 nan = __float2bfloat16_rn(std::nanf(""));
    std::vector<bf16> got((size_t)N * D, nan), want((size_t)N * D, nan);
    for (auto& v : g_ms) v.assign(N, std::nanf(""));
    g_ms_split = false;
    g_kernel = 0;
    launch((N + NORM_WARPS - 1) / NORM_WARPS, 32 * NORM_WARPS,
           [&] { rmsnorm_rows(a, cs.a_f32, addp, bp, rp, w.data(), got.data(), N, D1, D2, eps); });
    g_kernel = 1;
    launch(N, 256, [&] { rmsnorm(a, cs.a_f32, addp, bp, rp, w.data(), want.data(), D1, D2, eps); });

    int bad = g_ms_split;
    if (g_ms_split) std::fprintf(stderr, "  the threads of a row disagree on mean(x^2)\n");
    for (int row = 0; row < N; ++row)
        if (std::memcmp(&g_ms[0][row], &g_ms[1][row], 4) != 0 && bad++ < 5)
            std::fprintf(stderr, "  row %d: mean(x^2) + eps %.9g, rmsnorm's %.9g\n", row, g_ms[0][row], g_ms[1][row]);
    double worst = 0;
    for (int row = 0; row < N; ++row) {
        const size_t src = rp ? rp[row] : row;
        std::vector<double> x(D);
        double ss = 0;
        for (int i = 0; i < D; ++i) {
            const size_t k = src * D1 + i;
            if (i >= D1)
                x[i] = __bfloat162float(b[src * D2 + i - D1]);
            else if (cs.a_f32)
                x[i] = af[k] + (cs.add ? __bfloat162float(add[k]) : 0.f);
            else
                x[i] = cs.add ? __bfloat162float(__float2bfloat16_rn(__bfloat162float(ab[k]) + __bfloat162float(add[k])))
                              : __bfloat162float(ab[k]);
            ss += x[i] * x[i];
        }
        const double r = 1.0 / std::sqrt(ss / D + eps);
        for (int i = 0; i < D; ++i) {
            const size_t o = (size_t)row * D + i;
            const double ref = __bfloat162float(w[i]) * x[i] * r, g = __bfloat162float(got[o]);
            worst = std::max(worst, std::fabs(g - ref));
            const bool far = !(std::fabs(g - ref) <= 1e-6 + std::fabs(ref) / 64.0);  // two bf16 roundings
            if ((bits(got[o]) != bits(want[o]) || far) && bad++ < 5)
                std::fprintf(stderr, "  row %d col %d: got %g, rmsnorm %g, reference %g\n", row, i, g,
                             __bfloat162float(want[o]), ref);
        }
    }
    std::printf("%s rows %d D1 %d D2 %d %s%s%s: max err vs double %.3g\n", bad ? "FAIL" : "ok  ", N, D1, D2,
                cs.a_f32 ? "f32" : "bf16", cs.add ? " +add" : "", cs.gather ? " gathered" : "", worst);
    return bad != 0;
}

int main() {
    std::setvbuf(stdout, nullptr, _IOLBF, 0);
    std::mt19937 rng(5);
    const std::vector<Case> cases = {
        {9, 3712, 0, true, true, false},      // the mamba layers' input norm
        {70, 3712, 3712, true, false, false},  // concat(h, e) of the shared block
        {13, 3712, 0, false, true, false},     // bf16 residual add
        {5, 3712, 0, true, false, true},       // gathered rows (the final norm)
        {6, 3712, 0, false, false, false},
        {3, 4, 0, true, true, false},          // one chunk
        {7, 8, 4, true, false, false},
        {5, 132, 0, false, false, false},      // a chunk count that is not a multiple of 32
        {5, 1024, 1028, true, true, false},    // D > 2048: rmsnorm's two-pass path
        {2, 9000, 0, false, true, true},       // more than one batch of chunks per lane
    };
    int fails = 0;
    for (const auto& c : cases) fails += run(c, rng);
    std::printf("%zu cases, %d failed\n", cases.size(), fails);
    return fails != 0;
}
