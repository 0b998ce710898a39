// Host emulation of csrc/conv_xproj.cu's conv_xproj and conv_xproj_reduce (scripts/cuda_emu.h,
// with the cp.async and mma stand-ins of scripts/conv_xproj_emu_shims.h), for checking their index
// math without a GPU. Built and run by scripts/conv_xproj_emu.sh with AddressSanitizer; every
// buffer has its exact size, so a read or write outside one aborts. Per case: the conv outputs
// and the updated conv states must equal the documented formula bit for bit (fp32, bias then the
// taps in order, SiLU, bf16), slots that no entry owns must stay untouched (NaN), and xdbl must
// match a double-precision x_proj of those conv outputs within its bf16 rounding. Cases: Zamba-7B's
// sizes (2 heads of 3712 channels, 264 rows) at batches 64, 37 and 70 (two entry groups), and
// small heads with 1-4 conv taps, batches of 1 to 65 and rows not a multiple of 16.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "cuda_emu.h"

#include "conv_xproj.cu"

static uint16_t bits(bf16 v) {
    uint16_t u;
    std::memcpy(&u, &v, 2);
    return u;
}

struct Case {
    int nh, dh, xr, k, batch;
};

static int run(const Case& cs, std::mt19937& rng) {
    const int NH = cs.nh, DH = cs.dh, XR = cs.xr, K = cs.k, B = cs.batch, DI = NH * DH;
    const int ldx = 2 * DI, slots = B + 3, nblk = DI / CX_CH;
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    const bf16 nan = __float2bfloat16_rn(std::nanf(""));
    std::vector<int> slot(B), perm(slots);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    for (int b = 0; b < B; ++b) slot[b] = perm[b];
    std::vector<bf16> xs((size_t)B * ldx);
    for (size_t i = 0; i < xs.size(); ++i) xs[i] = (int)(i % ldx) < DI ? __float2bfloat16_rn(2.f * u(rng)) : nan;
    std::vector<bf16> state((size_t)slots * (K - 1) * DI, nan);
    for (int b = 0; b < B; ++b)
        for (int i = 0; i < (K - 1) * DI; ++i) state[(size_t)slot[b] * (K - 1) * DI + i] = __float2bfloat16_rn(2.f * u(rng));
    const std::vector<bf16> state0 = state;
    std::vector<float> w((size_t)DI * K), bias(DI);
    for (auto& v : w) v = 0.5f * u(rng);
    for (auto& v : bias) v = 0.3f * u(rng);
    std::vector<bf16> wx((size_t)NH * XR * DH);
    for (auto& v : wx) v = __float2bfloat16_rn(0.1f * u(rng));
    std::vector<bf16> xc((size_t)B * DI, nan), xdbl((size_t)B * NH * XR, nan);
    std::vector<float> part((size_t)nblk * B * XR, std::nanf(""));

    // The host side of Gpu::conv_xproj.
    emu_launch(nblk, (B + CX_EB - 1) / CX_EB, 256, 0, [&] {
        conv_xproj(xs.data(), ldx, slot.data(), state.data(), w.data(), bias.data(), xc.data(), wx.data(), part.data(),
                   B, DI, DH, XR, K);
    });
    emu_launch((B * NH * XR + 255) / 256, 1, 256, 0,
               [&] { conv_xproj_reduce(part.data(), xdbl.data(), B, NH, XR, DH / CX_CH); });

    int bad = 0;
    std::vector<bf16> want_state = state0;
    std::vector<float> xc_ref((size_t)B * DI);
    for (int b = 0; b < B; ++b)
        for (int c = 0; c < DI; ++c) {
            bf16* st = want_state.data() + (size_t)slot[b] * (K - 1) * DI + c;
            std::vector<bf16> win(K);
            for (int t = 0; t < K - 1; ++t) win[t] = st[(size_t)t * DI];
            win[K - 1] = xs[(size_t)b * ldx + c];
            float acc = bias[c];
            for (int t = 0; t < K; ++t) acc += w[(size_t)c * K + t] * __bfloat162float(win[t]);
            const bf16 want = __float2bfloat16_rn(acc / (1.f + expf(-acc)));
            for (int t = 0; t < K - 1; ++t) st[(size_t)t * DI] = win[t + 1];
            xc_ref[(size_t)b * DI + c] = __bfloat162float(want);
            const bf16 got = xc[(size_t)b * DI + c];
            if (bits(got) != bits(want) && bad++ < 5)
                std::fprintf(stderr, "  entry %d channel %d: conv got %g want %g\n", b, c, __bfloat162float(got),
                             __bfloat162float(want));
        }
    for (size_t i = 0; i < state.size(); ++i)
        if (bits(state[i]) != bits(want_state[i]) && bad++ < 5)
            std::fprintf(stderr, "  conv state element %zu: got %g want %g\n", i, __bfloat162float(state[i]),
                         __bfloat162float(want_state[i]));
    double worst = 0;
    for (int b = 0; b < B; ++b)
        for (int h = 0; h < NH; ++h)
            for (int r = 0; r < XR; ++r) {
                double s = 0;
                for (int d = 0; d < DH; ++d)
                    s += (double)xc_ref[(size_t)b * DI + h * DH + d] * __bfloat162float(wx[((size_t)h * XR + r) * DH + d]);
                const float got = __bfloat162float(xdbl[((size_t)b * NH + h) * XR + r]);
                const double err = std::fabs(got - s) - (std::fabs(s) / 256 + 1e-4);
                worst = std::max(worst, err + 1e-4);
                if (!(err <= 0) && bad++ < 5)
                    std::fprintf(stderr, "  entry %d head %d row %d: x_proj got %g want %g\n", b, h, r, got, s);
            }
    std::printf("%s NH %d DH %d XR %d K %d batch %d\n", bad ? "FAIL" : "ok  ", NH, DH, XR, K, B);
    return bad != 0;
}

int main(int argc, char** argv) {
    std::setvbuf(stdout, nullptr, _IOLBF, 0);
    std::mt19937 rng(11);
    std::vector<Case> cases = {
        {2, 128, 24, 4, 1},  {2, 128, 24, 4, 9},  {1, 64, 8, 4, 16},   {2, 192, 40, 3, 17},
        {2, 128, 24, 2, 33}, {3, 64, 16, 1, 64},  {2, 128, 264, 4, 65}, {2, 64, 272, 4, 5},
    };
    const bool small_only = argc > 1 && std::strcmp(argv[1], "small") == 0;
    if (!small_only)
        for (int b : {64, 37, 70}) cases.push_back({2, 3712, 264, 4, b});  // Zamba-7B
    int fails = 0;
    for (const auto& c : cases) fails += run(c, rng);
    std::printf("%zu cases, %d failed\n", cases.size(), fails);
    return fails != 0;
}
