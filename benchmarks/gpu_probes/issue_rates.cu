// Issue rates of the instructions the tropical kernels are made of, in
// operations per clock per multiprocessor, measured with clock64() inside
// the kernel (independent of the clock frequency):
//   FFMA (what torch.matmul float32 runs on), FMNMX (hard float32: two per
//   triple), HMNMX2 (hard half: two per two triples), MUFU.EX2 and MUFU.RCP
//   (soft float32: two EX2 and one RCP per triple).
// Build and run on a GPU machine:
//   nvcc -O3 -arch=sm_90 -o /tmp/rates benchmarks/gpu_probes/issue_rates.cu && /tmp/rates
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <vector>

constexpr int kThreads = 1024, kChains = 8, kIters = 4096;

#define OP_LOOP(BODY)                                              \
  for (int it = 0; it < kIters; ++it) {                            \
    _Pragma("unroll") for (int c = 0; c < kChains; ++c) { BODY; }  \
  }

template <int kOp>
__global__ void __launch_bounds__(kThreads) probe(float* sink, long long* cycles, float seed) {
  float x[kChains];
  unsigned h[kChains];
#pragma unroll
  for (int c = 0; c < kChains; ++c) {
    x[c] = seed * (threadIdx.x + c + 1);
    h[c] = __float_as_uint(x[c]);
  }
  __syncthreads();
  const long long t0 = clock64();
  // Each op reads a neighbouring chain, so no chain is loop-invariant and the
  // compiler cannot fold repeated operations.
  if (kOp == 0) OP_LOOP(asm volatile("fma.rn.f32 %0, %0, %1, %2;" : "+f"(x[c]) : "f"(x[(c + 1) % kChains]), "f"(seed)))
  if (kOp == 1) OP_LOOP(asm volatile("min.f32 %0, %0, %1;" : "+f"(x[c]) : "f"(x[(c + 1) % kChains])))
  if (kOp == 2) OP_LOOP(asm volatile("min.f16x2 %0, %0, %1;" : "+r"(h[c]) : "r"(h[(c + 1) % kChains])))
  if (kOp == 3) OP_LOOP(asm volatile("ex2.approx.ftz.f32 %0, %1;" : "=f"(x[c]) : "f"(x[(c + 1) % kChains])))
  // (an FADD on the FMA pipe feeds each RCP: ptxas folds rcp(rcp(x)) chains)
  if (kOp == 4) OP_LOOP(asm volatile("rcp.approx.ftz.f32 %0, %1;" : "=f"(x[c]) : "f"(x[(c + 1) % kChains] + x[(c + 3) % kChains])))
  __syncthreads();
  const long long t1 = clock64();
  float acc = 0;
#pragma unroll
  for (int c = 0; c < kChains; ++c) acc += x[c] + __uint_as_float(h[c]);
  sink[blockIdx.x * kThreads + threadIdx.x] = acc;
  if (threadIdx.x == 0) cycles[blockIdx.x] = t1 - t0;
}

template <int kOp>
double rate(int sms, float* sink, long long* cycles) {
  probe<kOp><<<sms, kThreads>>>(sink, cycles, 1.0001f);  // warm-up
  probe<kOp><<<sms, kThreads>>>(sink, cycles, 1.0001f);
  if (cudaDeviceSynchronize() != cudaSuccess) { std::printf("launch failed\n"); return 0; }
  std::vector<long long> c(sms);
  cudaMemcpy(c.data(), cycles, sms * sizeof(long long), cudaMemcpyDeviceToHost);
  std::sort(c.begin(), c.end());
  return double(kThreads) * kIters * kChains / double(c[sms / 2]);
}

int main() {
  cudaDeviceProp p;
  cudaGetDeviceProperties(&p, 0);
  const int sms = p.multiProcessorCount;  // one 1024-thread block per multiprocessor
  float* sink;
  long long* cycles;
  cudaMalloc(&sink, sizeof(float) * sms * kThreads);
  cudaMalloc(&cycles, sizeof(long long) * sms);
  std::printf("%s, %d multiprocessors: operations per clock per multiprocessor (median block)\n", p.name, sms);
  std::printf("FFMA      %6.1f\n", rate<0>(sms, sink, cycles));
  std::printf("FMNMX     %6.1f\n", rate<1>(sms, sink, cycles));
  std::printf("HMNMX2    %6.1f  (two half lanes each)\n", rate<2>(sms, sink, cycles));
  std::printf("MUFU.EX2  %6.1f\n", rate<3>(sms, sink, cycles));
  std::printf("MUFU.RCP  %6.1f\n", rate<4>(sms, sink, cycles));
  return 0;
}
