// Checks the few-ulp activations of csrc/common.cuh (softplus_fast, silu_fast, as the prefill
// scan uses them) on the CPU against double-precision log1p(exp(x)) and x / (1 + exp(-x)), over
// x in [-40, 40] every 2^-12 and at the edges. On the GPU, __fdividef is a multiply by an
// approximate reciprocal (at most 1 ulp off) and expf is within 2 ulp: the check emulates the
// reciprocal as exact and asks for a bound with room for both (8 ulp relative, plus 2^-126
// absolute near 0). Exits non-zero on the first value outside it.
#include "cuda_emu.h"

#include "common.cuh"

static int check(const char* what, float (*f)(float), double (*ref)(double)) {
    const double ulp = std::ldexp(1.0, -23), bound = 8 * ulp;
    double worst = 0;
    float worst_x = 0;
    auto one = [&](float x) {
        const double want = ref((double)x), got = f(x);
        const double err = std::fabs(got - want) / std::fmax(std::fabs(want), std::ldexp(1.0, -126));
        if (!(err <= bound)) {
            std::printf("%s(%.9g) = %.9g, want %.17g: relative error %.3g ulp\n", what, x, got, want, err / ulp);
            std::exit(1);
        }
        if (err > worst) worst = err, worst_x = x;
    };
    for (int i = -40 * 4096; i <= 40 * 4096; ++i) one((float)i / 4096.f);
    for (float x : {-87.f, -80.f, -60.f, -20.0001f, 19.999f, 20.f, 20.0001f, 1e-30f, -1e-30f, 0.f}) one(x);
    std::printf("%s: worst relative error %.2f ulp at x = %.6g\n", what, worst / ulp, worst_x);
    return 0;
}

int main() {
    check("softplus_fast", softplus_fast, [](double x) { return x > 20 ? x : std::log1p(std::exp(x)); });
    check("silu_fast", silu_fast, [](double x) { return x / (1 + std::exp(-x)); });
    return 0;
}
