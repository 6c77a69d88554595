// Launchers of the CUDA tropical kernels: plain pointers, element strides and
// a stream, no torch types, so kernels.cu compiles with nvcc alone (the test
// suite compile-checks it on machines without a GPU). ops_cuda.cpp is the
// torch side. Scalar semantics: ../tropical_common.h.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace vico_flow {
namespace cuda {

// An operand X[b, i, j] at data + b*sb + i*s0 + j*s1 (any strides, 0 for broadcast).
template <class T>
struct View {
  const T* data;
  int64_t sb, s0, s1;
};

template <class T>
struct MutView {
  T* data;
  int64_t sb, s0, s1;
};

// C = A (max,min) B; C contiguous [batch, m, n]. winners (nullable, contiguous
// int32 [batch, m, n]) gets encode_winner(first r reaching the max, A <= B).
// T: float, double, __half, __nv_bfloat16 (half types compute in float, or in
// packed half2 min/max when no winners are wanted: exact either way).
template <class T>
cudaError_t hard_forward(View<T> A, View<T> B, T* C, int32_t* winners, int64_t batch, int64_t m, int64_t n,
                         int64_t k, cudaStream_t stream);

// Scatter of the hard gradient into zeroed contiguous dA [b, m, k], dB [b, k, n]
// (float or double: atomics); grad and winners contiguous [b, m, n].
template <class T>
cudaError_t hard_backward(const T* grad, const int32_t* winners, T* dA, T* dB, int64_t batch, int64_t m,
                          int64_t n, int64_t k, cudaStream_t stream);

// C = H + tau ln sum_r 1/(2^((H-a)s) + 2^((H-b)s)) with H the hard product
// (contiguous [b, m, n] in the compute type Acc = float or double); C contiguous.
template <class T, class Acc>
cudaError_t soft_forward(View<T> A, View<T> B, const Acc* H, T* C, int64_t batch, int64_t m, int64_t n, int64_t k,
                         double tau, cudaStream_t stream);

// out[b, r, j] = dC/dB[r, j] = sum_i g[i,j] v p^2 for C = A (soft max,min) B;
// dC/dA is this call on the transposed problem (pass transposed views).
template <class T, class Acc>
cudaError_t soft_grad_rhs(View<T> A, View<T> B, View<T> C, View<T> G, MutView<Acc> out, int64_t batch, int64_t m,
                          int64_t n, int64_t k, double tau, cudaStream_t stream);

}  // namespace cuda
}  // namespace vico_flow
