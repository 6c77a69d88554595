// AVX2 + FMA wrapper (8 float lanes). Included only by kernels_avx2.cpp, after
// its `#pragma GCC target`.
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "../tropical_common.h"
#include "simd_exp2.h"

namespace vico_flow {
namespace simd {

struct Avx2 {
  using value_type = float;
  using reg = __m256;
  static constexpr int width = 8;
  // 6 x 32 register tile: 24 accumulators would exceed AVX2's 16 registers, so
  // 6 rows x 2 vectors (12 accumulators + 2 B vectors + broadcasts).
  static constexpr int hard_mr = 6;
  static constexpr int hard_nv = 2;
  // Parts of the tracked tile (Kernels::micro_tracked): 3 rows by 2 vectors,
  // 6 accumulators, their 6 copies, 2 B vectors.
  static constexpr int hard_tracked_rows = 3;
  static constexpr int hard_tracked_nv = 2;
  static constexpr bool kTranspose16 = false;  // transposes through a tile
  static constexpr bool kScatter = true;  // gradient scatter: compressed lists (compress_to_a/b)
  static constexpr bool kEncodeWinners = true;  // winner search pass 2: encode_winners below
  static constexpr int soft_nv = 2;

  static __m256i tail_mask(int n) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), lane);
  }
  static reg load(const float* p) { return _mm256_loadu_ps(p); }
  static reg load_partial(const float* p, int n, float fill) {
    const __m256i m = tail_mask(n);
    return _mm256_blendv_ps(_mm256_set1_ps(fill), _mm256_maskload_ps(p, m), _mm256_castsi256_ps(m));
  }
  static void store(float* p, reg v) { _mm256_storeu_ps(p, v); }
  static void store_partial(float* p, reg v, int n) { _mm256_maskstore_ps(p, tail_mask(n), v); }
  // x, kept in a register (see simd_avx512.h).
  static reg in_register(reg x) {
    asm("" : "+x"(x));
    return x;
  }
  static reg set1(float x) { return _mm256_set1_ps(x); }
  static reg zero() { return _mm256_setzero_ps(); }
  // vminps/vmaxps return the second operand on ties and NaN; ties give equal
  // values and NaN is refused upstream, so these equal tmin/tmax bit for bit
  // (up to the sign of zero, which compares equal).
  static reg min(reg a, reg b) { return _mm256_min_ps(a, b); }
  static reg max(reg a, reg b) { return _mm256_max_ps(a, b); }
  // min of the bits as signed integers: the float min where both operands are
  // >= +0 or -inf (see simd_avx512.h).
  static constexpr bool kBitsMin = true;
  static reg bits_min(reg a, reg b) {
    return _mm256_castsi256_ps(_mm256_min_epi32(_mm256_castps_si256(a), _mm256_castps_si256(b)));
  }
  // Bit l set where lane l is outside that domain: sign bit set, not -inf.
  static uint32_t outside_bits_domain_mask(reg x) {
    const __m256i b = _mm256_castps_si256(x);
    const __m256i out = _mm256_andnot_si256(_mm256_cmpeq_epi32(b, _mm256_set1_epi32(int32_t(0xFF800000u))),
                                            _mm256_cmpgt_epi32(_mm256_setzero_si256(), b));
    return uint32_t(_mm256_movemask_ps(_mm256_castsi256_ps(out)));
  }
  static reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
  static reg sub(reg a, reg b) { return _mm256_sub_ps(a, b); }
  static reg mul(reg a, reg b) { return _mm256_mul_ps(a, b); }
  static reg round_nearest(reg x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static reg fmadd(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  // p * 2^n, 2^n built from its exponent bits: |n| <= kExp2Clamp = 100 keeps it a normal float.
  static reg times_exp2(reg p, reg n) {
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
  }
  static reg exp2(reg x) { return exp2_poly<Avx2>(x, kExp2Poly); }
  static reg rcp(reg x) {
    const reg r = _mm256_rcp_ps(x);  // 12 bits, one Newton step -> ~23 bits
    return _mm256_mul_ps(r, _mm256_fnmadd_ps(x, r, _mm256_set1_ps(2.0f)));
  }
  static void store_lanes(float* out, reg v) { _mm256_storeu_ps(out, v); }
  static float hsum(reg v) {  // sum of the lanes, as a tree
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
  }
  static uint32_t eq_mask(reg x, float h) {
    return uint32_t(_mm256_movemask_ps(_mm256_cmp_ps(x, _mm256_set1_ps(h), _CMP_EQ_OQ)));
  }
  // Bit l set where lane l is NaN.
  static uint32_t nan_mask(reg x) { return uint32_t(_mm256_movemask_ps(_mm256_cmp_ps(x, x, _CMP_UNORD_Q))); }
  // Bit l set where grad_goes_to_a(a[l], b[l]) (the gradient goes to A).
  static uint32_t le_mask(reg a, reg b) { return uint32_t(_mm256_movemask_ps(le_lanes(a, b))); }
  static reg le_lanes(reg a, reg b) { return _mm256_cmp_ps(a, b, _CMP_LE_OQ); }
  // Pass 2 of the winner search for 8 outputs, as in simd_avx512.h: the
  // lowest set bit of eq[l] | (1 << (sub - 1)) is isolated and its position
  // read off the float exponent (exact for sub <= 24).
  static void encode_winners(const uint16_t* eq, const uint16_t* le, int32_t* idx, int32_t sub) {
    const __m256i e = _mm256_or_si256(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(eq))),
                                      _mm256_set1_epi32(int32_t(1) << (sub - 1)));
    const __m256i l = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(le)));
    const __m256i low = _mm256_and_si256(e, _mm256_sub_epi32(_mm256_setzero_si256(), e));
    const __m256i t = _mm256_sub_epi32(_mm256_srli_epi32(_mm256_castps_si256(_mm256_cvtepi32_ps(low)), 23),
                                       _mm256_set1_epi32(127));
    const __m256i to_b = _mm256_cmpeq_epi32(_mm256_and_si256(l, low), _mm256_setzero_si256());  // all ones: to B
    __m256i* out = reinterpret_cast<__m256i*>(idx);
    _mm256_storeu_si256(out, _mm256_xor_si256(_mm256_add_epi32(_mm256_loadu_si256(out), t), to_b));  // ~r: to B
  }
  // Non-temporal store of one 64-byte line at dst (64-byte aligned) from src
  // (see ScatterArgs::stream); stream_fence() orders such stores before a
  // task ends.
  static constexpr bool kStream = true;
  static void stream_line(float* dst, const float* src) {
    _mm256_stream_ps(dst, _mm256_loadu_ps(src));
    _mm256_stream_ps(dst + 8, _mm256_loadu_ps(src + 8));
  }
  static void stream_fence() { _mm_sfence(); }
  static void merge_max(float* c, reg acc) { _mm256_storeu_ps(c, _mm256_max_ps(_mm256_loadu_ps(c), acc)); }
  // Scatter of the hard gradient, as in simd_avx512.h: the wanted lanes are
  // packed to the front of a vector (AVX2 has no compress instruction: a
  // permutation from kPackTable) and stored at the end of a list of
  // (offset, value) pairs. A scalar loop with a branch on each output's side
  // took 4.7 ms for the 1024^3 backward.
  // Appends (w[l], g[l]) where the winner goes to A (w >= 0); room for 8.
  static int compress_to_a(const int32_t* w, const float* g, int32_t* off, float* val) {
    const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
    const uint32_t to_a = ~uint32_t(_mm256_movemask_ps(_mm256_castsi256_ps(wv))) & 0xFFu;  // sign bit clear
    return store_compressed(to_a, wv, _mm256_loadu_ps(g), off, val);
  }
  // Appends (~w[l] * stride + lane0 + l, g[l]) where the winner goes to B (w < 0).
  static int compress_to_b(const int32_t* w, const float* g, int32_t stride, int32_t lane0, int32_t* off, float* val) {
    const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
    const uint32_t to_b = uint32_t(_mm256_movemask_ps(_mm256_castsi256_ps(wv)));
    const __m256i r = _mm256_xor_si256(wv, _mm256_set1_epi32(-1));  // ~w
    const __m256i lane = _mm256_add_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(lane0));
    const __m256i o = _mm256_add_epi32(_mm256_mullo_epi32(r, _mm256_set1_epi32(stride)), lane);
    return store_compressed(to_b, o, _mm256_loadu_ps(g), off, val);
  }
  // kPackTable[m]: the lanes of the set bits of m in order, 3 bits each.
  static constexpr auto kPackTable = [] {
    struct Table {
      uint32_t v[256];
    } t{};
    for (uint32_t m = 0; m < 256; ++m) {
      uint32_t packed = 0, n = 0;
      for (uint32_t l = 0; l < 8; ++l)
        if (m >> l & 1u) packed |= l << (3 * n++);
      t.v[m] = packed;
    }
    return t;
  }();
  static int store_compressed(uint32_t keep, __m256i off, __m256 g, int32_t* off_out, float* val_out) {
    const __m256i perm = _mm256_and_si256(
        _mm256_srlv_epi32(_mm256_set1_epi32(int32_t(kPackTable.v[keep])), _mm256_setr_epi32(0, 3, 6, 9, 12, 15, 18, 21)),
        _mm256_set1_epi32(7));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(off_out), _mm256_permutevar8x32_epi32(off, perm));
    _mm256_storeu_ps(val_out, _mm256_permutevar8x32_ps(g, perm));
    return __builtin_popcount(keep);
  }
  // p[l] = v[l] where mask lane l is set, as a load, blend and store of all
  // 8 lanes: for vectors the calling task owns whole (a tile's ids in L1, a
  // whole register tile of C). vpmaskmovd/vpmaskmovps stores are microcoded
  // on AMD processors: with them the tracked product took 2.3x the plain one
  // at 1024^3 (Zen 4 running this path); with the blend, ~1.2x.
  static void store_where(int32_t* p, __m256i mask, __m256i v) {
    __m256i* q = reinterpret_cast<__m256i*>(p);
    _mm256_storeu_si256(q, _mm256_blendv_epi8(_mm256_loadu_si256(q), v, mask));
  }
  static void store_where(float* p, __m256i mask, reg v) {
    _mm256_storeu_ps(p, _mm256_blendv_ps(_mm256_loadu_ps(p), v, _mm256_castsi256_ps(mask)));
  }
  // ids[l] = id where acc grew past its value before the sub-chunk.
  static void track(reg before, reg acc, int32_t* ids, int32_t id) {
    store_where(ids, _mm256_castps_si256(_mm256_cmp_ps(acc, before, _CMP_GT_OQ)), _mm256_set1_epi32(id));
  }
  // ids[l] = encode_winner(r, grad_goes_to_a(a[l], b[l])) where acc grew past
  // before (in every lane when kEvery): r where the gradient goes to A, ~r elsewhere.
  template <bool kEvery>
  static void track_winner(reg before, reg acc, reg a, reg b, int32_t* ids, int32_t r) {
    const __m256i at = kEvery ? _mm256_set1_epi32(-1) : _mm256_castps_si256(_mm256_cmp_ps(acc, before, _CMP_GT_OQ));
    const __m256i to_b = _mm256_xor_si256(_mm256_castps_si256(le_lanes(a, b)), _mm256_set1_epi32(-1));
    store_where(ids, at, _mm256_xor_si256(_mm256_set1_epi32(r), to_b));
  }
  // c = acc and idx = ids where acc strictly beats c (earlier chunks win ties).
  static void merge_max_track(float* c, int32_t* idx, reg acc, const int32_t* ids) {
    const __m256i gt = _mm256_castps_si256(_mm256_cmp_ps(acc, _mm256_loadu_ps(c), _CMP_GT_OQ));
    store_where(c, gt, acc);
    store_where(idx, gt, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ids)));
  }
};

