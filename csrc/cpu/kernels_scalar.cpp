// The kernel bodies for any x86-64 (or other) processor, float32 and float64
// (ops_cpu.cpp takes float64 from AVX-512 where the processor has it).
#include "simd_scalar.h"
#include "kernels.h"

namespace vico_flow {
namespace cpu {
const KernelTable<float> kScalarFloat = Kernels<simd::Scalar<float>>::table("scalar");
const KernelTable<double> kScalarDouble = Kernels<simd::Scalar<double>>::table("scalar");
}
}  // namespace vico_flow
