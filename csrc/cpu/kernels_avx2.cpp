// The kernel bodies compiled for AVX2 + FMA.
// Everything shared with other translation units is included *before* the
// target pragma, so inline functions from these headers keep the baseline ISA
// (the linker may keep any one copy of an inline function; it must run anywhere).
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "../tropical_common.h"
#include "kernel_api.h"

#pragma GCC target("avx2,fma")
#include "simd_avx2.h"
#include "kernels.h"

namespace vico_flow {
namespace cpu {
const KernelTable<float> kAvx2Float = Kernels<simd::Avx2>::table("avx2");
const KernelTable<double> kAvx2Double = Kernels<simd::Avx2Double>::table("avx2");
}
}  // namespace vico_flow