// AVX2 + FMA wrapper for float64 (4 lanes): processors without AVX-512 run
// float64 in these vectors rather than in scalar code. The same register
// budget as Avx2 (6 rows x 2 vectors: NR = 8 columns); no non-temporal
// paths (their 64-byte lines assume 16 ids per tile row).
struct Avx2Double {
  using value_type = double;
  using reg = __m256d;
  static constexpr int width = 4;
  static constexpr int hard_mr = 6;
  static constexpr int hard_nv = 2;
  static constexpr int hard_tracked_rows = 3;
  static constexpr int hard_tracked_nv = 2;
  static constexpr int soft_nv = 2;
  static constexpr bool kTranspose16 = false;    // transposes through a tile
  static constexpr bool kScatter = true;         // gradient scatter: compressed lists, as for float
  static constexpr bool kEncodeWinners = false;  // winner search pass 2: scalar loop
  static constexpr bool kStream = false;
  // No 64-bit integer min before AVX-512: the float min only.
  static constexpr bool kBitsMin = false;

  static __m256i tail_mask(int n) { return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3)); }
  static reg load(const double* p) { return _mm256_loadu_pd(p); }
  static reg load_partial(const double* p, int n, double fill) {
    const __m256i m = tail_mask(n);
    return _mm256_blendv_pd(_mm256_set1_pd(fill), _mm256_maskload_pd(p, m), _mm256_castsi256_pd(m));
  }
  static void store(double* p, reg v) { _mm256_storeu_pd(p, v); }
  static void store_partial(double* p, reg v, int n) { _mm256_maskstore_pd(p, tail_mask(n), v); }
  static void store_lanes(double* out, reg v) { _mm256_storeu_pd(out, v); }
  static reg in_register(reg x) {  // see simd_avx512.h
    asm("" : "+x"(x));
    return x;
  }
  static reg set1(double x) { return _mm256_set1_pd(x); }
  static reg zero() { return _mm256_setzero_pd(); }
  static reg min(reg a, reg b) { return _mm256_min_pd(a, b); }  // see Avx2::min
  static reg max(reg a, reg b) { return _mm256_max_pd(a, b); }
  static reg bits_min(reg a, reg b) { return min(a, b); }
  static reg add(reg a, reg b) { return _mm256_add_pd(a, b); }
  static reg sub(reg a, reg b) { return _mm256_sub_pd(a, b); }
  static reg mul(reg a, reg b) { return _mm256_mul_pd(a, b); }
  static reg round_nearest(reg x) { return _mm256_round_pd(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static reg fmadd(reg a, reg b, reg c) { return _mm256_fmadd_pd(a, b, c); }
  // p * 2^n, 2^n built from its exponent bits: |n| <= kExp2Clamp keeps it a normal double.
  static reg times_exp2(reg p, reg n) {
    const __m256i e = _mm256_slli_epi64(
        _mm256_add_epi64(_mm256_cvtepi32_epi64(_mm256_cvtpd_epi32(n)), _mm256_set1_epi64x(1023)), 52);
    return _mm256_mul_pd(p, _mm256_castsi256_pd(e));
  }
  static reg exp2(reg x) { return exp2_poly<Avx2Double>(x, kExp2PolyDouble); }  // to float64 precision
  // AVX2 has no float64 reciprocal estimate (a float one would need three
  // Newton steps): the division, exact.
  static reg rcp(reg x) { return _mm256_div_pd(_mm256_set1_pd(1.0), x); }
  static double hsum(reg v) {  // sum of the lanes, as a tree
    const __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
  }
  static uint32_t eq_mask(reg x, double h) {
    return uint32_t(_mm256_movemask_pd(_mm256_cmp_pd(x, _mm256_set1_pd(h), _CMP_EQ_OQ)));
  }
  static uint32_t nan_mask(reg x) { return uint32_t(_mm256_movemask_pd(_mm256_cmp_pd(x, x, _CMP_UNORD_Q))); }
  // Bit l set where grad_goes_to_a(a[l], b[l]) (the gradient goes to A).
  static uint32_t le_mask(reg a, reg b) { return uint32_t(_mm256_movemask_pd(le_lanes(a, b))); }
  static reg le_lanes(reg a, reg b) { return _mm256_cmp_pd(a, b, _CMP_LE_OQ); }
  static void stream_line(double*, const double*) {}  // kStream is false: never called
  static void stream_fence() {}
  static void merge_max(double* c, reg acc) { _mm256_storeu_pd(c, _mm256_max_pd(_mm256_loadu_pd(c), acc)); }

  // The 4 int32 lanes of a float64 lane mask (the low halves of its 64-bit lanes).
  static __m128i narrow(__m256d mask) {
    return _mm256_castsi256_si128(
        _mm256_permutevar8x32_epi32(_mm256_castpd_si256(mask), _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6)));
  }
  // Scatter of the hard gradient, as Avx2's with 4 lanes.
  // Appends (w[l], g[l]) where the winner goes to A (w >= 0); room for 4.
  static int compress_to_a(const int32_t* w, const double* g, int32_t* off, double* val) {
    const __m128i wv = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w));
    const uint32_t to_a = ~uint32_t(_mm_movemask_ps(_mm_castsi128_ps(wv))) & 0xFu;  // sign bit clear
    return store_compressed(to_a, wv, _mm256_loadu_pd(g), off, val);
  }
  // Appends (~w[l] * stride + lane0 + l, g[l]) where the winner goes to B (w < 0).
  static int compress_to_b(const int32_t* w, const double* g, int32_t stride, int32_t lane0, int32_t* off,
                           double* val) {
    const __m128i wv = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w));
    const uint32_t to_b = uint32_t(_mm_movemask_ps(_mm_castsi128_ps(wv)));
    const __m128i lane = _mm_add_epi32(_mm_setr_epi32(0, 1, 2, 3), _mm_set1_epi32(lane0));
    const __m128i o = _mm_add_epi32(_mm_mullo_epi32(_mm_xor_si128(wv, _mm_set1_epi32(-1)), _mm_set1_epi32(stride)), lane);
    return store_compressed(to_b, o, _mm256_loadu_pd(g), off, val);
  }
  // The kept lanes to the front (Avx2::kPackTable, whose first 16 entries
  // list the set bits of 4-bit masks): int32 offsets by lane, float64 values
  // as pairs of 32-bit lanes.
  static int store_compressed(uint32_t keep, __m128i off, __m256d g, int32_t* off_out, double* val_out) {
    const __m256i packed = _mm256_set1_epi32(int32_t(Avx2::kPackTable.v[keep]));
    const __m256i lane = _mm256_and_si256(_mm256_srlv_epi32(packed, _mm256_setr_epi32(0, 3, 6, 9, 0, 3, 6, 9)),
                                          _mm256_set1_epi32(7));
    const __m256i pair = _mm256_and_si256(_mm256_srlv_epi32(packed, _mm256_setr_epi32(0, 0, 3, 3, 6, 6, 9, 9)),
                                          _mm256_set1_epi32(7));
    const __m256i halves = _mm256_add_epi32(_mm256_slli_epi32(pair, 1), _mm256_setr_epi32(0, 1, 0, 1, 0, 1, 0, 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(off_out),
                     _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(_mm256_castsi128_si256(off), lane)));
    _mm256_storeu_pd(val_out, _mm256_castps_pd(_mm256_permutevar8x32_ps(_mm256_castpd_ps(g), halves)));
    return __builtin_popcount(keep);
  }
  // p[l] = v[l] where mask lane l is set, as a load, blend and store (see Avx2::store_where).
  static void store_where(int32_t* p, __m128i mask, __m128i v) {
    __m128i* q = reinterpret_cast<__m128i*>(p);
    _mm_storeu_si128(q, _mm_blendv_epi8(_mm_loadu_si128(q), v, mask));
  }
  static void store_where(double* p, __m256d mask, reg v) { _mm256_storeu_pd(p, _mm256_blendv_pd(_mm256_loadu_pd(p), v, mask)); }
  // ids[l] = id where acc grew past its value before the sub-chunk.
  static void track(reg before, reg acc, int32_t* ids, int32_t id) {
    store_where(ids, narrow(_mm256_cmp_pd(acc, before, _CMP_GT_OQ)), _mm_set1_epi32(id));
  }
  // ids[l] = encode_winner(r, grad_goes_to_a(a[l], b[l])) where acc grew past
  // before (in every lane when kEvery): r where the gradient goes to A, ~r elsewhere.
  template <bool kEvery>
  static void track_winner(reg before, reg acc, reg a, reg b, int32_t* ids, int32_t r) {
    const __m128i at = kEvery ? _mm_set1_epi32(-1) : narrow(_mm256_cmp_pd(acc, before, _CMP_GT_OQ));
    const __m128i to_b = _mm_xor_si128(narrow(le_lanes(a, b)), _mm_set1_epi32(-1));
    store_where(ids, at, _mm_xor_si128(_mm_set1_epi32(r), to_b));
  }
  // c = acc and idx = ids where acc strictly beats c (earlier chunks win ties).
  static void merge_max_track(double* c, int32_t* idx, reg acc, const int32_t* ids) {
    const __m256d gt = _mm256_cmp_pd(acc, _mm256_loadu_pd(c), _CMP_GT_OQ);
    store_where(c, gt, acc);
    store_where(idx, narrow(gt), _mm_loadu_si128(reinterpret_cast<const __m128i*>(ids)));
  }
};

}  // namespace simd
}  // namespace vico_flow
