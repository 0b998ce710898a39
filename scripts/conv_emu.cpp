// Host emulation of csrc/conv.cu's conv1d_prefill and conv1d_prefill_k8, for checking their index
// math without a GPU, with the shims of scripts/cuda_emu.h (the kernels share nothing between
// threads). Built and run by scripts/conv_emu.sh with AddressSanitizer; every buffer is
// allocated at its exact size, so a read or write outside one aborts. Compared bit for bit with
// the documented formula (fp32, bias then taps in order, SiLU, bf16) over batches of entries of
// many lengths (1, 2, < K-1, row runs that cross entries, entries not in row order), random
// non-zero conv states in permuted slots, and several conv widths and strides. The x inputs sit
// in [x | z] rows whose z half is NaN, as are unused state slots and the output before the call:
// a wrong read or a missed write shows up as a mismatch.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "cuda_emu.h"

#include "conv.cu"

static uint16_t bits(bf16 v) {
    uint16_t u;
    std::memcpy(&u, &v, 2);
    return u;
}

struct Case {
    int di, ldx_extra, k;
    std::vector<int> lens;
    bool reversed;  // entry e owns the e-th run of rows from the end
};

static int run(const Case& cs, std::mt19937& rng) {
    const int DI = cs.di, K = cs.k, ldx = 2 * DI + cs.ldx_extra, E = (int)cs.lens.size();
    const int M = std::accumulate(cs.lens.begin(), cs.lens.end(), 0);
    const int slots = E + 2;
    std::uniform_real_distribution<float> u(-2.f, 2.f);
    const bf16 nan = __float2bfloat16_rn(std::nanf(""));
    // Batch metadata: entries take slots in a shuffled order; rows are in entry order unless
    // reversed.
    std::vector<int> start(E), slot(E), tok_entry(M);
    std::vector<int> perm(slots);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    for (int e = 0, s = 0; e < E; ++e) {
        const int ee = cs.reversed ? E - 1 - e : e;
        start[ee] = s;
        slot[ee] = perm[ee];
        for (int t = 0; t < cs.lens[ee]; ++t) tok_entry[s + t] = ee;
        s += cs.lens[ee];
    }
    std::vector<bf16> xs((size_t)(M - 1) * ldx + DI);  // ends at the last row's x half
    for (int m = 0; m < M; ++m)
        for (int c = 0; c < ldx && (size_t)m * ldx + c < xs.size(); ++c)
            xs[(size_t)m * ldx + c] = c < DI ? __float2bfloat16_rn(u(rng)) : nan;
    std::vector<bf16> state((size_t)slots * (K - 1) * DI, nan);
    for (int e = 0; e < E; ++e)
        for (int i = 0; i < (K - 1) * DI; ++i) state[(size_t)slot[e] * (K - 1) * DI + i] = __float2bfloat16_rn(u(rng));
    std::vector<float> w((size_t)DI * K), bias(DI);
    for (auto& v : w) v = 0.25f * u(rng);
    for (auto& v : bias) v = 0.15f * u(rng);
    std::vector<bf16> out((size_t)M * DI, nan);

    // The host side of Gpu::conv1d_prefill.
    emu_launch((DI / 8 + CONV_THREADS - 1) / CONV_THREADS, (M + CONV_ROWS - 1) / CONV_ROWS, CONV_THREADS, 0, [&] {
        (K <= 4 ? conv1d_prefill : conv1d_prefill_k8)(xs.data(), ldx, tok_entry.data(), start.data(), slot.data(),
                                                      state.data(), w.data(), bias.data(), out.data(), M, DI, K);
    });

    int bad = 0;
    for (int m = 0; m < M; ++m) {
        const int e = tok_entry[m], j = m - start[e];
        for (int c = 0; c < DI; ++c) {
            float acc = bias[c];
            for (int k = 0; k < K; ++k) {
                const int i = j - (K - 1) + k;
                const bf16 x = i >= 0 ? xs[(size_t)(start[e] + i) * ldx + c]
                                      : state[((size_t)slot[e] * (K - 1) + K - 1 + i) * DI + c];
                acc += w[(size_t)c * K + k] * __bfloat162float(x);
            }
            const bf16 want = __float2bfloat16_rn(acc / (1.f + expf(-acc)));
            const bf16 got = out[(size_t)m * DI + c];
            if (bits(got) != bits(want) && bad++ < 5)
                std::fprintf(stderr, "  row %d (entry %d, j %d) channel %d: got %g want %g\n", m, e, j, c,
                             __bfloat162float(got), __bfloat162float(want));
        }
    }
    std::printf("%s DI %d ldx %d K %d M %d, %d entries%s\n", bad ? "FAIL" : "ok  ", DI, ldx, K, M, E,
                cs.reversed ? " (rows in reverse entry order)" : "");
    return bad != 0;
}

int main() {
    std::setvbuf(stdout, nullptr, _IOLBF, 0);
    std::mt19937 rng(7);
    const std::vector<int> mixed = {1, 2, 3, 7, 65, 509};
    const std::vector<Case> cases = {
        {7424, 0, 4, mixed, false},                                // Zamba-7B, the test's batch
        {7424, 0, 4, {512}, false},                                // one 512-token prompt
        {64, 0, 4, mixed, false},
        {64, 0, 4, mixed, true},
        {40, 8, 4, {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}, false},      // fewer channel groups than threads
        {16, 0, 4, {2, 2, 2, 2, 2, 3, 3, 3}, false},
        {16, 8, 4, {3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9}, false},
        {16, 8, 4, {3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9}, true},
        {24, 0, 4, {1}, false},
        {24, 0, 4, {2049}, false},
        {32, 0, 1, mixed, false},                                  // no state at all
        {32, 0, 2, mixed, false},
        {32, 0, 3, {1, 2, 3, 4, 9, 17}, true},
        {32, 0, 5, mixed, false},                                  // conv1d_prefill_k8
        {32, 16, 8, {1, 2, 3, 6, 7, 8, 9, 30}, false},
        {32, 0, 8, {1, 2, 3, 6, 7, 8, 9, 30}, true},
    };
    int fails = 0;
    for (const auto& c : cases) fails += run(c, rng);
    std::printf("%zu cases, %d failed\n", cases.size(), fails);
    return fails != 0;
}
