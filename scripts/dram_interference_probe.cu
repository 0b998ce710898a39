// Probe: does streaming DRAM traffic delay latency-bound work (dependent L2 loads and grid
// barriers, what mamba_step's phases are made of), when the stream runs on the same SMs (the other
// half of each block's warps) and when it runs on other SMs? One cooperative launch per case, one
// 1024-thread block per SM: blocks < P (the phase blocks) run `rounds` rounds of 4 dependent
// __ldcg loads per lane from a 64 KB ring then a grid barrier of the P blocks; the streaming
// threads keep 8 16-byte loads each in flight over a 2 GiB buffer until the phase blocks finish.
// Prints the median over 5 launches of µs per round and the stream's GB/s.
// Build here and run on the GPU machine:
//   $NVCC -gencode arch=compute_90,code=sm_90 -O3 -o .gpu/probe scripts/dram_interference_probe.cu \
//     -L$CUDA_HOME/lib -lcudart_static      (then carry .gpu/probe and run it)
#include <cstdio>
#include <cstdint>
#include <cuda_runtime.h>
#include <vector>
#include <algorithm>

__device__ __forceinline__ uint64_t gtime() { uint64_t t; asm volatile("mov.u64 %0, %globaltimer;" : "=l"(t)); return t; }

struct Args {
  const uint4* big; size_t big_chunks;   // streamed
  const int* small;                       // pointer chase ring in L2 (values are next index)
  unsigned long long* ctr;                // grid barrier of the phase blocks
  volatile int* done;                     // phase blocks finished
  unsigned long long* out;                // [0] phase ns, [1] streamed bytes, [2] stream ns
  float* sink;
  int P, rounds, mode;                    // mode bit0: other-SM stream, bit1: same-SM stream
};

__device__ void phase_sync(unsigned long long* ctr, unsigned P) {
  asm volatile("bar.sync 1, 512;" ::: "memory");
  if (threadIdx.x == 0) {
    unsigned long long old;
    asm volatile("atom.add.acq_rel.gpu.global.u64 %0, [%1], 1;" : "=l"(old) : "l"(ctr) : "memory");
    unsigned long long target = (old / P + 1) * P, cur;
    do { asm volatile("ld.acquire.gpu.global.u64 %0, [%1];" : "=l"(cur) : "l"(ctr) : "memory"); } while (cur < target);
  }
  asm volatile("bar.sync 1, 512;" ::: "memory");
}

__device__ void stream(const Args& a, int part, int nparts, int tid, int nthreads, volatile int* stop, bool count) {
  // Each thread keeps 8 16-byte loads in flight over its share of the big buffer, until stop.
  float acc = 0.f;
  size_t per = a.big_chunks / nparts;
  const uint4* p = a.big + per * part;
  size_t i = tid; uint64_t t0 = gtime(); size_t bytes = 0;
  while (!*stop) {
    uint4 w[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) w[j] = __ldcs(p + ((i + (size_t)j * nthreads) % per));
#pragma unroll
    for (int j = 0; j < 8; ++j) acc += __uint_as_float(w[j].x ^ w[j].w);
    i += 8 * (size_t)nthreads; bytes += 128;
  }
  if (acc == 12345.f) a.sink[0] = acc;
  if (count) { atomicAdd(a.out + 1, (unsigned long long)bytes); if (tid == 0 && part == 0) a.out[2] = gtime() - t0; }
}

extern "C" __global__ void __launch_bounds__(1024, 1) probe(Args a) {
  extern __shared__ char smem[];
  __shared__ volatile int local_done;
  if (threadIdx.x == 0) local_done = 0;
  __syncthreads();
  const int warp = threadIdx.x >> 5;
  const bool phase_block = blockIdx.x < a.P;
  if (phase_block) {
    if (warp < 16) {
      // latency work: per round, every warp's lanes chase 4 dependent L2 loads, then the phase grid barrier
      uint64_t t0 = gtime();
      int idx = (blockIdx.x * 977 + threadIdx.x * 131) & 16383;
      for (int r = 0; r < a.rounds; ++r) {
        for (int k = 0; k < 4; ++k) idx = __ldcg(a.small + idx);
        phase_sync(a.ctr, a.P);
      }
      if (idx == -1) a.sink[1] = idx;
      if (threadIdx.x == 0) { local_done = 1; if (blockIdx.x == 0) { a.out[0] = gtime() - t0; *a.done = 1; __threadfence(); } }
    } else if (a.mode & 2) {
      stream(a, blockIdx.x, a.P + (gridDim.x - a.P), threadIdx.x - 512, 512, &local_done, true);
    }
  } else if (a.mode & 1) {
    stream(a, blockIdx.x, gridDim.x, threadIdx.x, 1024, a.done, true);
  }
}

int main() {
  const size_t big_bytes = 2ull << 30;
  uint4* big; int* small; unsigned long long *ctr, *out; int* done; float* sink;
  cudaMalloc(&big, big_bytes); cudaMemset(big, 1, big_bytes);
  std::vector<int> ring(16384); for (int i = 0; i < 16384; ++i) ring[i] = (i * 7919 + 1) & 16383;
  cudaMalloc(&small, 16384 * 4); cudaMemcpy(small, ring.data(), 16384 * 4, cudaMemcpyHostToDevice);
  cudaMalloc(&ctr, 8); cudaMalloc(&out, 24); cudaMalloc(&done, 4); cudaMalloc(&sink, 8);
  int sms; cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  int smem = 150 * 1024;
  cudaFuncSetAttribute(probe, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  int rounds = 200;
  printf("SMs %d, rounds %d (each: 4 dependent L2 loads per lane + a grid barrier of the P phase blocks)\n", sms, rounds);
  printf("| P phase blocks | streaming | us per round | stream GB/s |\n|---|---|---|---|\n");
  for (int P : {132, 60, 66, 100}) for (int mode : {0, 1, 2, 3}) {
    if (P == sms && (mode & 1)) continue;
    std::vector<double> per, bw;
    for (int rep = 0; rep < 5; ++rep) {
      cudaMemset(ctr, 0, 8); cudaMemset(out, 0, 24); cudaMemset(done, 0, 4);
      Args a{big, big_bytes / 16, small, ctr, done, out, sink, P, rounds, mode};
      void* args[] = {&a};
      cudaLaunchCooperativeKernel((void*)probe, sms, 1024, args, smem, 0);
      cudaError_t e = cudaDeviceSynchronize();
      if (e) { printf("error %s\n", cudaGetErrorString(e)); return 1; }
      unsigned long long h[3]; cudaMemcpy(h, out, 24, cudaMemcpyDeviceToHost);
      per.push_back(h[0] / 1e3 / rounds); bw.push_back((double)h[1] / h[0]);
    }
    std::sort(per.begin(), per.end()); std::sort(bw.begin(), bw.end());
    const char* m[] = {"none", "other SMs", "same SMs (half the warps)", "both"};
    printf("| %d | %s | %.2f | %.0f |\n", P, m[mode], per[2], bw[2]);
  }
  return 0;
}
