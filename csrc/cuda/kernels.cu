// CUDA tropical products, tiled like an SGEMM (no tensor cores apply to
// min/max): a block computes a 64 x 64 output tile from 16-deep slabs of A and
// B staged in shared memory; each thread owns a 4 x 4 register tile. The
// per-triple arithmetic is the shared scalar semantics of tropical_common.h.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "../tropical_common.h"
#include "launch.h"

namespace vico_flow {
namespace cuda {
namespace {

constexpr int kBM = 64, kBN = 64, kBK = 16;  // block tile and depth slab
constexpr int kTM = 4, kTN = 4;              // thread tile
constexpr int kThreads = (kBM / kTM) * (kBN / kTN);  // 256

template <class T> __device__ __forceinline__ float to_f(T x) { return static_cast<float>(x); }
template <> __device__ __forceinline__ float to_f<__half>(__half x) { return __half2float(x); }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }

// Compute type of a storage type: double stays double, the rest is float.
template <class T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

template <class T, class C>
__device__ __forceinline__ C load_elem(const T* base, int64_t off) {
  return static_cast<C>(to_f<T>(base[off]));
}
template <>
__device__ __forceinline__ double load_elem<double, double>(const double* base, int64_t off) {
  return base[off];
}

// Compute type -> storage type. Explicit intrinsics for the half types: torch
// builds extensions with __CUDA_NO_HALF_CONVERSIONS__ and
// __CUDA_NO_BFLOAT16_CONVERSIONS__, which remove their implicit conversions.
template <class T, class C> __device__ __forceinline__ T from_acc(C x) { return static_cast<T>(x); }
template <> __device__ __forceinline__ __half from_acc<__half, float>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16, float>(float x) {
  return __float2bfloat16_rn(x);
}

// Stages the [kBK x kBM] slab of A (transposed, so a thread reads a column
// of the tile contiguously) and the [kBK x kBN] slab of B; pads with -inf.
template <class T, class C>
__device__ __forceinline__ void stage(const View<T>& A, const View<T>& B, int64_t bz, int64_t m0, int64_t n0,
                                      int64_t k0, int64_t m, int64_t n, int64_t k, C (*As)[kBM], C (*Bs)[kBN]) {
  const C ninf = -INFINITY;
  for (int e = threadIdx.x; e < kBK * kBM; e += kThreads) {
    const int kk = e / kBM, ii = e % kBM;
    const int64_t gi = m0 + ii, gk = k0 + kk;
    As[kk][ii] = (gi < m && gk < k) ? load_elem<T, C>(A.data, bz * A.sb + gi * A.s0 + gk * A.s1) : ninf;
  }
  for (int e = threadIdx.x; e < kBK * kBN; e += kThreads) {
    const int kk = e / kBN, jj = e % kBN;
    const int64_t gj = n0 + jj, gk = k0 + kk;
    Bs[kk][jj] = (gj < n && gk < k) ? load_elem<T, C>(B.data, bz * B.sb + gk * B.s0 + gj * B.s1) : ninf;
  }
}

template <class T, bool kWinners>
__global__ void __launch_bounds__(kThreads) hard_fwd_kernel(View<T> A, View<T> B, T* C, int32_t* winners, int64_t m,
                                                            int64_t n, int64_t k) {
  using Cm = typename Acc<T>::type;
  __shared__ Cm As[kBK][kBM];
  __shared__ Cm Bs[kBK][kBN];
  const int64_t bz = blockIdx.z, m0 = int64_t(blockIdx.y) * kBM, n0 = int64_t(blockIdx.x) * kBN;
  const int ty = threadIdx.x / (kBN / kTN), tx = threadIdx.x % (kBN / kTN);
  const bool live = m0 + ty * kTM < m && n0 + tx * kTN < n;
  Cm acc[kTM][kTN];
  int32_t arg[kTM][kTN];
#pragma unroll
  for (int i = 0; i < kTM; ++i)
#pragma unroll
    for (int j = 0; j < kTN; ++j) {
      acc[i][j] = -INFINITY;
      arg[i][j] = 0;
    }
  for (int64_t k0 = 0; k0 < k; k0 += kBK) {
    stage<T, Cm>(A, B, bz, m0, n0, k0, m, n, k, As, Bs);
    __syncthreads();
    if (live) {  // threads whose whole register tile lies outside C skip the arithmetic
#pragma unroll
      for (int kk = 0; kk < kBK; ++kk) {
        Cm a[kTM], b[kTN];
#pragma unroll
        for (int i = 0; i < kTM; ++i) a[i] = As[kk][ty * kTM + i];
#pragma unroll
        for (int j = 0; j < kTN; ++j) b[j] = Bs[kk][tx * kTN + j];
#pragma unroll
        for (int i = 0; i < kTM; ++i)
#pragma unroll
          for (int j = 0; j < kTN; ++j) {
            if (kWinners) {
              const Cm v = tmin(a[i], b[j]);
              if (hard_replaces(v, acc[i][j])) {  // strict: the first r keeps ties
                acc[i][j] = v;
                arg[i][j] = int32_t(k0 + kk);
              }
            } else {
              acc[i][j] = hard_step(acc[i][j], a[i], b[j]);
            }
          }
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < kTM; ++i)
#pragma unroll
    for (int j = 0; j < kTN; ++j) {
      const int64_t gi = m0 + ty * kTM + i, gj = n0 + tx * kTN + j;
      if (gi >= m || gj >= n) continue;
      const int64_t off = (bz * m + gi) * n + gj;
      C[off] = from_acc<T>(acc[i][j]);
      if (kWinners) {
        const int64_t r = arg[i][j];
        const bool to_a = k == 0 || grad_goes_to_a(load_elem<T, Cm>(A.data, bz * A.sb + gi * A.s0 + r * A.s1),
                                                   load_elem<T, Cm>(B.data, bz * B.sb + r * B.s0 + gj * B.s1));
        winners[off] = encode_winner(r, to_a);
      }
    }
}

// Packed half2 variant (no winners): two adjacent columns per register, one
// __hmin2 + __hmax2 per two triples. min/max are exact in half precision.
template <class T, class T2>
__global__ void __launch_bounds__(kThreads) hard_fwd_half2_kernel(View<T> A, View<T> B, T* C, int64_t m, int64_t n,
                                                                  int64_t k) {
  __shared__ T As[kBK][kBM];
  __shared__ T2 Bs[kBK][kBN / 2];
  const int64_t bz = blockIdx.z, m0 = int64_t(blockIdx.y) * kBM, n0 = int64_t(blockIdx.x) * kBN;
  const int ty = threadIdx.x / (kBN / kTN), tx = threadIdx.x % (kBN / kTN);
  const bool live = m0 + ty * kTM < m && n0 + tx * kTN < n;
  const T ninf = from_acc<T>(-INFINITY);
  T2 acc[kTM][kTN / 2];
#pragma unroll
  for (int i = 0; i < kTM; ++i)
#pragma unroll
    for (int j = 0; j < kTN / 2; ++j) acc[i][j] = T2{ninf, ninf};
  for (int64_t k0 = 0; k0 < k; k0 += kBK) {
    for (int e = threadIdx.x; e < kBK * kBM; e += kThreads) {
      const int kk = e / kBM, ii = e % kBM;
      const int64_t gi = m0 + ii, gk = k0 + kk;
      As[kk][ii] = (gi < m && gk < k) ? A.data[bz * A.sb + gi * A.s0 + gk * A.s1] : ninf;
    }
    for (int e = threadIdx.x; e < kBK * (kBN / 2); e += kThreads) {
      const int kk = e / (kBN / 2), jj = 2 * (e % (kBN / 2));
      const int64_t gk = k0 + kk, gj = n0 + jj;
      const T lo = (gk < k && gj < n) ? B.data[bz * B.sb + gk * B.s0 + gj * B.s1] : ninf;
      const T hi = (gk < k && gj + 1 < n) ? B.data[bz * B.sb + gk * B.s0 + (gj + 1) * B.s1] : ninf;
      Bs[kk][jj / 2] = T2{lo, hi};
    }
    __syncthreads();
    if (live) {  // threads whose whole register tile lies outside C skip the arithmetic
#pragma unroll
      for (int kk = 0; kk < kBK; ++kk) {
        T2 b[kTN / 2];
#pragma unroll
        for (int j = 0; j < kTN / 2; ++j) b[j] = Bs[kk][tx * (kTN / 2) + j];
#pragma unroll
        for (int i = 0; i < kTM; ++i) {
          const T a1 = As[kk][ty * kTM + i];
          const T2 a = T2{a1, a1};
#pragma unroll
          for (int j = 0; j < kTN / 2; ++j) acc[i][j] = __hmax2(acc[i][j], __hmin2(a, b[j]));
        }
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < kTM; ++i)
#pragma unroll
    for (int j = 0; j < kTN / 2; ++j) {
      const int64_t gi = m0 + ty * kTM + i, gj = n0 + tx * kTN + 2 * j;
      if (gi >= m) continue;
      if (gj < n) C[(bz * m + gi) * n + gj] = acc[i][j].x;
      if (gj + 1 < n) C[(bz * m + gi) * n + gj + 1] = acc[i][j].y;
    }
}

template <class Cm> __device__ __forceinline__ Cm exp2c(Cm x) {
  const Cm c = Cm(kExp2Clamp);
  return exp2(x < -c ? -c : (x > c ? c : x));
}
// float: one MUFU.EX2 (ex2.approx, relative error ~2^-22). exp2f adds range
// fix-ups for results in the subnormal range, which the clamp already rules out.
template <> __device__ __forceinline__ float exp2c<float>(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(fminf(fmaxf(x, -kExp2Clamp), kExp2Clamp)));
  return y;
}

// 1 / x for x = 2^u + 2^v in [2^-kExp2Clamp, 2^(kExp2Clamp+1)]. float: one
// MUFU.RCP (rcp.approx, ~1 ulp) instead of the IEEE division's call to a
// slow-path routine; double keeps the division.
template <class Cm> __device__ __forceinline__ Cm recip(Cm x) { return Cm(1) / x; }
template <> __device__ __forceinline__ float recip<float>(float x) {
  float y;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

template <class T, class Cm>
__global__ void __launch_bounds__(kThreads) soft_fwd_kernel(View<T> A, View<T> B, const Cm* H, T* C, int64_t m,
                                                            int64_t n, int64_t k, Cm scale, Cm tau) {
  __shared__ Cm As[kBK][kBM];
  __shared__ Cm Bs[kBK][kBN];
  const int64_t bz = blockIdx.z, m0 = int64_t(blockIdx.y) * kBM, n0 = int64_t(blockIdx.x) * kBN;
  const int ty = threadIdx.x / (kBN / kTN), tx = threadIdx.x % (kBN / kTN);
  const bool live = m0 + ty * kTM < m && n0 + tx * kTN < n;
  Cm hs[kTM][kTN], sum[kTM][kTN];
#pragma unroll
  for (int i = 0; i < kTM; ++i)
#pragma unroll
    for (int j = 0; j < kTN; ++j) {
      const int64_t gi = m0 + ty * kTM + i, gj = n0 + tx * kTN + j;
      const Cm h = (gi < m && gj < n) ? H[(bz * m + gi) * n + gj] : Cm(0);
      hs[i][j] = isfinite(h) ? h * scale : Cm(0);
      sum[i][j] = 0;
    }
  for (int64_t k0 = 0; k0 < k; k0 += kBK) {
    stage<T, Cm>(A, B, bz, m0, n0, k0, m, n, k, As, Bs);
    __syncthreads();
    if (live) {  // threads whose whole register tile lies outside C skip the arithmetic
#pragma unroll 4
      for (int kk = 0; kk < kBK; ++kk) {
        Cm a[kTM], b[kTN];
#pragma unroll
        for (int i = 0; i < kTM; ++i) a[i] = As[kk][ty * kTM + i] * scale;
#pragma unroll
        for (int j = 0; j < kTN; ++j) b[j] = Bs[kk][tx * kTN + j] * scale;
#pragma unroll
        for (int i = 0; i < kTM; ++i)
#pragma unroll
          for (int j = 0; j < kTN; ++j) sum[i][j] += recip(exp2c(hs[i][j] - a[i]) + exp2c(hs[i][j] - b[j]));
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < kTM; ++i)
#pragma unroll
    for (int j = 0; j < kTN; ++j) {
      const int64_t gi = m0 + ty * kTM + i, gj = n0 + tx * kTN + j;
      if (gi >= m || gj >= n) continue;
      const int64_t off = (bz * m + gi) * n + gj;
      const Cm h = H[off];
      C[off] = from_acc<T>(isfinite(h) ? h + tau * log(sum[i][j]) : h);
    }
}

// out[r, j] = sum_i g[i,j] * soft_grad_weight(v, p): a tile of (r, j) outputs,
// slabs of kBK rows i staged in shared memory, unscaled: each exponent's
// difference is taken before the scaling (c*s - a*s rounds two products at
// ~s times the values' size; the CPU kernels' col_terms).
template <class T, class Cm>
__global__ void __launch_bounds__(kThreads) soft_grad_rhs_kernel(View<T> A, View<T> B, View<T> Cv, View<T> G,
                                                                 MutView<Cm> out, int64_t m, int64_t n, int64_t k,
                                                                 Cm scale) {
  __shared__ Cm As[kBK][kBM];  // A[i, r] for the tile's r (columns of the tile's rows)
  __shared__ Cm Cs[kBK][kBN];
  __shared__ Cm Gs[kBK][kBN];
  const int64_t bz = blockIdx.z, r0 = int64_t(blockIdx.y) * kBM, n0 = int64_t(blockIdx.x) * kBN;
  const int ty = threadIdx.x / (kBN / kTN), tx = threadIdx.x % (kBN / kTN);
  const bool live = r0 + ty * kTM < k && n0 + tx * kTN < n;
  Cm bs[kTM][kTN], sum[kTM][kTN];
#pragma unroll
  for (int i = 0; i < kTM; ++i)
#pragma unroll
    for (int j = 0; j < kTN; ++j) {
      const int64_t gr = r0 + ty * kTM + i, gj = n0 + tx * kTN + j;
      bs[i][j] = (gr < k && gj < n) ? load_elem<T, Cm>(B.data, bz * B.sb + gr * B.s0 + gj * B.s1) : Cm(0);
      sum[i][j] = 0;
    }
  for (int64_t i0 = 0; i0 < m; i0 += kBK) {
    for (int e = threadIdx.x; e < kBK * kBM; e += kThreads) {
      const int ii = e / kBM, rr = e % kBM;
      const int64_t gi = i0 + ii, gr = r0 + rr;
      As[ii][rr] = (gi < m && gr < k) ? load_elem<T, Cm>(A.data, bz * A.sb + gi * A.s0 + gr * A.s1) : Cm(0);
    }
    for (int e = threadIdx.x; e < kBK * kBN; e += kThreads) {
      const int ii = e / kBN, jj = e % kBN;
      const int64_t gi = i0 + ii, gj = n0 + jj;
      Cm c = 0, g = 0;
      if (gi < m && gj < n) {
        c = load_elem<T, Cm>(Cv.data, bz * Cv.sb + gi * Cv.s0 + gj * Cv.s1);
        g = load_elem<T, Cm>(G.data, bz * G.sb + gi * G.s0 + gj * G.s1);
        if (!isfinite(c)) c = g = 0;  // outputs at +-inf pass no gradient
      }
      Cs[ii][jj] = c;
      Gs[ii][jj] = g;
    }
    __syncthreads();
    if (live) {  // threads whose whole register tile lies outside C skip the arithmetic
#pragma unroll 4
      for (int ii = 0; ii < kBK; ++ii) {
#pragma unroll
        for (int i = 0; i < kTM; ++i) {
          const Cm a = As[ii][ty * kTM + i];
#pragma unroll
          for (int j = 0; j < kTN; ++j) {
            const Cm c = Cs[ii][tx * kTN + j];
            const Cm u = exp2c((c - a) * scale), v = exp2c((c - bs[i][j]) * scale);
            const Cm p = recip(u + v);
            sum[i][j] += Gs[ii][tx * kTN + j] * soft_grad_weight(v, p);
          }
        }
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < kTM; ++i)
#pragma unroll
    for (int j = 0; j < kTN; ++j) {
      const int64_t gr = r0 + ty * kTM + i, gj = n0 + tx * kTN + j;
      if (gr < k && gj < n) out.data[bz * out.sb + gr * out.s0 + gj * out.s1] = sum[i][j];
    }
}

template <class T>
__global__ void hard_bwd_kernel(const T* grad, const int32_t* winners, T* dA, T* dB, int64_t m, int64_t n, int64_t k,
                                int64_t total) {
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t bz = e / (m * n), i = (e / n) % m, j = e % n;
    const int32_t w = winners[e];
    const int64_t r = winner_index(w);
    if (winner_to_a(w)) atomicAdd(dA + (bz * m + i) * k + r, grad[e]);
    else atomicAdd(dB + (bz * k + r) * n + j, grad[e]);
  }
}

dim3 tile_grid(int64_t m, int64_t n, int64_t batch) {
  return dim3(unsigned((n + kBN - 1) / kBN), unsigned((m + kBM - 1) / kBM), unsigned(batch));
}

template <class T> struct Half2Of { using type = void; };
template <> struct Half2Of<__half> { using type = __half2; };
template <> struct Half2Of<__nv_bfloat16> { using type = __nv_bfloat162; };

}  // namespace

template <class T>
cudaError_t hard_forward(View<T> A, View<T> B, T* C, int32_t* winners, int64_t batch, int64_t m, int64_t n, int64_t k,
                         cudaStream_t stream) {
  if (batch == 0 || m == 0 || n == 0) return cudaSuccess;
  const dim3 grid = tile_grid(m, n, batch);
  using T2 = typename Half2Of<T>::type;
  if (winners) {
    hard_fwd_kernel<T, true><<<grid, kThreads, 0, stream>>>(A, B, C, winners, m, n, k);
  } else if constexpr (!std::is_same<T2, void>::value) {
    hard_fwd_half2_kernel<T, T2><<<grid, kThreads, 0, stream>>>(A, B, C, m, n, k);
  } else {
    hard_fwd_kernel<T, false><<<grid, kThreads, 0, stream>>>(A, B, C, nullptr, m, n, k);
  }
  return cudaGetLastError();
}

template <class T>
cudaError_t hard_backward(const T* grad, const int32_t* winners, T* dA, T* dB, int64_t batch, int64_t m, int64_t n,
                          int64_t k, cudaStream_t stream) {
  const int64_t total = batch * m * n;
  if (total == 0 || k == 0) return cudaSuccess;
  const int threads = 256;
  const int blocks = int((total + threads - 1) / threads < 65535 ? (total + threads - 1) / threads : 65535);
  hard_bwd_kernel<T><<<blocks, threads, 0, stream>>>(grad, winners, dA, dB, m, n, k, total);
  return cudaGetLastError();
}

template <class T, class Cm>
cudaError_t soft_forward(View<T> A, View<T> B, const Cm* H, T* C, int64_t batch, int64_t m, int64_t n, int64_t k,
                         double tau, cudaStream_t stream) {
  if (batch == 0 || m == 0 || n == 0) return cudaSuccess;
  soft_fwd_kernel<T, Cm><<<tile_grid(m, n, batch), kThreads, 0, stream>>>(A, B, H, C, m, n, k, Cm(kLog2e / tau),
                                                                         Cm(tau));
  return cudaGetLastError();
}

template <class T, class Cm>
cudaError_t soft_grad_rhs(View<T> A, View<T> B, View<T> C, View<T> G, MutView<Cm> out, int64_t batch, int64_t m,
                          int64_t n, int64_t k, double tau, cudaStream_t stream) {
  if (batch == 0 || k == 0 || n == 0) return cudaSuccess;
  soft_grad_rhs_kernel<T, Cm><<<tile_grid(k, n, batch), kThreads, 0, stream>>>(A, B, C, G, out, m, n, k,
                                                                              Cm(kLog2e / tau));
  return cudaGetLastError();
}

#define VF_INSTANTIATE(T, Cm)                                                                                      \
  template cudaError_t hard_forward<T>(View<T>, View<T>, T*, int32_t*, int64_t, int64_t, int64_t, int64_t,        \
                                       cudaStream_t);                                                              \
  template cudaError_t soft_forward<T, Cm>(View<T>, View<T>, const Cm*, T*, int64_t, int64_t, int64_t, int64_t,   \
                                           double, cudaStream_t);                                                  \
  template cudaError_t soft_grad_rhs<T, Cm>(View<T>, View<T>, View<T>, View<T>, MutView<Cm>, int64_t, int64_t,    \
                                            int64_t, int64_t, double, cudaStream_t);

VF_INSTANTIATE(float, float)
VF_INSTANTIATE(double, double)
VF_INSTANTIATE(__half, float)
VF_INSTANTIATE(__nv_bfloat16, float)
template cudaError_t hard_backward<float>(const float*, const int32_t*, float*, float*, int64_t, int64_t, int64_t,
                                          int64_t, cudaStream_t);
template cudaError_t hard_backward<double>(const double*, const int32_t*, double*, double*, int64_t, int64_t,
                                           int64_t, int64_t, cudaStream_t);

}  // namespace cuda
}  // namespace vico_flow
