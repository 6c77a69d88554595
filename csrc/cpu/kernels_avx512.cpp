// The kernel bodies compiled for AVX-512F. Chosen at run time by ops_cpu.cpp
// only on processors that report avx512f.
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

#pragma GCC target("avx512f,avx2,fma")
#include "simd_avx512.h"
#include "kernels.h"

namespace vico_flow {
namespace cpu {
const KernelTable<float> kAvx512Float = Kernels<simd::Avx512>::table("avx512");
const KernelTable<double> kAvx512Double = Kernels<simd::Avx512Double>::table("avx512");
}
}  // namespace vico_flow
