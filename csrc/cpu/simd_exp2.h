// The vector exp2 of the SIMD wrappers (simd_avx2.h, simd_avx512.h), written
// once: included by each wrapper after its `#pragma GCC target`, and
// instantiated only with that wrapper's types.
#pragma once

#include <cstddef>

#include "../tropical_common.h"

namespace vico_flow {
namespace simd {

// 2^x for the lanes of x, clamped to [-kExp2Clamp, kExp2Clamp]: with
// n = round(x) and f = x - n in [-1/2, 1/2], 2^f from the polynomial `poly`
// (coefficients of f^0, f^1, ...: kExp2Poly for float, kExp2PolyDouble for
// double) in Horner form, then scaled by 2^n. W supplies min, max, set1, sub,
// round_nearest, fmadd and times_exp2 (p * 2^n for integral n).
template <class W, std::size_t N>
inline typename W::reg exp2_poly(typename W::reg x, const typename W::value_type (&poly)[N]) {
  using value = typename W::value_type;
  x = W::min(W::max(x, W::set1(value(-kExp2Clamp))), W::set1(value(kExp2Clamp)));
  const typename W::reg n = W::round_nearest(x);
  const typename W::reg f = W::sub(x, n);
  typename W::reg p = W::set1(poly[N - 1]);
  for (int d = int(N) - 2; d >= 0; --d) p = W::fmadd(p, f, W::set1(poly[d]));
  return W::times_exp2(p, n);
}

}  // namespace simd
}  // namespace vico_flow
