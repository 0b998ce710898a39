// Host emulation of CUDA kernels, for checking their index math without a GPU (included by the
// scripts/*_emu.cpp checkers): every CUDA thread of a block is an OS thread, __syncthreads a block
// barrier, __syncwarp a warp barrier and __shfl_xor_sync a warp barrier around an exchange array.
// Blocks run one after another, so `static` stands in for __shared__, and one buffer (g_dyn_smem,
// refilled with 0xff bytes before each block) for the dynamic shared memory: the scripts rewrite
// each `extern __shared__ T name[];` to point at it. __ldcs calls g_ldcs_hook when set.
#pragma once
#include <barrier>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
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
inline thread_local Dim threadIdx, blockIdx;
inline Dim blockDim, gridDim;

inline std::function<void(const void*, size_t)> g_ldcs_hook;
template <class T>
T __ldcs(const T* p) {
    if (g_ldcs_hook) g_ldcs_hook(p, sizeof(T));
    return *p;
}
template <class T>
T __ldg(const T* p) {
    return *p;
}

struct WarpEmu {
    std::barrier<> bar{32};
    float vals[32];
};
inline std::vector<std::unique_ptr<WarpEmu>> g_warps;
inline std::barrier<>* g_block_bar;

inline float __shfl_xor_sync(unsigned, float v, int o) {
    WarpEmu& w = *g_warps[threadIdx.x / 32];
    const int lane = threadIdx.x % 32;
    w.vals[lane] = v;
    w.bar.arrive_and_wait();
    const float r = w.vals[lane ^ o];
    w.bar.arrive_and_wait();
    return r;
}
inline void __syncwarp(unsigned = 0xffffffffu) { g_warps[threadIdx.x / 32]->bar.arrive_and_wait(); }
// On the GPU a multiply by an approximate reciprocal (within 1 ulp); exact here.
inline float __fdividef(float a, float b) { return a / b; }
inline void __syncthreads() { g_block_bar->arrive_and_wait(); }
inline float __uint_as_float(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
using std::max;
using std::min;

inline uint4* g_dyn_smem;

// Runs kernel() as the grid (gx, gy) of blocks of `threads` threads (a multiple of 32) with
// `smem` bytes of dynamic shared memory. One OS thread per CUDA thread serves every block.
template <class F>
void emu_launch(unsigned gx, unsigned gy, unsigned threads, size_t smem, F kernel) {
    std::vector<uint4> dyn(std::max<size_t>(1, (smem + 15) / 16));  // exact, so ASan sees overruns
    g_dyn_smem = dyn.data();
    blockDim = {threads, 1, 1};
    gridDim = {gx, gy, 1};
    g_warps.clear();
    for (unsigned w = 0; w < threads / 32; ++w) g_warps.push_back(std::make_unique<WarpEmu>());
    std::barrier<> block_bar(threads), between(threads);
    g_block_bar = &block_bar;
    std::vector<std::thread> ts;
    for (unsigned t = 0; t < threads; ++t)
        ts.emplace_back([&, t] {
            threadIdx = {t, 0, 0};
            for (unsigned by = 0; by < gy; ++by)
                for (unsigned bx = 0; bx < gx; ++bx) {
                    if (t == 0) std::memset(static_cast<void*>(dyn.data()), 0xff, dyn.size() * sizeof(uint4));
                    between.arrive_and_wait();
                    blockIdx = {bx, by, 0};
                    kernel();
                    between.arrive_and_wait();  // the block's shared memory is free again
                }
        });
    for (auto& t : ts) t.join();
}
