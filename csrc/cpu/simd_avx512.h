// AVX-512F wrapper (16 float lanes). Included only by kernels_avx512.cpp, after
// its `#pragma GCC target`.
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "../tropical_common.h"
#include "simd_exp2.h"

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
  // Parts of the tracked tile (Kernels::micro_tracked): all 6 rows by 2
  // vectors, 12 accumulators, their 12 copies, 2 B vectors.
  static constexpr int hard_tracked_rows = 6;
  static constexpr int hard_tracked_nv = 2;
  static constexpr int soft_nv = 4;
  static constexpr bool kTranspose16 = true;  // transpose16 below
  static constexpr bool kScatter = true;  // gradient scatter: compressed lists (compress_to_a/b)
  static constexpr bool kEncodeWinners = true;  // winner search pass 2: encode_winners below

  static __mmask16 tail_mask(int n) { return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n < 0 ? 0 : n)) - 1u); }
  static reg load(const float* p) { return _mm512_loadu_ps(p); }
  static reg load_partial(const float* p, int n, float fill) {
    return _mm512_mask_loadu_ps(_mm512_set1_ps(fill), tail_mask(n), p);
  }
  static void store(float* p, reg v) { _mm512_storeu_ps(p, v); }
  static void store_partial(float* p, reg v, int n) { _mm512_mask_storeu_ps(p, tail_mask(n), v); }
  // x, kept in a register: the compiler would otherwise fold a B vector used
  // by a few rows into each of their instructions as a memory operand, and the
  // loads, not the arithmetic, would bound the tile.
  static reg in_register(reg x) {
    asm("" : "+v"(x));
    return x;
  }
  static reg set1(float x) { return _mm512_set1_ps(x); }
  static reg zero() { return _mm512_setzero_ps(); }
  static reg min(reg a, reg b) { return _mm512_min_ps(a, b); }
  static reg max(reg a, reg b) { return _mm512_max_ps(a, b); }
  // min of the bits as signed integers: the float min where both operands are
  // >= +0 or -inf (Kernels::scan_packed checks). vpminsd runs on the integer
  // vector units, beside the float max of the same step.
  static constexpr bool kBitsMin = true;
  static reg bits_min(reg a, reg b) {
    return _mm512_castsi512_ps(_mm512_min_epi32(_mm512_castps_si512(a), _mm512_castps_si512(b)));
  }
  // Bit l set where lane l is outside that domain: sign bit set, not -inf.
  static uint32_t outside_bits_domain_mask(reg x) {
    const __m512i b = _mm512_castps_si512(x);
    return _mm512_cmplt_epi32_mask(b, _mm512_setzero_si512()) &
           _mm512_cmpneq_epi32_mask(b, _mm512_set1_epi32(int32_t(0xFF800000u)));
  }
  static reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
  static reg sub(reg a, reg b) { return _mm512_sub_ps(a, b); }
  static reg mul(reg a, reg b) { return _mm512_mul_ps(a, b); }
  static reg round_nearest(reg x) { return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static reg fmadd(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  static reg times_exp2(reg p, reg n) { return _mm512_scalef_ps(p, n); }
  static reg exp2(reg x) { return exp2_poly<Avx512>(x, kExp2Poly); }
  static reg rcp(reg x) {
    const reg r = _mm512_rcp14_ps(x);  // 14 bits, one Newton step -> ~24 bits
    return _mm512_mul_ps(r, _mm512_fnmadd_ps(x, r, _mm512_set1_ps(2.0f)));
  }
  static void store_lanes(float* out, reg v) { _mm512_storeu_ps(out, v); }
  static float hsum(reg v) { return _mm512_reduce_add_ps(v); }  // sum of the lanes, as a tree
  static uint32_t eq_mask(reg x, float h) { return _mm512_cmp_ps_mask(x, _mm512_set1_ps(h), _CMP_EQ_OQ); }
  // Bit l set where lane l is NaN.
  static uint32_t nan_mask(reg x) { return _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q); }
  // Bit l set where grad_goes_to_a(a[l], b[l]) (the gradient goes to A).
  static uint32_t le_mask(reg a, reg b) { return _mm512_cmp_ps_mask(a, b, _CMP_LE_OQ); }
  // Pass 2 of the winner search for 16 outputs (Kernels::encode_winners):
  // idx[l] = encode_winner(idx[l] + t, le bit t) with t the lowest set
  // bit of eq[l] | (1 << (sub - 1)). The lowest bit is isolated (x & -x) and
  // its position read off the float exponent: exact for sub <= 24.
  static void encode_winners(const uint16_t* eq, const uint16_t* le, int32_t* idx, int32_t sub) {
    const __m512i e = _mm512_or_si512(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(eq))),
                                      _mm512_set1_epi32(int32_t(1) << (sub - 1)));
    const __m512i l = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(le)));
    const __m512i low = _mm512_and_si512(e, _mm512_sub_epi32(_mm512_setzero_si512(), e));
    const __m512i t = _mm512_sub_epi32(_mm512_srli_epi32(_mm512_castps_si512(_mm512_cvtepi32_ps(low)), 23),
                                       _mm512_set1_epi32(127));
    const __mmask16 to_b = _mm512_testn_epi32_mask(l, low);
    const __m512i r = _mm512_add_epi32(_mm512_loadu_si512(idx), t);
    _mm512_storeu_si512(idx, _mm512_mask_xor_epi32(r, to_b, r, _mm512_set1_epi32(-1)));  // ~r: to B
  }
  // Scatter of the hard gradient, W outputs at a time: the lanes whose winner
  // goes to the wanted operand are compressed (vpcompressd, in registers) and
  // stored whole at the end of a list of (offset, value) pairs, which the
  // kernel then adds one by one. Gather/scatter instructions are microcoded and
  // slow on some cores (AMD Zen 4); sequential adds need no conflict handling;
  // and adding from a list written earlier (not from the vector just stored)
  // avoids both a store-forwarding stall and a mispredicted loop per vector.
  // The int32 lane work of the scatter and of the tracked winners, on 16
  // encoded winners; Avx512Double uses the low 8 lanes. Lanes whose winner
  // goes to A (w >= 0):
  static __mmask16 to_a_lanes(__m512i w) { return _mm512_cmpge_epi32_mask(w, _mm512_setzero_si512()); }
  // ~w * stride + lane0 + l: where the gradient of lane l goes in a dB slab.
  static __m512i b_offsets(__m512i w, int32_t stride, int32_t lane0) {
    const __m512i r = _mm512_xor_si512(w, _mm512_set1_epi32(-1));  // ~w
    const __m512i lane = _mm512_add_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                          _mm512_set1_epi32(lane0));
    return _mm512_add_epi32(_mm512_mullo_epi32(r, _mm512_set1_epi32(stride)), lane);
  }
  // encode_winner(r, lane in to_a) in every lane.
  static __m512i encoded(__mmask16 to_a, int32_t r) {
    return _mm512_mask_blend_epi32(to_a, _mm512_set1_epi32(~r), _mm512_set1_epi32(r));
  }
  // Appends (w[l], g[l]) where the winner goes to A (w >= 0); room for 16.
  static int compress_to_a(const int32_t* w, const float* g, int32_t* off, float* val) {
    const __m512i wv = _mm512_loadu_si512(w);
    return store_compressed(to_a_lanes(wv), wv, _mm512_loadu_ps(g), off, val);
  }
  // Appends (~w[l] * stride + lane0 + l, g[l]) where the winner goes to B (w < 0).
  static int compress_to_b(const int32_t* w, const float* g, int32_t stride, int32_t lane0, int32_t* off, float* val) {
    const __m512i wv = _mm512_loadu_si512(w);
    return store_compressed(__mmask16(~to_a_lanes(wv)), b_offsets(wv, stride, lane0), _mm512_loadu_ps(g), off, val);
  }
  static int store_compressed(__mmask16 keep, __m512i off, __m512 g, int32_t* off_out, float* val_out) {
    _mm512_storeu_si512(off_out, _mm512_maskz_compress_epi32(keep, off));
    _mm512_storeu_ps(val_out, _mm512_maskz_compress_ps(keep, g));
    return __builtin_popcount(unsigned(keep));
  }
  // dst[j * ld + i] = src[i * ls + j] for a 16x16 block: unpacks, then
  // in-lane and cross-lane shuffles (4 stages of 16 instructions). `stream`:
  // non-temporal stores (each row of dst then starts a 64-byte line).
  static void transpose16(const float* src, int64_t ls, float* dst, int64_t ld, bool stream) {
    reg r[16], t[16];
    for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * ls);
    for (int i = 0; i < 8; ++i) {
      t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
      t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; ++i) {
      r[4 * i + 0] = _mm512_shuffle_ps(t[4 * i + 0], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
      r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i + 0], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
      r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
      r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int i = 0; i < 2; ++i)
      for (int j = 0; j < 4; ++j) {
        t[8 * i + j] = _mm512_shuffle_f32x4(r[8 * i + j], r[8 * i + 4 + j], 0x88);
        t[8 * i + 4 + j] = _mm512_shuffle_f32x4(r[8 * i + j], r[8 * i + 4 + j], 0xdd);
      }
    for (int j = 0; j < 8; ++j) {
      r[j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0x88);
      r[8 + j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0xdd);
    }
    if (stream) {
      for (int i = 0; i < 16; ++i) _mm512_stream_ps(dst + i * ld, r[i]);
    } else {
      for (int i = 0; i < 16; ++i) _mm512_storeu_ps(dst + i * ld, r[i]);
    }
  }
  // Non-temporal store of one 64-byte line at dst (64-byte aligned) from src
  // (see ScatterArgs::stream); stream_fence() orders such stores before a
  // task ends.
  static constexpr bool kStream = true;
  static void stream_line(float* dst, const float* src) { _mm512_stream_ps(dst, _mm512_loadu_ps(src)); }
  static void stream_fence() { _mm_sfence(); }
  static void merge_max(float* c, reg acc) { _mm512_storeu_ps(c, _mm512_max_ps(_mm512_loadu_ps(c), acc)); }
  // ids[l] = id where acc grew past its value before the sub-chunk.
  static void track(reg before, reg acc, int32_t* ids, int32_t id) {
    _mm512_mask_storeu_epi32(ids, _mm512_cmp_ps_mask(acc, before, _CMP_GT_OQ), _mm512_set1_epi32(id));
  }
  // ids[l] = encode_winner(r, grad_goes_to_a(a[l], b[l])) where acc grew past
  // before (in every lane when kEvery).
  template <bool kEvery>
  static void track_winner(reg before, reg acc, reg a, reg b, int32_t* ids, int32_t r) {
    const __mmask16 at = kEvery ? __mmask16(0xFFFF) : _mm512_cmp_ps_mask(acc, before, _CMP_GT_OQ);
    _mm512_mask_storeu_epi32(ids, at, encoded(__mmask16(le_mask(a, b)), r));
  }
  // c = acc and idx = ids where acc strictly beats c (earlier chunks win ties).
  static void merge_max_track(float* c, int32_t* idx, reg acc, const int32_t* ids) {
    const __mmask16 gt = _mm512_cmp_ps_mask(acc, _mm512_loadu_ps(c), _CMP_GT_OQ);
    _mm512_mask_storeu_ps(c, gt, acc);
    _mm512_mask_storeu_epi32(idx, gt, _mm512_loadu_si512(ids));
  }
};

