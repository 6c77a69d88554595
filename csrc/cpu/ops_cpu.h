// Entry points of the CPU tropical products (ops_cpu.cpp), on checked,
// broadcast 3-D operands A [b, m, k], B [b, k, n]; the Python bindings and
// the dispatcher ops (dispatcher_ops.cpp) call them.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace vico_flow {
namespace cpu {

// (C, encoded winners [b, m, n] int32, or an empty tensor without with_argmax).
std::tuple<at::Tensor, at::Tensor> hard_forward(const at::Tensor& A, const at::Tensor& B, bool with_argmax);
// (dA, dB): each output's gradient added to the operand element its winner names.
std::tuple<at::Tensor, at::Tensor> hard_backward(const at::Tensor& grad, const at::Tensor& A, const at::Tensor& B,
                                                 const at::Tensor& winners);
at::Tensor soft_forward(const at::Tensor& A, const at::Tensor& B, double tau);
// (dA, dB), recomputed from A, B and the soft product C.
std::tuple<at::Tensor, at::Tensor> soft_backward(const at::Tensor& grad, const at::Tensor& A, const at::Tensor& B,
                                                 const at::Tensor& C, double tau);

}  // namespace cpu
}  // namespace vico_flow
