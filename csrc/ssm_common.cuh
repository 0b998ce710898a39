// Definitions shared by the selective-scan kernels (scan.cu: prefill; ssm_decode.cu: one-token
// decode). The math and layouts are in scan.cu's header comment.
#pragma once
#include "common.cuh"

#define SCAN_N 16
#define LOG2E 1.4426950408889634f

struct ScanArgs {
    const bf16* u; const bf16* dtr; const bf16* z; int ldz; const bf16* xdbl;
    const float* A; const float* D; const float* dt_bias;
    int DI, DH, NH, R;
};

// 2^x with ex2.approx.ftz (results below 2^-126 flush to 0).
__device__ __forceinline__ float ex2_ftz(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// Eight consecutive bf16 values as floats, in one 16-byte load when p is 16-byte aligned.
__device__ __forceinline__ void load8_bf16(const bf16* p, float (&v)[8]) {
    if ((reinterpret_cast<uintptr_t>(p) & 15) == 0) {
        Bf16x8 raw;
        raw.u = *reinterpret_cast<const uint4*>(p);
#pragma unroll
        for (int i = 0; i < 8; ++i) v[i] = to_f(raw.h[i]);
    } else {
#pragma unroll
        for (int i = 0; i < 8; ++i) v[i] = to_f(p[i]);
    }
}

// Lane q's half of one channel's one-token update in the two-lanes-per-channel decode kernels:
// its states s = states 8q..8q+7, A the same entries of A (fp32), B and C the head's 8 matching
// values. Updates s in place, s[n] = exp(dt·A[n])·s[n] + dt·B[n]·u, and returns the lane's part
// of sum_n s[n]·C[n], summed in two groups of four and then added (the order of the earlier
// four-lanes-per-channel form).
__device__ __forceinline__ float ssm_update8(float4 (&s)[2], const float4 (&A)[2], const float (&B)[8],
                                             const float (&C)[8], float dt, float u) {
#pragma unroll
    for (int g = 0; g < 2; ++g) {
        float4& sg = s[g];
        const float* Bg = B + 4 * g;
        sg.x = ex2_ftz(dt * (A[g].x * LOG2E)) * sg.x + dt * Bg[0] * u;
        sg.y = ex2_ftz(dt * (A[g].y * LOG2E)) * sg.y + dt * Bg[1] * u;
        sg.z = ex2_ftz(dt * (A[g].z * LOG2E)) * sg.z + dt * Bg[2] * u;
        sg.w = ex2_ftz(dt * (A[g].w * LOG2E)) * sg.w + dt * Bg[3] * u;
    }
    const float p0 = ((s[0].x * C[0] + s[0].y * C[1]) + s[0].z * C[2]) + s[0].w * C[3];
    const float p1 = ((s[1].x * C[4] + s[1].y * C[5]) + s[1].z * C[6]) + s[1].w * C[7];
    return p0 + p1;
}
