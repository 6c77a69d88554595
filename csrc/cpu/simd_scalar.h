// One-lane "vector": the portable fallback and the float64 path (AVX-512 has
// its own for the float64 hard product: simd_avx512.h). Mirrors the
// interface of the AVX2/AVX-512 wrappers so kernels.h is written once.
#pragma once

#include <cmath>
#include <cstdint>

#include "../tropical_common.h"

namespace vico_flow {
namespace simd {

template <class T>
struct Scalar {
  using value_type = T;
  using reg = T;
  static constexpr int width = 1;
  static constexpr int hard_mr = 4;  // register tile: 4 rows x 4 columns
  static constexpr int hard_nv = 4;
  static constexpr int hard_tracked_rows = 2;  // parts of the tracked tile: any split works
  static constexpr int hard_tracked_nv = 4;
  static constexpr bool kTranspose16 = false;  // transposes through a tile
  static constexpr bool kScatter = false;  // gradient scatter: scalar loops
  static constexpr bool kEncodeWinners = false;  // winner search pass 2: scalar loop
  static constexpr int soft_nv = 4;

  static reg load(const T* p) { return *p; }
  static reg load_partial(const T* p, int n, T fill) { return n > 0 ? *p : fill; }
  static void store(T* p, reg v) { *p = v; }
  static void store_partial(T* p, reg v, int n) {
    if (n > 0) *p = v;
  }
  static reg in_register(reg x) { return x; }
  static reg set1(T x) { return x; }
  static reg zero() { return T(0); }
  static reg min(reg a, reg b) { return tmin(a, b); }
  static reg max(reg a, reg b) { return tmax(a, b); }
  static constexpr bool kBitsMin = false;  // no integer min on the bits: the float one only
  static reg bits_min(reg a, reg b) { return tmin(a, b); }
  static reg add(reg a, reg b) { return a + b; }
  static reg sub(reg a, reg b) { return a - b; }
  static reg mul(reg a, reg b) { return a * b; }
  static reg exp2(reg x) {
    const T c = T(kExp2Clamp);
    return std::exp2(x < -c ? -c : (x > c ? c : x));
  }
  static reg rcp(reg x) { return T(1) / x; }
  static void store_lanes(T* out, reg v) { out[0] = v; }
  static T hsum(reg v) { return v; }
  // Bit l set where lane l equals h.
  static uint32_t eq_mask(reg x, T h) { return x == h ? 1u : 0u; }
  // Bit 0 set where the value is NaN.
  static uint32_t nan_mask(reg x) { return std::isnan(x) ? 1u : 0u; }
  // Bit 0 set where grad_goes_to_a(a, b) (the gradient goes to A).
  static uint32_t le_mask(reg a, reg b) { return grad_goes_to_a(a, b) ? 1u : 0u; }
  // No portable non-temporal store: Kernels::stream_copy copies ordinarily.
  static constexpr bool kStream = false;
  static void stream_line(T*, const T*) {}
  static void stream_fence() {}
  // c = max(c, acc), elementwise over one vector at c.
  static void merge_max(T* c, reg acc) { *c = tmax(*c, acc); }
  // *ids = id where acc grew past its value before the sub-chunk.
  static void track(reg before, reg acc, int32_t* ids, int32_t id) {
    if (hard_replaces(acc, before)) *ids = id;
  }
  // *ids = encode_winner(r, grad_goes_to_a(a, b)) where acc grew past before
  // (always when kEvery).
  template <bool kEvery>
  static void track_winner(reg before, reg acc, reg a, reg b, int32_t* ids, int32_t r) {
    if (kEvery || hard_replaces(acc, before)) *ids = encode_winner(r, grad_goes_to_a(a, b));
  }
  // c = acc and idx = ids where acc strictly beats c (earlier chunks win ties).
  static void merge_max_track(T* c, int32_t* idx, reg acc, const int32_t* ids) {
    if (hard_replaces(acc, *c)) {
      *c = acc;
      *idx = *ids;
    }
  }
};

}  // namespace simd
}  // namespace vico_flow
