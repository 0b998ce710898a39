// Host versions of the primitives csrc/skinny.cu uses on sm_90 (ldmatrix, mma.m16n8k16, TMA row
// copies onto mbarriers, the waits), for scripts/skinny_emu.cpp: skinny.cu includes this file in
// place of its device versions when SKINNY_HOST_EMU is defined.
#pragma once
#include <atomic>
#include <chrono>
#include <map>
#include <mutex>

template <class T>
T __ldcg(const T* p) {
    return *p;
}
inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
[[noreturn]] inline void __trap() { std::abort(); }

// What the copies may touch: the shared memory of the launch, X's rows below M, W's tile rows.
static const char *g_smem_lo, *g_smem_hi, *g_x_lo, *g_x_hi, *g_w_lo, *g_w_hi;
static void check_range(const void* p, size_t bytes, const char* lo, const char* hi, const char* what) {
    const char* c = static_cast<const char*>(p);
    if (c < lo || c + bytes > hi || reinterpret_cast<uintptr_t>(c) % 16 != 0) {
        std::fprintf(stderr, "%s access outside its range or misaligned\n", what);
        std::abort();
    }
}

// Per-warp exchange for the warp-collective instructions.
struct WarpX {
    std::barrier<> bar{32};
    const uint16_t* ptr[32];
    uint32_t a[32][4], b[32][2];
};
static std::vector<std::unique_ptr<WarpX>> g_wx;

static void sk_ldsm4(uint32_t (&r)[4], const bf16* p) {
    WarpX& w = *g_wx[threadIdx.x / 32];
    const int lane = threadIdx.x % 32;
    check_range(p, 16, g_smem_lo, g_smem_hi, "ldmatrix");
    w.ptr[lane] = reinterpret_cast<const uint16_t*>(p);
    w.bar.arrive_and_wait();
    for (int j = 0; j < 4; ++j) {
        const uint16_t* row = w.ptr[8 * j + lane / 4];
        r[j] = row[2 * (lane % 4)] | (uint32_t)row[2 * (lane % 4) + 1] << 16;
    }
    w.bar.arrive_and_wait();
}

static float half_of(uint32_t v, int hi) {
    const uint16_t h = hi ? v >> 16 : v & 0xffff;
    uint32_t f = (uint32_t)h << 16;
    float x;
    std::memcpy(&x, &f, 4);
    return x;
}

// D = A B + C for the warp's m16n8k16 tile, from the fragments of all 32 lanes.
static void sk_mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    WarpX& w = *g_wx[threadIdx.x / 32];
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    for (int j = 0; j < 4; ++j) w.a[lane][j] = a[j];
    w.b[lane][0] = b0;
    w.b[lane][1] = b1;
    w.bar.arrive_and_wait();
    auto A = [&](int row, int k) {
        return half_of(w.a[(row % 8) * 4 + (k % 8) / 2][(row >= 8) + 2 * (k >= 8)], k % 2);
    };
    auto B = [&](int k, int n) { return half_of(w.b[n * 4 + (k % 8) / 2][k >= 8], k % 2); };
    for (int i = 0; i < 4; ++i) {
        const int row = g + 8 * (i / 2), col = 2 * t + i % 2;
        float s = c[i];
        for (int k = 0; k < 16; ++k) s += A(row, k) * B(k, col);
        c[i] = s;
    }
    w.bar.arrive_and_wait();
}

// mbarriers: arrivals still due in the current phase, bytes still due, the phase's parity.
struct Mbar {
    int pending = 1;
    long long tx = 0;
    unsigned phase = 0;
};
static std::mutex g_mb_mu;
static std::map<const void*, Mbar> g_mb;
static void mb_settle(Mbar& m) {
    if (m.tx < 0) {
        std::fprintf(stderr, "mbarrier: more bytes arrived than were expected\n");
        std::abort();
    }
    if (m.pending == 0 && m.tx == 0) {
        m.phase ^= 1;
        m.pending = 1;
    }
}
static void sk_init(uint64_t* bar) {
    std::lock_guard<std::mutex> l(g_mb_mu);
    g_mb[bar] = Mbar{};
}
static void sk_expect(uint64_t* bar, unsigned bytes) {
    std::lock_guard<std::mutex> l(g_mb_mu);
    Mbar& m = g_mb.at(bar);
    m.tx += bytes;
    m.pending -= 1;
    mb_settle(m);
}
static void sk_row(bf16* dst, const bf16* src, uint64_t* bar) {
    const size_t bytes = SK_BK * 2;
    check_range(dst, bytes, g_smem_lo, g_smem_hi, "TMA destination");
    const char* s = reinterpret_cast<const char*>(src);
    if (s >= g_x_lo && s < g_x_hi) check_range(src, bytes, g_x_lo, g_x_hi, "X row");
    else check_range(src, bytes, g_w_lo, g_w_hi, "W row");
    std::memcpy(dst, src, bytes);
    std::lock_guard<std::mutex> l(g_mb_mu);
    Mbar& m = g_mb.at(bar);
    m.tx -= bytes;
    mb_settle(m);
}
static void sk_wait(uint64_t* bar, unsigned parity) {
    const auto t0 = std::chrono::steady_clock::now();
    for (;;) {
        {
            std::lock_guard<std::mutex> l(g_mb_mu);
            if (g_mb.at(bar).phase != parity) return;
        }
        if (std::chrono::steady_clock::now() - t0 > std::chrono::seconds(2)) {
            std::fprintf(stderr, "block (%u, %u): waited 2 s for a stage whose copies never came\n", blockIdx.x,
                         blockIdx.y);
            std::abort();
        }
        std::this_thread::yield();
    }
}
static void sk_fence_init() {}
static void sk_fence_proxy() {}

