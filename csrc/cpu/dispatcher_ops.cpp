// The CPU backend's products as dispatcher ops, with their autograd in C++.
//
// vico_flow/ops.py defines the products once for every backend as Python
// custom ops (torch.library.custom_op), which pick the backend by a string.
// The public functions call the ops below instead when the backend is "cpu":
// same schemas less the backend, same kernels, same fake kernels (ops.py),
// but no Python between the dispatcher and the kernels, forward or backward.
// On caches the kernels had just flushed, those Python layers took ~0.25 ms of
// a hard forward at 1024^3 and ~0.7 ms of a fwd+bwd (timestamps around the
// kernel calls); through these ops, 0.27 and 0.44-0.59 ms less (A/B in one
// process). The generic ops keep their "cpu" path, and their autograd
// formulas call the same backward ops as the functions here.
//
// The ops take operands with any equal batch dims, as the generic ones do.
#include <torch/autograd.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "ops_cpu.h"

namespace vico_flow {
namespace cpu {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor as_3d(const at::Tensor& x) {
  TORCH_CHECK(x.dim() >= 2, "vico_flow: expected an operand [*batch, rows, cols], got shape ", x.sizes());
  int64_t batch = 1;
  for (int64_t d = 0; d + 2 < x.dim(); ++d) batch *= x.size(d);
  return x.reshape({batch, x.size(-2), x.size(-1)});
}

// The shape of A [*batch, m, k] (max,min) B [*batch, k, n]: [*batch, m, n].
std::vector<int64_t> product_shape(const at::Tensor& A, const at::Tensor& B) {
  std::vector<int64_t> shape(A.sizes().begin(), A.sizes().end());
  shape.back() = B.size(-1);
  return shape;
}

// ------------------------------------------------------------ CPU kernels of the ops
std::tuple<at::Tensor, at::Tensor> hard_forward_op(const at::Tensor& A, const at::Tensor& B, bool with_argmax) {
  auto [C, winners] = hard_forward(as_3d(A), as_3d(B), with_argmax);
  const auto shape = product_shape(A, B);
  return {C.view(shape), with_argmax ? winners.view(shape) : winners};
}

std::tuple<at::Tensor, at::Tensor> hard_backward_op(const at::Tensor& grad, const at::Tensor& A, const at::Tensor& B,
                                                    const at::Tensor& winners) {
  auto [dA, dB] = hard_backward(as_3d(grad), as_3d(A), as_3d(B), as_3d(winners));
  return {dA.reshape(A.sizes()), dB.reshape(B.sizes())};
}

at::Tensor soft_forward_op(const at::Tensor& A, const at::Tensor& B, double tau) {
  return soft_forward(as_3d(A), as_3d(B), tau).view(product_shape(A, B));
}

std::tuple<at::Tensor, at::Tensor> soft_backward_op(const at::Tensor& grad, const at::Tensor& A, const at::Tensor& B,
                                                    const at::Tensor& C, double tau) {
  auto [dA, dB] = soft_backward(as_3d(grad), as_3d(A), as_3d(B), as_3d(C), tau);
  return {dA.reshape(A.sizes()), dB.reshape(B.sizes())};
}

}  // namespace

// ------------------------------------------------------------ autograd
// The Functions are named like torch's own nodes (grad_fn=<MinmaxMmCpuBackward>)
// and live outside the anonymous namespace, which grad_fn.name() would spell
// out. They call the ops through the dispatcher, not the functions above, so
// that tracing (torch.compile, meta and fake tensors) reaches the fake kernels.
template <class Signature>
c10::TypedOperatorHandle<Signature> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

using HardForwardSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, bool);
using HardBackwardSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                           const at::Tensor&);
using SoftForwardSig = at::Tensor(const at::Tensor&, const at::Tensor&, double);
using SoftBackwardSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                           const at::Tensor&, double);

