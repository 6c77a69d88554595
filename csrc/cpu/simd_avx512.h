// AVX-512F wrapper (16 float lanes). Included only by kernels_avx512.cpp, after
// its `#pragma GCC target`.
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "../tropical_common.h"

namespace vico_flow {
namespace simd {

struct Avx512 {
  using value_type = float;
  using reg = __m512;
  static constexpr int width = 16;
  // 6 x 64 register tile: 24 accumulators + 4 B vectors of the 32 zmm registers;
  // each A value is a broadcast memory operand.
  static constexpr int hard_mr = 6;
  static constexpr int hard_nv = 4;
  static constexpr int soft_nv = 4;

  static __mmask16 tail_mask(int n) { return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n < 0 ? 0 : n)) - 1u); }
  static reg load(const float* p) { return _mm512_loadu_ps(p); }
  static reg load_partial(const float* p, int n, float fill) {
    return _mm512_mask_loadu_ps(_mm512_set1_ps(fill), tail_mask(n), p);
  }
  static void store(float* p, reg v) { _mm512_storeu_ps(p, v); }
  static void store_partial(float* p, reg v, int n) { _mm512_mask_storeu_ps(p, tail_mask(n), v); }
  static reg set1(float x) { return _mm512_set1_ps(x); }
  static reg zero() { return _mm512_setzero_ps(); }
  static reg min(reg a, reg b) { return _mm512_min_ps(a, b); }
  static reg max(reg a, reg b) { return _mm512_max_ps(a, b); }
  static reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
  static reg sub(reg a, reg b) { return _mm512_sub_ps(a, b); }
  static reg mul(reg a, reg b) { return _mm512_mul_ps(a, b); }
  static reg exp2(reg x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-kExp2Clamp)), _mm512_set1_ps(kExp2Clamp));
    const reg n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const reg f = _mm512_sub_ps(x, n);
    reg p = _mm512_set1_ps(kExp2Poly[6]);
    for (int d = 5; d >= 0; --d) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExp2Poly[d]));
    return _mm512_scalef_ps(p, n);
  }
  static reg rcp(reg x) {
    const reg r = _mm512_rcp14_ps(x);  // 14 bits, one Newton step -> ~24 bits
    return _mm512_mul_ps(r, _mm512_fnmadd_ps(x, r, _mm512_set1_ps(2.0f)));
  }
  static void store_lanes(float* out, reg v) { _mm512_storeu_ps(out, v); }
  static uint32_t eq_mask(reg x, float h) { return _mm512_cmp_ps_mask(x, _mm512_set1_ps(h), _CMP_EQ_OQ); }
  static void merge_max(float* c, reg acc) { _mm512_storeu_ps(c, _mm512_max_ps(_mm512_loadu_ps(c), acc)); }
  static void merge_max_track(float* c, int32_t* idx, reg acc, int32_t chunk) {
    const __mmask16 gt = _mm512_cmp_ps_mask(acc, _mm512_loadu_ps(c), _CMP_GT_OQ);
    _mm512_mask_storeu_ps(c, gt, acc);
    _mm512_mask_storeu_epi32(idx, gt, _mm512_set1_epi32(chunk));
  }
};

}  // namespace simd
}  // namespace vico_flow