// AVX-512F wrapper for float64 (8 lanes). The int32 ids and offsets of 8
// lanes are the low half of a 16-lane vector, under an 8-bit mask (no
// AVX-512VL needed).
struct Avx512Double {
  using value_type = double;
  using reg = __m512d;
  static constexpr int width = 8;
  // 6 x 32 register tile: 24 accumulators + 4 B vectors, as for float.
  static constexpr int hard_mr = 6;
  static constexpr int hard_nv = 4;
  static constexpr int hard_tracked_rows = 6;
  static constexpr int hard_tracked_nv = 2;
  static constexpr int soft_nv = 4;
  static constexpr bool kTranspose16 = false;  // transposes through a tile
  static constexpr bool kEncodeWinners = false;  // winner search pass 2: scalar loop
  static constexpr bool kScatter = true;  // gradient scatter: compressed lists, as for float
  static constexpr bool kStream = true;

  static __mmask8 tail_mask(int n) { return n >= 8 ? __mmask8(0xFF) : __mmask8((1u << (n < 0 ? 0 : n)) - 1u); }
  static reg load(const double* p) { return _mm512_loadu_pd(p); }
  static reg load_partial(const double* p, int n, double fill) {
    return _mm512_mask_loadu_pd(_mm512_set1_pd(fill), tail_mask(n), p);
  }
  static void store(double* p, reg v) { _mm512_storeu_pd(p, v); }
  static void store_partial(double* p, reg v, int n) { _mm512_mask_storeu_pd(p, tail_mask(n), v); }
  static void store_lanes(double* out, reg v) { _mm512_storeu_pd(out, v); }
  static reg in_register(reg x) {  // see Avx512
    asm("" : "+v"(x));
    return x;
  }
  static reg set1(double x) { return _mm512_set1_pd(x); }
  static reg zero() { return _mm512_setzero_pd(); }
  static reg min(reg a, reg b) { return _mm512_min_pd(a, b); }
  static reg max(reg a, reg b) { return _mm512_max_pd(a, b); }
  static reg add(reg a, reg b) { return _mm512_add_pd(a, b); }
  static reg sub(reg a, reg b) { return _mm512_sub_pd(a, b); }
  static reg mul(reg a, reg b) { return _mm512_mul_pd(a, b); }
  static reg round_nearest(reg x) { return _mm512_roundscale_pd(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static reg fmadd(reg a, reg b, reg c) { return _mm512_fmadd_pd(a, b, c); }
  static reg times_exp2(reg p, reg n) { return _mm512_scalef_pd(p, n); }
  static reg exp2(reg x) { return exp2_poly<Avx512Double>(x, kExp2PolyDouble); }  // to float64 precision
  // 14 bits, two Newton steps -> ~52 bits (a division costs several times more).
  static reg rcp(reg x) {
    reg r = _mm512_rcp14_pd(x);
    r = _mm512_mul_pd(r, _mm512_fnmadd_pd(x, r, _mm512_set1_pd(2.0)));
    return _mm512_mul_pd(r, _mm512_fnmadd_pd(x, r, _mm512_set1_pd(2.0)));
  }
  static double hsum(reg v) { return _mm512_reduce_add_pd(v); }
  // The min of the bits as signed 64-bit integers, where both operands are
  // >= +0 or -inf (as for float: there the integer order is the value order).
  static constexpr bool kBitsMin = true;
  static reg bits_min(reg a, reg b) {
    return _mm512_castsi512_pd(_mm512_min_epi64(_mm512_castpd_si512(a), _mm512_castpd_si512(b)));
  }
  static uint32_t outside_bits_domain_mask(reg x) {
    const __m512i b = _mm512_castpd_si512(x);
    return _mm512_cmplt_epi64_mask(b, _mm512_setzero_si512()) &
           _mm512_cmpneq_epi64_mask(b, _mm512_set1_epi64(int64_t(0xFFF0000000000000ull)));
  }
  static uint32_t nan_mask(reg x) { return _mm512_cmp_pd_mask(x, x, _CMP_UNORD_Q); }
  static uint32_t eq_mask(reg x, double h) { return _mm512_cmp_pd_mask(x, _mm512_set1_pd(h), _CMP_EQ_OQ); }
  // Bit l set where grad_goes_to_a(a[l], b[l]) (the gradient goes to A).
  static uint32_t le_mask(reg a, reg b) { return _mm512_cmp_pd_mask(a, b, _CMP_LE_OQ); }
  static void merge_max(double* c, reg acc) { _mm512_storeu_pd(c, _mm512_max_pd(_mm512_loadu_pd(c), acc)); }
  static void stream_line(double* dst, const double* src) { _mm512_stream_pd(dst, _mm512_loadu_pd(src)); }
  static void stream_fence() { _mm_sfence(); }
  // Appends (w[l], g[l]) where the winner goes to A (w >= 0); room for 8.
  static int compress_to_a(const int32_t* w, const double* g, int32_t* off, double* val) {
    const __m512i wv = load8(w);
    return store_compressed(__mmask16(Avx512::to_a_lanes(wv) & 0xFF), wv, _mm512_loadu_pd(g), off, val);
  }
  // Appends (~w[l] * stride + lane0 + l, g[l]) where the winner goes to B (w < 0).
  static int compress_to_b(const int32_t* w, const double* g, int32_t stride, int32_t lane0, int32_t* off,
                           double* val) {
    const __m512i wv = load8(w);
    return store_compressed(__mmask16(~Avx512::to_a_lanes(wv) & 0xFF), Avx512::b_offsets(wv, stride, lane0),
                            _mm512_loadu_pd(g), off, val);
  }
  // 8 int32 values as the low half of a 16-lane vector.
  static __m512i load8(const int32_t* p) {
    return _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static int store_compressed(__mmask16 keep, __m512i off, reg g, int32_t* off_out, double* val_out) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(off_out),
                        _mm512_castsi512_si256(_mm512_maskz_compress_epi32(keep, off)));
    _mm512_storeu_pd(val_out, _mm512_maskz_compress_pd(__mmask8(keep), g));
    return __builtin_popcount(unsigned(keep));
  }
  // The int32 stores below touch lanes 0-7 only (their masks are 8 bits).
  static void track(reg before, reg acc, int32_t* ids, int32_t id) {
    _mm512_mask_storeu_epi32(ids, _mm512_cmp_pd_mask(acc, before, _CMP_GT_OQ), _mm512_set1_epi32(id));
  }
  template <bool kEvery>
  static void track_winner(reg before, reg acc, reg a, reg b, int32_t* ids, int32_t r) {
    const __mmask16 at = kEvery ? __mmask16(0xFF) : __mmask16(_mm512_cmp_pd_mask(acc, before, _CMP_GT_OQ));
    _mm512_mask_storeu_epi32(ids, at, Avx512::encoded(__mmask16(le_mask(a, b)), r));
  }
  static void merge_max_track(double* c, int32_t* idx, reg acc, const int32_t* ids) {
    const __mmask8 gt = _mm512_cmp_pd_mask(acc, _mm512_loadu_pd(c), _CMP_GT_OQ);
    _mm512_mask_storeu_pd(c, gt, acc);
    _mm512_mask_storeu_epi32(idx, __mmask16(gt), load8(ids));
  }
};

}  // namespace simd
}  // namespace vico_flow
