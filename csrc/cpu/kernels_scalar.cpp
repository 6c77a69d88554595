// The kernel bodies for any x86-64 (or other) processor, and the float64 path
// (whose hard product, winner search and scatter ops_cpu.cpp takes from AVX-512 where it can).
#include "simd_scalar.h"
#include "kernels.h"

namespace vico_flow {
namespace cpu {
const KernelTable<float> kScalarFloat = Kernels<simd::Scalar<float>>::table("scalar");
const KernelTable<double> kScalarDouble = Kernels<simd::Scalar<double>>::table("scalar");
}
}  // namespace vico_flow