// The hard product: the gradient of each output goes to the operand element
// its winner names (the winners output is int32 and never differentiable).
struct MinmaxMmCpuBackward : public torch::autograd::Function<MinmaxMmCpuBackward> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& A, const at::Tensor& B, bool with_argmax) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    static const auto fwd = op<HardForwardSig>("vico_flow::minmax_mm_cpu");
    auto [C, winners] = fwd.call(A, B, with_argmax);
    ctx->save_for_backward({A, B, winners});
    ctx->saved_data["with_argmax"] = with_argmax;
    ctx->mark_non_differentiable({winners});
    ctx->set_materialize_grads(false);  // no zeros for the winners' (absent) gradient
    return {C, winners};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) return {at::Tensor(), at::Tensor(), at::Tensor()};  // C took no part
    TORCH_CHECK(ctx->saved_data["with_argmax"].toBool(),
                "vico_flow::minmax_mm_cpu was called with with_argmax=False, so it kept no argmax to route "
                "gradients; call vico_flow.minmax_matmul (it asks for the argmax whenever an input requires grad)");
    static const auto bwd = op<HardBackwardSig>("vico_flow::minmax_mm_backward_cpu");
    const variable_list saved = ctx->get_saved_variables();
    auto [dA, dB] = bwd.call(grads[0], saved[0], saved[1], saved[2]);
    return {dA, dB, at::Tensor()};
  }
};

// The soft product: its backward recomputes from A, B and C.
struct SoftMinmaxMmCpuBackward : public torch::autograd::Function<SoftMinmaxMmCpuBackward> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& A, const at::Tensor& B, double tau) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    static const auto fwd = op<SoftForwardSig>("vico_flow::soft_minmax_mm_cpu");
    at::Tensor C = fwd.call(A, B, tau);
    ctx->save_for_backward({A, B, C});
    ctx->saved_data["tau"] = tau;
    return C;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto bwd = op<SoftBackwardSig>("vico_flow::soft_minmax_mm_backward_cpu");
    const variable_list saved = ctx->get_saved_variables();
    auto [dA, dB] = bwd.call(grads[0], saved[0], saved[1], saved[2], ctx->saved_data["tau"].toDouble());
    return {dA, dB, at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> hard_forward_autograd(const at::Tensor& A, const at::Tensor& B, bool with_argmax) {
  const variable_list out = MinmaxMmCpuBackward::apply(A, B, with_argmax);
  return {out[0], out[1]};
}

at::Tensor soft_forward_autograd(const at::Tensor& A, const at::Tensor& B, double tau) {
  return SoftMinmaxMmCpuBackward::apply(A, B, tau);
}

}  // namespace cpu
}  // namespace vico_flow

TORCH_LIBRARY_FRAGMENT(vico_flow, m) {
  m.def("minmax_mm_cpu(Tensor A, Tensor B, bool with_argmax) -> (Tensor, Tensor)");
  m.def("minmax_mm_backward_cpu(Tensor grad, Tensor A, Tensor B, Tensor winners) -> (Tensor, Tensor)");
  m.def("soft_minmax_mm_cpu(Tensor A, Tensor B, float tau) -> Tensor");
  m.def("soft_minmax_mm_backward_cpu(Tensor grad, Tensor A, Tensor B, Tensor C, float tau) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(vico_flow, CPU, m) {
  m.impl("minmax_mm_cpu", &vico_flow::cpu::hard_forward_op);
  m.impl("minmax_mm_backward_cpu", &vico_flow::cpu::hard_backward_op);
  m.impl("soft_minmax_mm_cpu", &vico_flow::cpu::soft_forward_op);
  m.impl("soft_minmax_mm_backward_cpu", &vico_flow::cpu::soft_backward_op);
}

TORCH_LIBRARY_IMPL(vico_flow, AutogradCPU, m) {
  m.impl("minmax_mm_cpu", &vico_flow::cpu::hard_forward_autograd);
  m.impl("soft_minmax_mm_cpu", &vico_flow::cpu::soft_forward_autograd);
}
