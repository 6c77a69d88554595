// CUDA implementations of the tropical products: the torch side (dtype
// dispatch, layout, streams) of the launchers in kernels.cu. Built into
// vico_flow._C only where torch has CUDA and nvcc is present (setup.py), with
// VICO_WITH_CUDA defined; registered as hard_forward_cuda and friends.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/extension.h>

#include <tuple>

#include "launch.h"

namespace vico_flow {
namespace cuda {
namespace {

// torch's storage type -> the CUDA type the kernels are instantiated for.
template <class S> struct Native { using type = S; };
template <> struct Native<at::Half> { using type = __half; };
template <> struct Native<at::BFloat16> { using type = __nv_bfloat16; };

template <class S>
View<typename Native<S>::type> view(const at::Tensor& X, bool transposed = false) {
  using T = typename Native<S>::type;
  const T* p = reinterpret_cast<const T*>(X.data_ptr<S>());
  return transposed ? View<T>{p, X.stride(0), X.stride(2), X.stride(1)} : View<T>{p, X.stride(0), X.stride(1), X.stride(2)};
}

void check(cudaError_t e, const char* what) {
  TORCH_CHECK(e == cudaSuccess, "vico_flow CUDA ", what, " failed: ", cudaGetErrorString(e));
}

void check_operands(const at::Tensor& A, const at::Tensor& B) {
  TORCH_CHECK(A.is_cuda() && B.is_cuda() && A.device() == B.device(), "vico_flow._C: CUDA kernels need both operands on one GPU");
  TORCH_CHECK(A.dim() == 3 && B.dim() == 3 && A.size(0) == B.size(0) && A.size(2) == B.size(1),
              "vico_flow._C expects broadcast 3-D operands [b,m,k] x [b,k,n]");
  TORCH_CHECK(A.scalar_type() == B.scalar_type(), "vico_flow._C: operand dtypes differ");
}

at::ScalarType compute_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

}  // namespace

std::tuple<at::Tensor, at::Tensor> hard_forward_cuda(const at::Tensor& A, const at::Tensor& B, bool with_winners) {
  check_operands(A, B);
  const c10::cuda::CUDAGuard guard(A.device());
  const int64_t batch = A.size(0), m = A.size(1), k = A.size(2), n = B.size(2);
  at::Tensor C = at::empty({batch, m, n}, A.options());
  at::Tensor win = at::empty(with_winners ? at::IntArrayRef{batch, m, n} : at::IntArrayRef{0}, A.options().dtype(at::kInt));
  const auto stream = c10::cuda::getCurrentCUDAStream().stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, A.scalar_type(), "vico_flow_hard_forward_cuda", [&] {
    using T = typename Native<scalar_t>::type;
    check(hard_forward<T>(view<scalar_t>(A), view<scalar_t>(B), reinterpret_cast<T*>(C.data_ptr<scalar_t>()),
                          with_winners ? win.data_ptr<int32_t>() : nullptr, batch, m, n, k, stream),
          "hard_forward");
  });
  return {C, win};
}

std::tuple<at::Tensor, at::Tensor> hard_backward_cuda(const at::Tensor& grad, const at::Tensor& A, const at::Tensor& B,
                                                      const at::Tensor& winners) {
  check_operands(A, B);
  const c10::cuda::CUDAGuard guard(A.device());
  const int64_t batch = A.size(0), m = A.size(1), k = A.size(2), n = B.size(2);
  const auto ct = compute_type(A.scalar_type());
  const at::Tensor G = grad.to(ct).contiguous(), W = winners.contiguous();
  at::Tensor dA = at::zeros({batch, m, k}, A.options().dtype(ct)), dB = at::zeros({batch, k, n}, A.options().dtype(ct));
  AT_DISPATCH_FLOATING_TYPES(ct, "vico_flow_hard_backward_cuda", [&] {
    check(hard_backward<scalar_t>(G.data_ptr<scalar_t>(), W.data_ptr<int32_t>(), dA.data_ptr<scalar_t>(),
                                  dB.data_ptr<scalar_t>(), batch, m, n, k, c10::cuda::getCurrentCUDAStream().stream()),
          "hard_backward");
  });
  return {dA.to(A.scalar_type()), dB.to(A.scalar_type())};
}

at::Tensor soft_forward_cuda(const at::Tensor& A, const at::Tensor& B, double tau) {
  check_operands(A, B);
  const c10::cuda::CUDAGuard guard(A.device());
  const int64_t batch = A.size(0), m = A.size(1), k = A.size(2), n = B.size(2);
  // The shift H: hard values are operand values, so the hard product in the
  // input dtype converts to the compute type exactly.
  const at::Tensor H = std::get<0>(hard_forward_cuda(A, B, false)).to(compute_type(A.scalar_type())).contiguous();
  at::Tensor C = at::empty({batch, m, n}, A.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, A.scalar_type(), "vico_flow_soft_forward_cuda", [&] {
    using T = typename Native<scalar_t>::type;
    using Cm = std::conditional_t<std::is_same<scalar_t, double>::value, double, float>;
    check(soft_forward<T, Cm>(view<scalar_t>(A), view<scalar_t>(B), H.data_ptr<Cm>(),
                              reinterpret_cast<T*>(C.data_ptr<scalar_t>()), batch, m, n, k, tau,
                              c10::cuda::getCurrentCUDAStream().stream()),
          "soft_forward");
  });
  return k == 0 ? H.to(A.scalar_type()) : C;
}

std::tuple<at::Tensor, at::Tensor> soft_backward_cuda(const at::Tensor& grad, const at::Tensor& A, const at::Tensor& B,
                                                      const at::Tensor& C, double tau) {
  check_operands(A, B);
  const c10::cuda::CUDAGuard guard(A.device());
  const int64_t batch = A.size(0), m = A.size(1), k = A.size(2), n = B.size(2);
  const auto ct = compute_type(A.scalar_type());
  at::Tensor dA = at::zeros({batch, m, k}, A.options().dtype(ct)), dB = at::zeros({batch, k, n}, A.options().dtype(ct));
  const at::Tensor G = grad.to(A.scalar_type());
  const auto stream = c10::cuda::getCurrentCUDAStream().stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, A.scalar_type(), "vico_flow_soft_backward_cuda", [&] {
    using Cm = std::conditional_t<std::is_same<scalar_t, double>::value, double, float>;
    const MutView<Cm> db{dB.data_ptr<Cm>(), dB.stride(0), dB.stride(1), dB.stride(2)};
    check(soft_grad_rhs(view<scalar_t>(A), view<scalar_t>(B), view<scalar_t>(C), view<scalar_t>(G), db, batch, m, n, k,
                        tau, stream),
          "soft_grad_rhs (B)");
    // C^T = B^T (max,min) A^T: dA^T is its right-hand gradient, written through a transposed view.
    const MutView<Cm> daT{dA.data_ptr<Cm>(), dA.stride(0), dA.stride(2), dA.stride(1)};
    check(soft_grad_rhs(view<scalar_t>(B, true), view<scalar_t>(A, true), view<scalar_t>(C, true),
                        view<scalar_t>(G, true), daT, batch, n, m, k, tau, stream),
          "soft_grad_rhs (A)");
  });
  return {dA.to(A.scalar_type()), dB.to(A.scalar_type())};
}

void register_ops(pybind11::module& m) {
  m.def("hard_forward_cuda", &hard_forward_cuda, "A (max,min) B on CUDA; returns (C, encoded winners or empty)");
  m.def("hard_backward_cuda", &hard_backward_cuda, "scatter of the hard gradient on CUDA");
  m.def("soft_forward_cuda", &soft_forward_cuda, "log-sum-exp (max,min) product on CUDA");
  m.def("soft_backward_cuda", &soft_backward_cuda, "gradients of the soft product on CUDA");
}

}  // namespace cuda
}  // namespace vico_flow
