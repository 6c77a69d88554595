// Kernel bodies of the CPU tropical products, written once against the vector
// wrapper V (simd_scalar.h, simd_avx2.h, simd_avx512.h) and compiled once per
// instruction set by kernels_<isa>.cpp. Each function does one task of the
// parallel loop in ops_cpu.cpp; see kernel_api.h for the data layouts.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>  // _mm_getcsr / _mm_setcsr (Kernels::FlushDenormals)
#endif

#include "../tropical_common.h"
#include "kernel_api.h"

namespace vico_flow {
namespace cpu {

template <class V>
struct Kernels {
  using T = typename V::value_type;
  using reg = typename V::reg;
  static constexpr int W = V::width;
  static constexpr int MR = V::hard_mr;
  static constexpr int NR = V::hard_nv * W;
  static_assert(kHardMC % MR == 0 && kHardNC % NR == 0, "cache tile must hold whole register tiles");
  // (p.mc is a multiple of kHardMC, hence of MR.)

  static T neg_inf() { return -std::numeric_limits<T>::infinity(); }
  static T pos_inf() { return std::numeric_limits<T>::infinity(); }

  // ------------------------------------------------------------ hard forward
  // Packs A[ic:ic+mc, r0:r0+kc] as MR-row strips, r-major (one strip = kp x MR),
  // padding missing rows and the depth beyond kc up to kp with -inf: the
  // identity of max, so pads never win (and never strictly raise a max).
  static void pack_a(const HardArgs<T>& p, int64_t bi, int64_t ic, int64_t mc, int64_t r0, int64_t kc, int64_t kp, T* dst) {
    const T* a = p.a + bi * p.a_sb;
    for (int64_t s = 0; s < mc; s += MR) {
      T* strip = dst + (s / MR) * kp * MR;
      for (int ii = 0; ii < MR; ++ii) {
        const int64_t i = ic + s + ii;
        if (s + ii < mc) {
          const T* row = a + i * p.a_si + r0 * p.a_sr;
          for (int64_t r = 0; r < kc; ++r) strip[r * MR + ii] = row[r * p.a_sr];
          for (int64_t r = kc; r < kp; ++r) strip[r * MR + ii] = neg_inf();
        } else {
          for (int64_t r = 0; r < kp; ++r) strip[r * MR + ii] = neg_inf();
        }
      }
    }
  }

  // Packs B[r0:r0+kc, jc:jc+nc] as NR-column strips (one strip = kp x NR).
  static void pack_b(const HardArgs<T>& p, int64_t bi, int64_t jc, int64_t nc, int64_t r0, int64_t kc, int64_t kp, T* dst) {
    const T* b = p.b + bi * p.b_sb;
    for (int64_t t = 0; t < nc; t += NR) {
      T* strip = dst + (t / NR) * kp * NR;
      const int64_t cols = std::min<int64_t>(NR, nc - t);
      for (int64_t r = 0; r < kc; ++r) {
        const T* row = b + (r0 + r) * p.b_sr + (jc + t) * p.b_sj;
        T* out = strip + r * NR;
        if (p.b_sj == 1) {
          for (int64_t jj = 0; jj < cols; ++jj) out[jj] = row[jj];
        } else {
          for (int64_t jj = 0; jj < cols; ++jj) out[jj] = row[jj * p.b_sj];
        }
        for (int64_t jj = cols; jj < NR; ++jj) out[jj] = neg_inf();
      }
      std::fill(strip + kc * NR, strip + kp * NR, neg_inf());
    }
  }

  // Where the argmax tracking of one register tile writes, per output: the
  // first r of the sub-chunk in which the running max last grew strictly,
  // i.e. where the first r reaching the max of the depth chunk lies. Stays in L1.
  struct Track {
    alignas(64) int32_t ids[MR * NR];
    alignas(64) T tile[MR * NR];  // the finished parts of the tile (see micro_tracked)
  };

  // One step of depth r for the first R rows of the A strip at ap (a strip
  // row holds MR values) and the NV vectors of the B strip row at bp (a strip
  // row holds NR values): to[i][v] = max(from[i][v], min(ap[r][i], bp[r][v])).
  // `to` may be `from`. kBits: the min on the operands' bits as integers
  // (V::bits_min), exact when every operand is >= +0 or -inf (see
  // scan_packed); it runs on the integer units, in parallel with the float max.
  template <int R, int NV, bool kBits>
  static inline __attribute__((always_inline)) void step(const T* ap, const T* bp, int64_t r,
                                                         const reg (&from)[R][NV], reg (&to)[R][NV]) {
    reg bv[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) bv[v] = V::in_register(V::load(bp + r * NR + v * W));
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
      const reg av = V::set1(ap[r * MR + i]);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v)
        to[i][v] = V::max(from[i][v], kBits ? V::bits_min(av, bv[v]) : V::min(av, bv[v]));
    }
  }

  // The steps of depths [r0, r1) into acc.
  template <int R, int NV, bool kBits>
  static inline void steps(const T* ap, const T* bp, int64_t r0, int64_t r1, reg (&acc)[R][NV]) {
    for (int64_t r = r0; r < r1; ++r) step<R, NV, kBits>(ap, bp, r, acc, acc);
  }

  // The register tile: acc[i][v] = max_r min(ap[r][i], bp[r][v]) over kc.
  template <bool kBits>
  static inline void micro(const T* ap, const T* bp, int64_t kc, reg (&acc)[MR][V::hard_nv]) {
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
      for (int v = 0; v < V::hard_nv; ++v) acc[i][v] = V::set1(neg_inf());
    steps<MR, V::hard_nv, kBits>(ap, bp, 0, kc, acc);
  }

  // The same tile with the argmax tracking: tr->ids = the first r of the
  // kHardSub-deep sub-chunk (counted from r_base, the depth chunk's first r)
  // holding the first r that reaches each max. The running max grows
  // strictly for the last time in that sub-chunk, so comparing the
  // accumulators with their values before each sub-chunk finds it without
  // touching the per-triple arithmetic. Those values must stay in registers
  // (a burst of stores per sub-chunk would fill the store queue), and so must
  // the B vectors (V::in_register: as memory operands of every instruction
  // the loads, not the arithmetic, bound the tile). So the tile is computed in
  // parts of H = V::hard_tracked_rows rows by TV = V::hard_tracked_nv vectors,
  // each over the whole depth, and each part alternates two sets of
  // accumulators (tracked_sub), so that no copy is made (copying made 24
  // register moves per sub-chunk). kc is a whole number of sub-chunks (the
  // packing pads the depth with -inf).
  //
  // Parts of whole rows read the B strip (kc x NR, from L2) once per part;
  // parts of whole columns read each B value once and the A strip (kc x MR,
  // in L1) once per part. On AVX-512 (Intel Xeon, 2 MB L2) the tracked
  // register tile ran at 43-44 G triples/s per core in 3-row parts, 51 in
  // 2-vector parts, 54 untracked (kc = 1024, one B strip against 32 A strips).
  template <bool kBits>
  static inline void micro_tracked(const T* ap, const T* bp, int64_t kc, reg (&out)[MR][V::hard_nv], Track* tr,
                                   int32_t r_base) {
    constexpr int H = V::hard_tracked_rows, TV = V::hard_tracked_nv;
    static_assert(MR % H == 0 && V::hard_nv % TV == 0, "the tracked tile runs in parts of whole rows and vectors");
    std::fill(tr->ids, tr->ids + MR * NR, r_base);  // where the max stays -inf, the first r holds it
#pragma GCC unroll 4
    for (int i0 = 0; i0 < MR; i0 += H) {
#pragma GCC unroll 4
      for (int v0 = 0; v0 < V::hard_nv; v0 += TV) tracked_part<H, TV, kBits>(ap + i0, bp + v0 * W, kc, i0, v0, tr, r_base);
    }
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
      for (int v = 0; v < V::hard_nv; ++v) out[i][v] = V::load(tr->tile + i * NR + v * W);
  }

  // One part of micro_tracked: rows i0.. (A strip from ap) and vectors v0..
  // (B strip from bp) of the tile, left in tr->tile. Not inlined, and its
  // result through memory: inlined, GCC kept the finished parts in registers
  // through the later ones and spilled a B vector of their inner loop (the
  // tracked 1024^3 product took ~12% longer).
  template <int H, int TV, bool kBits>
  __attribute__((noinline)) static void tracked_part(const T* ap, const T* bp, int64_t kc, int i0, int v0, Track* tr,
                                                     int32_t r_base) {
    int32_t* ids = tr->ids + i0 * NR + v0 * W;
    reg x[H][TV], y[H][TV];
#pragma GCC unroll 8
    for (int i = 0; i < H; ++i)
#pragma GCC unroll 8
      for (int v = 0; v < TV; ++v) x[i][v] = V::set1(neg_inf());
    int64_t r0 = 0;
    for (; r0 + 2 * kHardSub <= kc; r0 += 2 * kHardSub) {
      tracked_sub<H, TV, kBits>(ap, bp, r0, x, y, ids, r_base);
      tracked_sub<H, TV, kBits>(ap, bp, r0 + kHardSub, y, x, ids, r_base);
    }
    if (r0 < kc) {
      tracked_sub<H, TV, kBits>(ap, bp, r0, x, y, ids, r_base);
#pragma GCC unroll 8
      for (int i = 0; i < H; ++i)
#pragma GCC unroll 8
        for (int v = 0; v < TV; ++v) x[i][v] = y[i][v];
    }
#pragma GCC unroll 8
    for (int i = 0; i < H; ++i)
#pragma GCC unroll 8
      for (int v = 0; v < TV; ++v) V::store(tr->tile + (i0 + i) * NR + (v0 + v) * W, x[i][v]);
  }

  // The part's TV vectors of the B strip's row r, fetched into L1 ahead of
  // use. A part reads half the lines of each strip row (256 bytes apart),
  // which the hardware prefetchers bring in late: kTrackedAhead rows ahead,
  // the tracked register tile ran 2.5-3.5% faster (micro-benchmark, Intel
  // Xeon: 48.4-48.7 -> 50.0-50.3 G triples/s; 4, 8 and 32 rows gained less).
  // Past the strip's end it touches the next strip or nothing: a prefetch
  // never faults, and the address is formed as an integer, since a pointer
  // past the buffer would not be valid C++.
  static constexpr int64_t kTrackedAhead = 16;
  template <int TV>
  static inline __attribute__((always_inline)) void prefetch_b_row(const T* bp, int64_t r) {
    constexpr int kLines = int((TV * W * sizeof(T) + 63) / 64);
    const uintptr_t row = reinterpret_cast<uintptr_t>(bp) + uintptr_t(r * NR) * sizeof(T);
#pragma GCC unroll 4
    for (int q = 0; q < kLines; ++q) __builtin_prefetch(reinterpret_cast<const void*>(row + 64 * q));
  }

  // One sub-chunk [r0, r0 + kHardSub) of a part of micro_tracked: `to` =
  // `from` advanced over it (its first step writes `to` from `from`, which is
  // left as it was), and ids = r_base + r0 where the max grew (ids: the
  // part's first output; rows NR apart).
  template <int H, int TV, bool kBits>
  static inline __attribute__((always_inline)) void tracked_sub(const T* ap, const T* bp, int64_t r0,
                                                                const reg (&from)[H][TV], reg (&to)[H][TV],
                                                                int32_t* ids, int32_t r_base) {
    step<H, TV, kBits>(ap, bp, r0, from, to);
    prefetch_b_row<TV>(bp, r0 + kTrackedAhead);
    for (int64_t r = r0 + 1; r < r0 + kHardSub; ++r) {
      step<H, TV, kBits>(ap, bp, r, to, to);
      prefetch_b_row<TV>(bp, r + kTrackedAhead);
    }
    const int32_t first_r = r_base + int32_t(r0);
#pragma GCC unroll 8
    for (int i = 0; i < H; ++i)
#pragma GCC unroll 8
      for (int v = 0; v < TV; ++v) V::track(from[i][v], to[i][v], ids + i * NR + v * W, first_r);
  }

  // Merges a register tile into C: the first depth chunk overwrites, later
  // ones take the max and (with `tr`) copy the sub-chunk of a strictly larger
  // value, which keeps the first-index tie rule across chunks.
  static void store_tile(const HardArgs<T>& p, reg (&acc)[MR][V::hard_nv], const Track* tr, int64_t bi, int64_t i0,
                         int64_t j0, int rows, int cols, bool first_chunk) {
    T* c = p.c + (bi * p.m + i0) * p.n + j0;
    int32_t* sub = tr ? p.sub + (bi * p.m + i0) * p.n + j0 : nullptr;
    if (rows == MR && cols == NR) {
      for (int i = 0; i < MR; ++i)
        for (int v = 0; v < V::hard_nv; ++v) {
          T* cp = c + i * p.n + v * W;
          if (first_chunk) {
            V::store(cp, acc[i][v]);
          } else if (tr) {
            V::merge_max_track(cp, sub + i * p.n + v * W, acc[i][v], tr->ids + i * NR + v * W);
          } else {
            V::merge_max(cp, acc[i][v]);
          }
        }
      if (tr && first_chunk)
        for (int i = 0; i < MR; ++i) store_ids(p, tr->ids + i * NR, sub + i * p.n);
      return;
    }
    T tmp[NR];
    for (int i = 0; i < rows; ++i) {
      for (int v = 0; v < V::hard_nv; ++v) V::store_lanes(tmp + v * W, acc[i][v]);
      for (int j = 0; j < cols; ++j) {
        T* cp = c + i * p.n + j;
        if (first_chunk || hard_replaces(tmp[j], *cp)) {
          *cp = tmp[j];
          if (tr) sub[i * p.n + j] = tr->ids[i * NR + j];
        }
      }
    }
  }

  // One row of a tile's sub-chunk ids (NR of them) into p.sub at out. The
  // vector stores move the ids' bits as they are (64 bytes a line, whatever
  // T is).
  static void store_ids(const HardArgs<T>& p, const int32_t* ids, int32_t* out) {
    if constexpr (V::kStream) {
      static_assert(NR * sizeof(int32_t) % 64 == 0, "a tile row of ids is whole 64-byte lines");
      if (p.stream_sub && reinterpret_cast<uintptr_t>(out) % 64 == 0) {
        constexpr int kPerLine = 64 / int(sizeof(int32_t));
        for (int q = 0; q < NR; q += kPerLine)
          V::stream_line(reinterpret_cast<T*>(out + q), reinterpret_cast<const T*>(ids + q));
        return;
      }
    }
    std::copy(ids, ids + NR, out);
  }

  // A packed block of n values: notes NaN in *p.nan_seen (when given) and
  // tells whether the block may use V::bits_min, i.e. whether every value is
  // >= +0 or -inf (the capacities of an attention graph: weights, and -inf
  // for "no edge"). There the order of the bits as signed integers is the
  // order of the values. One pass does both.
  static bool scan_packed(const HardArgs<T>& p, const T* x, int64_t n) {
    if (!V::kBitsMin && !p.nan_seen) return false;
    uint32_t bad = 0, outside = 0;
    int64_t q = 0;
    for (; q + W <= n; q += W) {
      const reg v = V::load(x + q);
      bad |= V::nan_mask(v);
      if constexpr (V::kBitsMin) outside |= V::outside_bits_domain_mask(v);
    }
    for (; q < n; ++q) {
      bad |= std::isnan(x[q]) ? 1u : 0u;
      outside |= (std::signbit(x[q]) && x[q] != neg_inf()) ? 1u : 0u;
    }
    if (bad && p.nan_seen) p.nan_seen->store(1, std::memory_order_relaxed);
    return V::kBitsMin && !outside && !bad;
  }

  // HardArgs::small(): whole products, one output row at a time, W columns per
  // vector. B's rows are read in place when they are whole vectors
  // (contiguous, n a multiple of W); otherwise they are gathered into a
  // buffer first, padded with -inf (an element-by-element gather of every
  // product took ~45% of this path's time).
  static void hard_small(const HardArgs<T>& p, int64_t task) {
    thread_local std::vector<T> bbuf;
    const int64_t npad = ceil_div(p.n, W) * W;
    const bool in_place = p.b_sj == 1 && p.n == npad;
    if (!in_place) bbuf.resize(size_t(std::max<int64_t>(p.k * npad, 1)));
    const int64_t per = p.products_per_task();
    for (int64_t bi = task * per, b_end = std::min(p.batch, bi + per); bi < b_end; ++bi) {
      const T* a = p.a + bi * p.a_sb;
      const T* b = p.b + bi * p.b_sb;
      // scan_packed only looks for NaN here: this path keeps the float min.
      const T* bt = b;
      int64_t bt_sr = p.b_sr;
      if (in_place) {
        if (p.nan_seen && p.b_sr == npad)
          scan_packed(p, b, p.k * npad);
        else if (p.nan_seen)
          for (int64_t r = 0; r < p.k; ++r) scan_packed(p, b + r * p.b_sr, npad);
      } else {
        for (int64_t r = 0; r < p.k; ++r) {
          const T* row = b + r * p.b_sr;
          T* out = bbuf.data() + r * npad;
          if (p.b_sj == 1)
            std::copy(row, row + p.n, out);
          else
            for (int64_t j = 0; j < p.n; ++j) out[j] = row[j * p.b_sj];
          std::fill(out + p.n, out + npad, neg_inf());
        }
        if (p.nan_seen) scan_packed(p, bbuf.data(), p.k * npad);
        bt = bbuf.data();
        bt_sr = npad;
      }
      if (p.nan_seen) {
        if (p.a_sr == 1) {
          for (int64_t i = 0; i < p.m; ++i) scan_packed(p, a + i * p.a_si, p.k);
        } else {
          bool bad = false;
          for (int64_t i = 0; i < p.m; ++i)
            for (int64_t r = 0; r < p.k; ++r) bad |= std::isnan(a[i * p.a_si + r * p.a_sr]);
          if (bad) p.nan_seen->store(1, std::memory_order_relaxed);
        }
      }
      // Four rows at a time: four independent max chains hide the latency.
      // The row count is a compile-time one, so that the accumulators stay in
      // registers (with a runtime count they went through the stack; with
      // that and a separate encoding pass, the 2560 products [4x16]x[16x16]
      // took 0.39 ms with winners, 0.11 ms without; now 0.17 and 0.09).
      for (int64_t i0 = 0; i0 < p.m; i0 += kSmallRows) {
        for (int64_t j0 = 0; j0 < p.n; j0 += W) {
          switch (std::min<int64_t>(kSmallRows, p.m - i0)) {
            case 1: small_block<1>(p, a, bt, bt_sr, bi, i0, j0); break;
            case 2: small_block<2>(p, a, bt, bt_sr, bi, i0, j0); break;
            case 3: small_block<3>(p, a, bt, bt_sr, bi, i0, j0); break;
            default: small_block<kSmallRows>(p, a, bt, bt_sr, bi, i0, j0); break;
          }
        }
      }
    }
  }

  // Rows i0..i0+R of product bi, the W columns from j0, of hard_small (B's
  // rows at bt, bt_sr apart).
  static constexpr int kSmallRows = 4;
  template <int R>
  static inline __attribute__((always_inline)) void small_block(const HardArgs<T>& p, const T* a, const T* bt,
                                                                int64_t bt_sr, int64_t bi, int64_t i0, int64_t j0) {
    reg acc[R];
    int32_t won[R][W] = {};  // encoded winners (0 when k == 0)
#pragma GCC unroll 4
    for (int ii = 0; ii < R; ++ii) acc[ii] = V::set1(neg_inf());
    // One r: with kTrack, won[ii] takes r and its side wherever the running
    // max grows strictly (its last strict growth is at its first r), so these
    // products need no winner search; at r = 0 every lane takes it, which
    // covers maxima that stay -inf.
    auto step = [&]<bool kTrack, bool kFirst>(int64_t r) __attribute__((always_inline)) {
      const reg bv = V::load(bt + r * bt_sr + j0);
#pragma GCC unroll 4
      for (int ii = 0; ii < R; ++ii) {
        const reg av = V::set1(a[(i0 + ii) * p.a_si + r * p.a_sr]);
        const reg before = acc[ii];
        acc[ii] = V::max(acc[ii], V::min(av, bv));
        if constexpr (kTrack) V::template track_winner<kFirst>(before, acc[ii], av, bv, won[ii], int32_t(r));
      }
    };
    if (!p.sub) {
      for (int64_t r = 0; r < p.k; ++r) step.template operator()<false, false>(r);
    } else if (p.k > 0) {
      step.template operator()<true, true>(0);
      for (int64_t r = 1; r < p.k; ++r) step.template operator()<true, false>(r);
    }
    const int cols = int(std::min<int64_t>(W, p.n - j0));
#pragma GCC unroll 4
    for (int ii = 0; ii < R; ++ii) {
      const int64_t out = (bi * p.m + i0 + ii) * p.n + j0;
      V::store_partial(p.c + out, acc[ii], cols);
      if (p.sub) std::copy(won[ii], won[ii] + cols, p.sub + out);
    }
  }

  static void hard(const HardArgs<T>& p, int64_t task) {
    if (p.small()) return hard_small(p, task);
    const int64_t tiles_n = ceil_div(p.n, kHardNC), tiles_m = ceil_div(p.m, p.mc);
    const int64_t jt = task % tiles_n, it = (task / tiles_n) % tiles_m, bi = task / (tiles_n * tiles_m);
    const int64_t ic = it * p.mc, jc = jt * kHardNC;
    const int64_t mc = std::min(p.mc, p.m - ic), nc = std::min(kHardNC, p.n - jc);
    if (p.k == 0) {  // empty max: -inf everywhere
      for (int64_t i = 0; i < mc; ++i) {
        std::fill(p.c + (bi * p.m + ic + i) * p.n + jc, p.c + (bi * p.m + ic + i) * p.n + jc + nc, neg_inf());
        if (p.sub) std::fill(p.sub + (bi * p.m + ic + i) * p.n + jc, p.sub + (bi * p.m + ic + i) * p.n + jc + nc, 0);
      }
      return;
    }
    thread_local std::vector<T> abuf, bbuf;
    thread_local Track track;
    Track* tr = p.sub ? &track : nullptr;
    const int64_t mc_pad = ceil_div(mc, MR) * MR, nc_pad = ceil_div(nc, NR) * NR;
    const int64_t depth = std::min(kHardKC, ceil_div(p.k, kHardSub) * kHardSub);  // the deepest chunk, padded
    if (!p.pa) abuf.resize(size_t(mc_pad * depth));
    if (!p.pb) bbuf.resize(size_t(nc_pad * depth));
    for (int64_t r0 = 0, chunk = 0; r0 < p.k; r0 += kHardKC, ++chunk) {
      const int64_t kc = p.chunk_depth(chunk), kp = p.packed_depth(kc);
      // The blocks of this task, packed once for the product or here; each is
      // scanned as it is packed (noting NaN), then the ops they allow are picked.
      const T* const ablock = p.pa ? p.pa + p.packed_offset(p.a_strips(), MR, bi, chunk, ic / MR) : abuf.data();
      const T* const bblock = p.pb ? p.pb + p.packed_offset(p.b_strips(), NR, bi, chunk, jc / NR) : bbuf.data();
      bool bits;
      if (p.pb) {
        bits = all_bits(p.pb_bits + p.strip_index(p.b_strips(), bi, chunk, jc / NR), nc_pad / NR);
      } else {
        pack_b(p, bi, jc, nc, r0, kc, kp, bbuf.data());
        bits = scan_packed(p, bbuf.data(), nc_pad * kp);
      }
      if (p.pa) {
        bits = all_bits(p.pa_bits + p.strip_index(p.a_strips(), bi, chunk, ic / MR), mc_pad / MR) && bits;
      } else {
        pack_a(p, bi, ic, mc, r0, kc, kp, abuf.data());
        bits = scan_packed(p, abuf.data(), mc_pad * kp) && bits;
      }
      // A B strip (kc x NR, up to 256 KB) stays in L2 while the A strips
      // (MR x kc) stream past it.
      for (int64_t t = 0; t < nc; t += NR) {
        const T* bp = bblock + (t / NR) * kp * NR;
        for (int64_t si = 0; si < mc; si += MR) {
          reg acc[MR][V::hard_nv];
          const T* ap = ablock + (si / MR) * kp * MR;
          if (tr && bits)
            micro_tracked<true>(ap, bp, kp, acc, tr, int32_t(r0));
          else if (tr)
            micro_tracked<false>(ap, bp, kp, acc, tr, int32_t(r0));
          else if (bits)
            micro<true>(ap, bp, kp, acc);
          else
            micro<false>(ap, bp, kp, acc);
          store_tile(p, acc, tr, bi, ic + si, jc + t, int(std::min<int64_t>(MR, mc - si)),
                     int(std::min<int64_t>(NR, nc - t)), r0 == 0);
        }
      }
    }
    if (tr && p.stream_sub) V::stream_fence();  // the search (another parallel region) reads the ids
  }

  // One task of packing the operands once for the whole product (HardArgs::pa,
  // pb): kPackStripsA strips of A or one strip of B, of one depth chunk of one
  // product, packed as `hard` would pack them and scanned (NaN noted, bits_min
  // flag per strip).
  static void hard_pack(const HardArgs<T>& p, int64_t task) {
    const int64_t per_chunk = p.pack_a_tasks() + p.pack_b_tasks();
    const int64_t bi = task / (p.chunks() * per_chunk), chunk = task / per_chunk % p.chunks(), q = task % per_chunk;
    const int64_t r0 = chunk * kHardKC, kc = p.chunk_depth(chunk), kp = p.packed_depth(kc);
    if (q < p.pack_a_tasks()) {
      const int64_t s0 = q * HardArgs<T>::kPackStripsA, s1 = std::min(p.a_strips(), s0 + HardArgs<T>::kPackStripsA);
      T* const dst = p.pa + p.packed_offset(p.a_strips(), MR, bi, chunk, s0);
      pack_a(p, bi, s0 * MR, std::min(p.m, s1 * MR) - s0 * MR, r0, kc, kp, dst);
      for (int64_t s = s0; s < s1; ++s)
        p.pa_bits[p.strip_index(p.a_strips(), bi, chunk, s)] = scan_packed(p, dst + (s - s0) * kp * MR, kp * MR);
    } else {
      const int64_t t = q - p.pack_a_tasks();
      T* const dst = p.pb + p.packed_offset(p.b_strips(), NR, bi, chunk, t);
      const int64_t cols = std::min<int64_t>(NR, p.n - t * NR);
      pack_b(p, bi, t * NR, cols, r0, kc, kp, dst);
      p.pb_bits[p.strip_index(p.b_strips(), bi, chunk, t)] = scan_packed(p, dst, kp * NR);
      if (p.bt) transpose_strip(dst, kc, cols, p.bt + (bi * p.n + t * NR) * p.k + r0, p.k);
    }
  }

  // B^T from a packed B strip (kc x NR, in cache: just written): its `cols`
  // columns into the rows of bt, ldt apart, kc values each, by the
  // transposed copy's own tasks (16 rows of the strip each).
  static void transpose_strip(const T* strip, int64_t kc, int64_t cols, T* bt, int64_t ldt) {
    TransposeArgs<T> t{strip, 0, NR, 1, bt, 1, kc, cols};
    t.ld = ldt;
    for (int64_t task = 0; task < t.num_tasks(); ++task) transpose(t, task);
  }

  static bool all_bits(const uint8_t* flags, int64_t count) {
    return std::all_of(flags, flags + count, [](uint8_t f) { return f != 0; });
  }

  // ------------------------------------------------------------ hard argmax
  // kRows rows of outputs, or a column block of them (ArgmaxArgs). Each row
  // of C and of the ids starts a page (at 1024 columns), where the hardware
  // prefetchers stop, and the ids come from memory (streamed stores): the
  // task fetches them kRowsAhead rows ahead: at 1024^3 the search took
  // 1.3-1.5 ms instead of 1.8-2.0. (Kept inline: moved into a helper
  // function of their own, these prefetches were missing from the compiled
  // code, GCC 12 -O3, objdump.)
  static void argmax(const ArgmaxArgs<T>& p, int64_t task) {
    constexpr int64_t R = ArgmaxArgs<T>::kRows, kRowsAhead = 2;
    const int64_t cols = p.cols_per_task(), col_blocks = ceil_div(p.n, cols);
    const int64_t j0 = (task % col_blocks) * cols, j1 = std::min(p.n, j0 + cols);
    const int64_t row_task = task / col_blocks, row_tasks = ceil_div(p.m, R);
    const int64_t bi = row_task / row_tasks, i0 = (row_task % row_tasks) * R, i1 = std::min(p.m, i0 + R);
    for (int64_t i = i0; i < i1; ++i) {
      if (i + kRowsAhead < i1) {
        const int64_t ahead = (bi * p.m + i + kRowsAhead) * p.n;
        for (int64_t q = j0; q < j1; q += 64 / int64_t(sizeof(int32_t))) __builtin_prefetch(p.idx + ahead + q);
        for (int64_t q = j0; q < j1; q += 64 / int64_t(sizeof(T))) __builtin_prefetch(p.c + ahead + q);
      }
      search_row(p, bi, i, j0, j1);
    }
  }

  // Outputs (i, j_begin..j_end): turn each winning sub-chunk (held as its
  // first r) into the first r in it whose min(A[i,r], B[r,j]) equals C[i,j]
  // (the first-index tie rule), and record where its gradient goes. This
  // runs once per output, so it is split in two passes that keep the
  // per-output work to loads, compares and mask stores: pass 1 notes, per
  // output, which lanes of the sub-chunk reach C (eq) and where A <= B (le);
  // pass 2 turns kSeg of those mask pairs into encoded winners, W outputs per
  // vector where the ISA can.
  static constexpr int64_t kSeg = 256;
  static void search_row(const ArgmaxArgs<T>& p, int64_t bi, int64_t i, int64_t j_begin, int64_t j_end) {
    static_assert(kHardSub % W == 0 && kHardSub <= 16, "a sub-chunk is whole vectors, its bits one uint16");
    const T* const a = p.a + (bi * p.m + i) * p.k;
    const T* const c = p.c + (bi * p.m + i) * p.n;
    const T* const btb = p.bt + bi * p.bt_sb;
    int32_t* const idx = p.idx + (bi * p.m + i) * p.n;
    const int64_t k = p.k, sj = p.bt_sj, sr = p.bt_sr;
    if (sr != 1) {  // few rows: B read in place, down its column
      for (int64_t j = j_begin; j < j_end; ++j) {
        const T* bt = btb + j * sj;
        const int64_t r0 = idx[j], r1 = std::min(k, r0 + kHardSub);
        const int64_t by_a = winner_by_a(a, r0, r1, c[j]);
        if (by_a >= 0) {
          idx[j] = encode_winner(by_a, a[by_a] == c[j]);
          continue;
        }
        int64_t found = r0;  // the max is attained in its sub-chunk; r0 keeps a miss in range regardless
        for (int64_t r = r1 - 1; r >= r0; --r)
          if (tmin(a[r], bt[r * sr]) == c[j]) found = r;
        idx[j] = encode_winner(found, grad_goes_to_a(a[found], bt[found * sr]));
      }
      return;
    }
    constexpr int64_t kAhead = ArgmaxArgs<T>::kAhead;
    alignas(64) uint16_t eqs[kSeg], les[kSeg];
    const int32_t full_end = int32_t(k / kHardSub * kHardSub);  // the sub-chunks before it hold kHardSub values
    for (int64_t s0 = j_begin; s0 < j_end; s0 += kSeg) {
      const int64_t s1 = std::min(j_end, s0 + kSeg), ahead_end = std::max(s0, std::min(s1, j_end - kAhead));
      if (full_end == k)  // no ragged last sub-chunk: the loop has no call in it
        search_pass1<false>(a, btb + s0 * sj, sj, k, full_end, idx, c, s0, s1, ahead_end, eqs, les);
      else
        search_pass1<true>(a, btb + s0 * sj, sj, k, full_end, idx, c, s0, s1, ahead_end, eqs, les);
      encode_winners(eqs, les, idx + s0, int(s1 - s0));
    }
  }

  // The winner of an output with value h in the sub-chunk [r0, r1) of A's
  // row at a, where A alone tells it, else -1. The winning r has
  // A[i, r] >= h; where only one r of the sub-chunk has, it is that r, and
  // its gradient goes to A iff A[i, r] == h (A == h <= B; else B == h < A).
  // Down B's columns each output's sub-chunk costs kHardSub cache lines of
  // B, and A alone settles most outputs: 2/3 to 4/5 of them on uniform
  // values. (Against the transposed copy, one line per output, the same
  // first pass cost more than the lines it saved: 5-17% slower search.)
  static int64_t winner_by_a(const T* a, int64_t r0, int64_t r1, T h) {
    uint32_t ge = 0;
    if (r1 - r0 == kHardSub) {
      const reg hv = V::set1(h);
#pragma GCC unroll 16
      for (int v = 0; v < int(kHardSub / W); ++v) ge |= V::le_mask(hv, V::load(a + r0 + v * W)) << (v * W);
    } else {
      for (int64_t r = r0; r < r1; ++r) ge |= uint32_t(a[r] >= h) << (r - r0);
    }
    return ge != 0 && (ge & (ge - 1)) == 0 ? r0 + __builtin_ctz(ge) : -1;
  }

  // Pass 1 of search_row for outputs s0..s1 of a row (B^T's row s0 at bt).
  // The segments are scattered over B^T and the row of A: both are fetched
  // kAhead outputs ahead (up to ahead_end). kRagged: whether the last
  // sub-chunk is short; without it the loop holds no call, whose saved
  // registers the compiler would otherwise spill.
  template <bool kRagged>
  static void search_pass1(const T* a, const T* bt, int64_t sj, int64_t k, int32_t full_end, const int32_t* idx,
                           const T* c, int64_t s0, int64_t s1, int64_t ahead_end, uint16_t* eqs, uint16_t* les) {
    constexpr int64_t kAhead = ArgmaxArgs<T>::kAhead;
    int64_t j = s0;
    for (; j < ahead_end; ++j, bt += sj) {
      const int64_t later = idx[j + kAhead];
      __builtin_prefetch(bt + kAhead * sj + later);
      __builtin_prefetch(a + later);
      search_masks<kRagged>(a, bt, k, full_end, idx[j], c + j, eqs + (j - s0), les + (j - s0));
    }
    for (; j < s1; ++j, bt += sj) search_masks<kRagged>(a, bt, k, full_end, idx[j], c + j, eqs + (j - s0), les + (j - s0));
  }

  // Pass 1 of search_row for one output: the eq and le masks of the
  // sub-chunk from r0 of A's row at a and B^T's row at bt, against the output
  // at c. (Held as its first r, the sub-chunk addresses the operands with no
  // arithmetic: 17 instructions per output instead of 21; the search's time,
  // bound by its scattered loads, changed within noise at 1024^3.)
  template <bool kRagged>
  static inline __attribute__((always_inline)) void search_masks(const T* a, const T* bt, int64_t k, int32_t full_end,
                                                                 int32_t r0, const T* c, uint16_t* eq_out,
                                                                 uint16_t* le_out) {
    if (kRagged && r0 >= full_end) {  // the ragged last sub-chunk, out of the hot path
      search_ragged(a + r0, bt + r0, int(k - r0), *c, eq_out, le_out);
      return;
    }
    uint32_t eq = 0, le = 0;
#pragma GCC unroll 16
    for (int v = 0; v < int(kHardSub / W); ++v) {
      const reg va = V::load(a + r0 + v * W), vb = V::load(bt + r0 + v * W);
      eq |= V::eq_mask(V::min(va, vb), *c) << (v * W);
      le |= V::le_mask(va, vb) << (v * W);
    }
    *eq_out = uint16_t(eq);
    *le_out = uint16_t(le);
  }

  // Pass 1 of search_row for a sub-chunk of len < kHardSub values at as, bs:
  // lanes past the end never match, and a (never expected) miss is pointed at
  // lane 0 so that the winner stays inside the operands.
  __attribute__((noinline)) static void search_ragged(const T* as, const T* bs, int len, T h, uint16_t* eq_out,
                                                      uint16_t* le_out) {
    uint32_t eq = 0, le = 0;
    for (int v = 0; v * W < len; ++v) {
      const int cnt = std::min(W, len - v * W);
      const uint32_t lanes = cnt < W ? (uint32_t(1) << cnt) - 1 : ~uint32_t(0);
      const reg va = V::load_partial(as + v * W, cnt, T(0)), vb = V::load_partial(bs + v * W, cnt, T(0));
      eq |= (V::eq_mask(V::min(va, vb), h) & lanes) << (v * W);
      le |= (V::le_mask(va, vb) & lanes) << (v * W);
    }
    *eq_out = uint16_t(eq ? eq : 1u);
    *le_out = uint16_t(le);
  }

  // Pass 2 of search_row: idx[q] (in: the winning sub-chunk's first r) =
  // encode_winner(first lane of eq[q], le bit there), W at a time where the ISA has
  // V::encode_winners. The top lane is or-ed into eq so that a miss (never
  // expected) stays inside the sub-chunk without a branch.
  static void encode_winners(const uint16_t* eq, const uint16_t* le, int32_t* idx, int cnt) {
    int q = 0;
    if constexpr (V::kEncodeWinners) {
      for (; q + W <= cnt; q += W) V::encode_winners(eq + q, le + q, idx + q, int32_t(kHardSub));
    }
    for (; q < cnt; ++q) {
      const int t = __builtin_ctz(uint32_t(eq[q]) | (uint32_t(1) << (kHardSub - 1)));
      idx[q] = encode_winner(int64_t(idx[q]) + t, (le[q] >> t) & 1u);
    }
  }

  // ------------------------------------------------------------ soft forward
  // One term of the soft sum (tropical_common.h): 1 / (2^(h' - a') + 2^(h' - b')).
  static inline reg soft_term(reg hs, reg as, reg bs) { return V::rcp(V::add(V::exp2(V::sub(hs, as)), V::exp2(V::sub(hs, bs)))); }

  // g * x p^2 for x = u or v, p = 1 / (u + v): x p (<= 1) first, since p^2
  // alone overflows where u + v is tiny (A or B at +inf), and g = 0 times
  // that is NaN.
  static inline reg soft_grad_part(reg x, reg pr, reg g) { return V::mul(g, V::mul(V::mul(x, pr), pr)); }

  // The gradient's terms against an output value h (C, or H in the one-column
  // forward): u = 2^((h-a)s), v = 2^((h-b)s) and pr = 1/(u+v), each
  // difference taken before the scaling. Scaled first (h*s - a*s), the two
  // products are rounded at ~s times the values' magnitude: at tau = 0.01 the
  // float32 gradients of [128x512]x[512x96] erred by up to 9.8e-6 of the
  // largest against the float64 reference, 3.6x the float32 reference's own
  // error (the one-column kernels: ~3e-4 of each weight at values ~50).
  struct ColTerms {
    reg u, v, pr;
  };
  static inline ColTerms col_terms(reg h, reg a, reg b, reg sv) {
    const reg u = V::exp2(V::mul(V::sub(h, a), sv)), v = V::exp2(V::mul(V::sub(h, b), sv));
    return {u, v, V::rcp(V::add(u, v))};
  }

  // One term of dC/dB from unscaled c, a, b: g * v p^2 (col_terms).
  static inline reg soft_grad_term(reg c, reg a, reg b, reg g, reg sv) {
    const ColTerms t = col_terms(c, a, b, sv);
    return soft_grad_part(t.v, t.pr, g);
  }

  // For a group of V::soft_nv vectors of which only `cols` columns are
  // valid (cols < soft_nv * W): runs f.template operator()<NVP>() with NVP
  // the vectors that hold them. A compile-time count keeps the accumulators
  // of the soft loops in registers: with a runtime count they went through
  // the stack, a store-to-load round trip per term, which bounded narrow
  // products (the soft forward of 2560 batched 16-column products took 25-33%
  // less). Whole groups call the same group function directly: run through
  // this lambda too, their arrays left registers (the 1024^3 soft backward
  // took 7% longer).
  template <class F>
  static inline __attribute__((always_inline)) void with_partial_group(int cols, F&& f) {
    constexpr int NV = V::soft_nv;
    switch (int(ceil_div(cols, W))) {
      case 1: f.template operator()<1>(); break;
      case 2: f.template operator()<(NV < 2 ? NV : 2)>(); break;
      case 3: f.template operator()<(NV < 3 ? NV : 3)>(); break;
      default: f.template operator()<NV>(); break;
    }
  }

  // One vector group of soft_fwd: acc[v] += the terms of the listed rows r of
  // B (at bcol + r * ldb) for NVP vectors, of which `cols` columns are valid
  // unless kWhole (all NVP * W). Inlined with its arrays: they stay in registers.
  template <int NVP, bool kWhole>
  static inline __attribute__((always_inline)) void soft_fwd_group(const int32_t* active, int64_t na, const T* arow,
                                                                   const T* bcol, int64_t ldb, T scale, int cols,
                                                                   const reg* hs, reg* acc) {
    for (int64_t q = 0; q < na; ++q) {
      const int64_t r = active[q];
      const reg av = V::set1(arow[r] * scale);
      const T* brow = bcol + r * ldb;
#pragma GCC unroll 8
      for (int v = 0; v < NVP; ++v) {
        const reg b = kWhole ? V::load(brow + v * W) : V::load_partial(brow + v * W, cols - v * W, T(0));
        acc[v] = V::add(acc[v], soft_term(hs[v], av, b));
      }
    }
  }

  // One vector group of the factored soft sum (see soft_fwd): acc[v] +=
  // 1 / (ea[r] + eb[r][v]) over the listed rows r, eb's rows ldeb apart from
  // ebcol. Every lane of eb up to the tile's last whole vector is a finite
  // number (past the tile's end: 1), so whole vectors are read; NVP only
  // bounds how many.
  template <int NVP>
  static inline __attribute__((always_inline)) void soft_fwd_factored_group(const int32_t* active, int64_t na,
                                                                            const T* ea, const T* ebcol, int64_t ldeb,
                                                                            reg* acc) {
    for (int64_t q = 0; q < na; ++q) {
      const int64_t r = active[q];
      const reg av = V::set1(ea[r]);
      const T* erow = ebcol + r * ldeb;
#pragma GCC unroll 8
      for (int v = 0; v < NVP; ++v) acc[v] = V::add(acc[v], V::rcp(V::add(av, V::load(erow + v * W))));
    }
  }

  // The factors EA / EB of the factored soft terms: dst[q] = 2^(g - src[q] * scale)
  // for q < n, in whole vectors (the lanes past n take src = fill).
  static void exp2_shifted(T* dst, const T* src, int64_t n, T g, T scale, T fill) {
    const reg gv = V::set1(g), sv = V::set1(scale);
    for (int64_t q = 0; q < n; q += W)
      V::store(dst + q, V::exp2(V::sub(gv, V::mul(V::load_partial(src + q, int(n - q), fill), sv))));
  }

  // The gradient's factors EA / EB: dst[q] = 2^((g - src[q]) * scale), the
  // difference taken before the scaling (see col_terms), g unscaled.
  static void exp2_gap(T* dst, const T* src, int64_t n, T g, T scale) {
    const reg gv = V::set1(g), sv = V::set1(scale);
    for (int64_t q = 0; q < n; q += W)
      V::store(dst + q, V::exp2(V::mul(V::sub(gv, V::load_partial(src + q, int(n - q), g)), sv)));
  }

  // Rows i of a task, columns of one kSoftJT tile. For each row, the r whose
  // scaled A lies below (min shift of the tile) - cut contribute < 2^-cut each
  // to every output of the tile and are skipped; the rest are listed once and
  // swept for every vector group of the tile.
  //
  // Most rows take the factored sum: with g the task's lowest scaled shift,
  //   2^(h'-a') + 2^(h'-b') = 2^(h'-g) (EA + EB),  EA = 2^(g-a'), EB = 2^(g-b'),
  // so  sum_r term = 2^(g-h') sum_r 1 / (EA[i,r] + EB[r,j]).  EB is computed
  // once per task (k x kSoftJT exp2, shared by its kSoftFwdRows rows), EA once
  // per row, and a term costs an add and a reciprocal instead of two exp2.
  // A row takes it when its shifts lie within kSoftFactorSpread of g. Then
  // every term that counts (>= 2^-cut) has max(EA, EB) in
  // [2^-kSoftFactorSpread, 2^cut], so the exp2 clamp at 2^-+100 (kExp2Clamp)
  // changes the other one by at most 2^(kSoftFactorSpread-100) of that
  // term; terms that do not count stay finite (EA + EB <= 2^101). Other rows
  // take the direct terms.
  static void soft_fwd(const SoftFwdArgs<T>& p, int64_t task) {
    constexpr int NV = V::soft_nv;
    constexpr int G = NV * W;
    static_assert(kSoftJT % G == 0, "a tile holds whole vector groups");
    // Consecutive tasks take consecutive rows of the same column tile, so that
    // the tile of B (k x kSoftJT values, read for EB and by the direct terms)
    // stays in cache between them.
    const int64_t tiles_n = ceil_div(p.n, kSoftJT), tiles_m = ceil_div(p.m, kSoftFwdRows);
    const int64_t it = task % tiles_m, jt = (task / tiles_m) % tiles_n, bi = task / (tiles_n * tiles_m);
    const int64_t j_begin = jt * kSoftJT, j_end = std::min(p.n, j_begin + kSoftJT);
    const int64_t i_begin = it * kSoftFwdRows, i_end = std::min(p.m, i_begin + kSoftFwdRows);
    thread_local std::vector<int32_t> active;
    thread_local std::vector<T> ea, eb;
    active.resize(size_t(p.k));
    const T* bs = p.bs + bi * p.k * p.n;
    // Each row's lowest and highest finite shift H of the tile, and g.
    T hmin[kSoftFwdRows], hmax[kSoftFwdRows];
    T g = pos_inf();
    for (int64_t i = i_begin; i < i_end; ++i) {
      const T* c = p.c + (bi * p.m + i) * p.n;
      T lo = pos_inf(), hi = neg_inf();
      for (int64_t j = j_begin; j < j_end; ++j)
        if (std::isfinite(c[j])) {
          lo = std::min(lo, c[j]);
          hi = std::max(hi, c[j]);
        }
      hmin[i - i_begin] = lo;
      hmax[i - i_begin] = hi;
      if (lo != pos_inf()) g = std::min(g, lo * p.scale);
    }
    bool factored[kSoftFwdRows], any_factored = false;
    for (int64_t i = i_begin; i < i_end; ++i) {
      const int64_t ii = i - i_begin;
      factored[ii] = hmin[ii] != pos_inf() && hmax[ii] * p.scale - g <= T(kSoftFactorSpread);
      any_factored |= factored[ii];
    }
    const reg gv = V::set1(g);
    const int64_t ldeb = ceil_div(j_end - j_begin, W) * W;  // the tile in whole vectors
    if (any_factored) {
      // EB of the tile (B is scaled already); lanes past its end hold 2^0 = 1.
      eb.resize(size_t(p.k * ldeb));
      for (int64_t r = 0; r < p.k; ++r) exp2_shifted(eb.data() + r * ldeb, bs + r * p.n + j_begin, j_end - j_begin, g, 1, g);
      ea.resize(size_t(ceil_div(p.k, W) * W));
    }
    for (int64_t i = i_begin; i < i_end; ++i) {
      const int64_t ii = i - i_begin;
      if (hmin[ii] == pos_inf()) continue;  // every H of the tile is +-inf: C = H there
      T* c = p.c + (bi * p.m + i) * p.n;
      const T* arow = p.a + (bi * p.m + i) * p.k;
      const T thr = hmin[ii] * p.scale - p.cut;
      int64_t na = 0;
      for (int64_t r = 0; r < p.k; ++r) {
        active[size_t(na)] = int32_t(r);
        na += (arow[r] * p.scale >= thr);
      }
      if (factored[ii]) exp2_shifted(ea.data(), arow, p.k, g, p.scale, T(0));
      for (int64_t j0 = j_begin; j0 < j_end; j0 += G) {
        const int cols = int(std::min<int64_t>(G, j_end - j0));
        reg hs[NV], acc[NV];
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) {
          hs[v] = V::mul(V::load_partial(c + j0 + v * W, cols - v * W, T(0)), V::set1(p.scale));
          acc[v] = V::zero();
        }
        if (factored[ii]) {
          const T* ebcol = eb.data() + (j0 - j_begin);
          if (cols == G)
            soft_fwd_factored_group<NV>(active.data(), na, ea.data(), ebcol, ldeb, acc);
          else
            with_partial_group(cols, [&]<int NVP>() __attribute__((always_inline)) {
              soft_fwd_factored_group<NVP>(active.data(), na, ea.data(), ebcol, ldeb, acc);
            });
#pragma GCC unroll 8
          for (int v = 0; v < NV; ++v) acc[v] = V::mul(acc[v], V::exp2(V::sub(gv, hs[v])));
        } else if (cols == G) {
          soft_fwd_group<NV, true>(active.data(), na, arow, bs + j0, p.n, p.scale, cols, hs, acc);
        } else {
          with_partial_group(cols, [&]<int NVP>() __attribute__((always_inline)) {
            soft_fwd_group<NVP, false>(active.data(), na, arow, bs + j0, p.n, p.scale, cols, hs, acc);
          });
        }
        T sum[G];
        for (int v = 0; v < NV; ++v) V::store_lanes(sum + v * W, acc[v]);
        for (int jj = 0; jj < cols; ++jj) {
          const T h = c[j0 + jj];
          if (std::isfinite(h)) c[j0 + jj] = h + p.tau * std::log(sum[jj]);
        }
      }
    }
  }

  // ------------------------------------------------------------ soft gradient
  // One vector group of soft_grad: acc[v] += the terms of the listed rows i of
  // C and g (at ccol / gcol + i * ld) for NVP vectors of B (bv, unscaled), as
  // soft_fwd_group.
  template <int NVP, bool kWhole>
  static inline __attribute__((always_inline)) void soft_grad_group(const int32_t* active, int64_t na, const T* at,
                                                                    const T* ccol, const T* gcol, int64_t ld, T scale,
                                                                    int cols, const reg* bv, reg* acc) {
    const reg sv = V::set1(scale);
    for (int64_t q = 0; q < na; ++q) {
      const int64_t i = active[q];
      const reg av = V::set1(at[i]);
      const T* crow = ccol + i * ld;
      const T* grow = gcol + i * ld;
#pragma GCC unroll 8
      for (int v = 0; v < NVP; ++v) {
        const reg c = kWhole ? V::load(crow + v * W) : V::load_partial(crow + v * W, cols - v * W, T(0));
        const reg gv = kWhole ? V::load(grow + v * W) : V::load_partial(grow + v * W, cols - v * W, T(0));
        acc[v] = V::add(acc[v], soft_grad_term(c, av, bv[v], gv, sv));
      }
    }
  }

  // One vector group of the factored terms of soft_grad: acc[v] += gf[i][v]
  // q^2, q = 1 / (ea[i] + eb[v]), over the listed rows i (gf's rows ld apart
  // from gfcol). (gf q) first: gf <= g 2^(gamma-c') and q <= 2^(c'-gamma+1)
  // for a term that counts, where q^2 alone could overflow.
  template <int NVP, bool kWhole>
  static inline __attribute__((always_inline)) void soft_grad_factored_group(const int32_t* active, int64_t na,
                                                                             const T* ea, const T* gfcol, int64_t ld,
                                                                             int cols, const reg* eb, reg* acc) {
    for (int64_t q = 0; q < na; ++q) {
      const int64_t i = active[q];
      const reg av = V::set1(ea[i]);
      const T* grow = gfcol + i * ld;
#pragma GCC unroll 8
      for (int v = 0; v < NVP; ++v) {
        const reg gv = kWhole ? V::load(grow + v * W) : V::load_partial(grow + v * W, cols - v * W, T(0));
        const reg qv = V::rcp(V::add(av, eb[v]));
        acc[v] = V::add(acc[v], V::mul(V::mul(gv, qv), qv));
      }
    }
  }

  // Flush-to-zero for the calling thread while it lives (x86; elsewhere
  // nothing): results below float32's smallest normal (2^-126) become 0. The
  // gradient terms that do not count are products far below it, and each
  // denormal result cost a microcode assist (the factored 1024^3 soft
  // backward took 2.3x as long as the direct one). With g scaled to at most 1
  // (SoftGradArgs::gnorm, SoftWholeArgs::gnorm), what is flushed is below
  // 2^-126 of the largest upstream gradient. Not denormals-are-zero: an
  // upstream gradient may itself be denormal before it is scaled (a test
  // with gradients of 1e-36 lost those elements' terms).
  struct FlushDenormals {
#if defined(__x86_64__) || defined(__i386__)
    unsigned saved = _mm_getcsr();
    FlushDenormals() { _mm_setcsr(saved | 0x8000u); }  // FTZ (bit 15)
    ~FlushDenormals() { _mm_setcsr(saved); }
#endif
  };

  // SoftGradArgs::gf of row `row` (of batch * m) for the tiles it takes the
  // factored terms in: g * gnorm * 2^((gamma - c) s).
  static void soft_grad_prep(const SoftGradArgs<T>& p, int64_t row) {
    const int64_t tiles_n = ceil_div(p.n, kSoftJT), bi = row / p.m;
    const T* c = p.cs + row * p.n;
    const T* g = p.g + row * p.n;
    T* gf = p.gf + row * p.n;
    const reg sv = V::set1(p.scale), nv = V::set1(p.gnorm);
    for (int64_t t = 0; t < tiles_n; ++t) {
      if (!p.fact[row * tiles_n + t]) continue;
      const reg gam = V::set1(p.gamma[bi * tiles_n + t]);
      for (int64_t j = t * kSoftJT; j < std::min(p.n, (t + 1) * kSoftJT); j += W) {
        const int cnt = int(std::min<int64_t>(W, p.n - j));
        const reg e = V::exp2(V::mul(V::sub(gam, V::load_partial(c + j, cnt, T(0))), sv));
        V::store_partial(gf + j, V::mul(V::mul(V::load_partial(g + j, cnt, T(0)), nv), e), cnt);
      }
    }
  }

  // dC/dB for rows r of one task and the columns of one kSoftJT tile:
  //   dB[r, j] = sum_i g[i,j] * v * p^2,  u = exp2(c'-a'), v = exp2(c'-b'), p = 1/(u+v).
  // The rows i whose scaled A[i, r] lies below (min c' of the tile) - cut are
  // skipped (p < 2^-cut). dC/dA is this same kernel on the transposed problem
  // C^T = B^T (max,min) A^T, so the two gradients share one body.
  //
  // As in soft_fwd, the rows whose c' lie within kSoftFactorSpread of the
  // tile's lowest (gamma' = gamma s, over all rows) take factored terms: with
  // EA = 2^(gamma'-a'), EB = 2^(gamma'-b'),
  //   v p^2 = EB 2^(gamma'-c') / (EA + EB)^2,
  // so  dB[r, j] = EB[r,j] sum_i gf[i,j] / (EA[i,r] + EB[r,j])^2  with
  // gf = g 2^(gamma'-c') made once per output (soft_grad_prep, with g scaled
  // by gnorm: see FlushDenormals): an add, a reciprocal and two products per
  // term instead of two exp2. Every exponent is a difference of unscaled
  // values, scaled after (col_terms).
  static void soft_grad(const SoftGradArgs<T>& p, int64_t task) {
    constexpr int NV = V::soft_nv;
    constexpr int G = NV * W;
    // Consecutive tasks take consecutive rows of the same column tile, so that
    // the tiles of C and g (m x kSoftJT values each) stay in cache between them.
    const int64_t tiles_n = ceil_div(p.n, kSoftJT), tiles_k = ceil_div(p.k, kSoftRowsPerTask);
    const int64_t rt = task % tiles_k, jt = (task / tiles_k) % tiles_n, bi = task / (tiles_n * tiles_k);
    const int64_t j_begin = jt * kSoftJT, j_end = std::min(p.n, j_begin + kSoftJT);
    const int64_t r_end = std::min(p.k, (rt + 1) * kSoftRowsPerTask);
    thread_local std::vector<int32_t> active, active_f;
    thread_local std::vector<T> ea;
    active.resize(size_t(p.m));
    active_f.resize(size_t(p.m));
    ea.resize(size_t(ceil_div(p.m, W) * W));
    const T* cs = p.cs + bi * p.m * p.n;
    const T* g = p.g + bi * p.m * p.n;
    const T* gf = p.gf ? p.gf + bi * p.m * p.n : nullptr;
    const T* cmin = p.cmin + bi * p.m * tiles_n + jt;
    const uint8_t* fact = p.fact + bi * p.m * tiles_n + jt;
    const reg gam = V::set1(p.gamma[bi * tiles_n + jt]);
    const reg sv = V::set1(p.scale), unnorm = V::set1(T(1) / p.gnorm);
    for (int64_t r = rt * kSoftRowsPerTask; r < r_end; ++r) {
      const T* at = p.at + (bi * p.k + r) * p.m;
      const T* brow = p.bs + (bi * p.k + r) * p.n;
      T* db = p.db + bi * p.db_sb + r * p.db_sr;
      int64_t na = 0, nf = 0;
      for (int64_t i = 0; i < p.m; ++i) {
        const bool keep = at[i] * p.scale >= cmin[i * tiles_n] - p.cut, f = fact[i * tiles_n] != 0;
        active[size_t(na)] = int32_t(i);
        active_f[size_t(nf)] = int32_t(i);
        na += keep && !f;
        nf += keep && f;
      }
      if (nf) exp2_gap(ea.data(), at, p.m, p.gamma[bi * tiles_n + jt], p.scale);
      for (int64_t j0 = j_begin; j0 < j_end; j0 += G) {
        const int cols = int(std::min<int64_t>(G, j_end - j0));
        reg bv[NV], eb[NV], acc[NV], acc_f[NV];
        for (int v = 0; v < NV; ++v) {
          bv[v] = V::load_partial(brow + j0 + v * W, cols - v * W, T(0));
          eb[v] = V::exp2(V::mul(V::sub(gam, bv[v]), sv));
          acc[v] = V::zero();
          acc_f[v] = V::zero();
        }
        if (cols == G) {
          soft_grad_group<NV, true>(active.data(), na, at, cs + j0, g + j0, p.n, p.scale, cols, bv, acc);
        } else {
          with_partial_group(cols, [&]<int NVP>() __attribute__((always_inline)) {
            soft_grad_group<NVP, false>(active.data(), na, at, cs + j0, g + j0, p.n, p.scale, cols, bv, acc);
          });
        }
        if (nf) {
          // Flushed: the factored sums only, on g scaled to at most 1 (the
          // direct terms and the gradient at its own scale keep denormals).
          alignas(64) T sums[G];
          {
            const FlushDenormals flush;
            if (cols == G)
              soft_grad_factored_group<NV, true>(active_f.data(), nf, ea.data(), gf + j0, p.n, cols, eb, acc_f);
            else
              with_partial_group(cols, [&]<int NVP>() __attribute__((always_inline)) {
                soft_grad_factored_group<NVP, false>(active_f.data(), nf, ea.data(), gf + j0, p.n, cols, eb, acc_f);
              });
            for (int v = 0; v < NV; ++v) V::store_lanes(sums + v * W, V::mul(acc_f[v], eb[v]));
          }
          for (int v = 0; v < NV; ++v) acc[v] = V::add(acc[v], V::mul(V::load(sums + v * W), unnorm));
        }
        store_row(db, j0, p.db_sj, acc, cols);
      }
    }
  }

  // SoftWholeArgs: both gradients of products_per_task() whole products per
  // task, in one pass over the terms, no term skipped: per (i, r) and W
  // columns j, u = 2^((c-a)s), v = 2^((c-b)s), q = g / (u+v)^2, and
  //   dA[i, r] += sum_j q u,   dB[r, j] += q v
  // (col_terms; here one exp2 pair serves both gradients).
  // Columns past n load g = 0, so they add nothing. The terms that do not
  // count are far below float32's smallest normal: they run under
  // FlushDenormals on g scaled by gnorm, and the gradients are scaled back
  // after (2560 products [4x16]x[16x16] on an Intel Xeon: 10.4 ms of denormal
  // assists in a 12.6 ms fwd+bwd).
  static void soft_grad_whole(const SoftWholeArgs<T>& p, int64_t task) {
    const int64_t per = p.products_per_task();
    const int64_t b0 = task * per, b_end = std::min(p.batch, b0 + per);
    {
      const FlushDenormals flush;
      soft_grad_whole_products(p, b0, b_end);
    }
    if (p.gnorm != T(1)) {
      unscale(p.da + b0 * p.m * p.k, p.da + b_end * p.m * p.k, p.gnorm);
      unscale(p.db + b0 * p.k * p.n, p.db + b_end * p.k * p.n, p.gnorm);
    }
  }

  // [begin, end) divided by gnorm: gradients computed on g * gnorm (FlushDenormals).
  static void unscale(T* begin, T* end, T gnorm) {
    const T f = T(1) / gnorm;
    for (T* x = begin; x < end; ++x) *x *= f;
  }

  // soft_grad_whole's products [b0, b_end), on g * gnorm.
  static void soft_grad_whole_products(const SoftWholeArgs<T>& p, int64_t b0, int64_t b_end) {
    const reg sv = V::set1(p.scale), nv = V::set1(p.gnorm);
    for (int64_t bi = b0; bi < b_end; ++bi) {
      const T* a = p.a + bi * p.m * p.k;
      const T* b = p.b + bi * p.k * p.n;
      const T* cs = p.cs + bi * p.m * p.n;
      const T* g = p.g + bi * p.m * p.n;
      T* const da = p.da + bi * p.m * p.k;
      T* const db = p.db + bi * p.k * p.n;
      std::fill(db, db + p.k * p.n, T(0));
      for (int64_t i = 0; i < p.m; ++i) {
        for (int64_t r = 0; r < p.k; ++r) {
          const reg av = V::set1(a[i * p.k + r]);
          reg da_sum = V::zero();
          for (int64_t j0 = 0; j0 < p.n; j0 += W) {
            const int cols = int(std::min<int64_t>(W, p.n - j0));
            const ColTerms t = col_terms(V::load_partial(cs + i * p.n + j0, cols, T(0)), av,
                                         V::load_partial(b + r * p.n + j0, cols, T(0)), sv);
            const reg gv = V::mul(V::load_partial(g + i * p.n + j0, cols, T(0)), nv);
            da_sum = V::add(da_sum, soft_grad_part(t.u, t.pr, gv));
            T* const dbr = db + r * p.n + j0;
            V::store_partial(dbr, V::add(V::load_partial(dbr, cols, T(0)), soft_grad_part(t.v, t.pr, gv)), cols);
          }
          da[i * p.k + r] = V::hsum(da_sum);
        }
      }
    }
  }

  // Stores `cols` accumulated values as elements j0.. of a row with element stride sj.
  template <int NV>
  static void store_row(T* row, int64_t j0, int64_t sj, const reg (&acc)[NV], int cols) {
    if (sj == 1) {
      for (int v = 0; v < NV; ++v) V::store_partial(row + j0 + v * W, acc[v], cols - v * W);
      return;
    }
    T tmp[NV * W];
    for (int v = 0; v < NV; ++v) V::store_lanes(tmp + v * W, acc[v]);
    for (int jj = 0; jj < cols; ++jj) row[(j0 + jj) * sj] = tmp[jj];
  }

  // ------------------------------------------------------------ hard scatter
  // Where the ISA compresses W outputs at a time (V::kScatter), a row's
  // outputs are first listed as (offset, gradient) pairs for the wanted
  // operand, then added in one loop (see V::compress_to_a).
  struct ScatterList {
    std::vector<int32_t> off;
    std::vector<T> val;
    void make_room(int64_t n) {  // for n pairs and the W a vector store may write past them
      off.resize(size_t(n + W));
      val.resize(size_t(n + W));
    }
    void add_to(T* out, int64_t count) const {
      for (int64_t q = 0; q < count; ++q) out[off[size_t(q)]] += val[size_t(q)];
    }
  };

  // Rows of dA (ScatterArgs::rows_per_task of batch * m): out[r] += g[j]
  // for the outputs of a row whose winner is (A, r). The sums build up in a
  // zeroed row buffer in L1 that is copied out whole, so dA needs no zeroing
  // pass of its own.
  static void scatter_a(const ScatterArgs<T>& p, int64_t task) {
    const int64_t row0 = task * p.rows_per_task(), row1 = std::min(p.batch * p.m, row0 + p.rows_per_task());
    thread_local std::vector<T> row;
    for (int64_t i = row0; i < row1; ++i) {
      const int32_t* w = p.w + i * p.n;
      const T* g = p.g + i * p.n;
      row.assign(size_t(p.k), T(0));
      T* out = row.data();
      int64_t j = 0;
      if constexpr (V::kScatter) {
        thread_local ScatterList list;
        list.make_room(p.n);
        int64_t count = 0;
        for (; j + W <= p.n; j += W) count += V::compress_to_a(w + j, g + j, &list.off[size_t(count)], &list.val[size_t(count)]);
        list.add_to(out, count);
      }
      for (; j < p.n; ++j)
        if (winner_to_a(w[j])) out[w[j]] += g[j];
      if (p.stream)
        stream_copy(p.da + i * p.k, out, p.k);
      else
        std::copy(out, out + p.k, p.da + i * p.k);
    }
    if (p.stream) V::stream_fence();
  }

  // dst[0, n) = src[0, n), the whole 64-byte lines of dst with non-temporal
  // stores where the ISA has them (V::kStream; see ScatterArgs::stream).
  static void stream_copy(T* dst, const T* src, int64_t n) {
    constexpr int64_t kLine = 64 / int64_t(sizeof(T));
    int64_t q = 0;
    if constexpr (V::kStream) {
      for (; q < n && (reinterpret_cast<uintptr_t>(dst + q) & 63) != 0; ++q) dst[q] = src[q];
      for (; q + kLine <= n; q += kLine) V::stream_line(dst + q, src + q);
    }
    std::copy(src + q, src + n, dst + q);
  }

  // dB column tile: out[r, j] += g[i, j] for the outputs whose winner is (B, r).
  // The tile's rows lie n apart in dB and would share a few cache sets, so the
  // sums go to a contiguous k x kCols slab first (L2), copied out once; each
  // row of g and of the winners is read kCols values (whole lines) at a time,
  // and fetched kRowsAhead rows ahead: each row is on another page, where no
  // hardware prefetcher follows. They are fetched into L2 (prefetcht1), not
  // L1, whose few miss buffers the loop then waited on (perf stopped at the
  // prefetches): at 1024^3 the scatter took 0.06-0.09 ms less of ~1.1
  // (kernel harness, three A/B runs).
  static void scatter_b(const ScatterArgs<T>& p, int64_t task) {
    constexpr int64_t C = ScatterArgs<T>::kCols, kRowsAhead = 8;
    const int64_t tiles = ceil_div(p.n, C);
    const int64_t bi = task / tiles, j0 = (task % tiles) * C, j1 = std::min(p.n, j0 + C);
    if (p.direct_cols()) return scatter_b_direct(p, bi, j0, j1);
    thread_local std::vector<T> slab;
    slab.assign(size_t(p.k * C), T(0));
    thread_local ScatterList list;
    list.make_room(C);
    for (int64_t i = 0; i < p.m; ++i) {
      const int32_t* w = p.w + (bi * p.m + i) * p.n;
      const T* g = p.g + (bi * p.m + i) * p.n;
      if (i + kRowsAhead < p.m) {
        for (int64_t q = j0; q < j1; q += 64 / int64_t(sizeof(int32_t)))
          __builtin_prefetch(w + kRowsAhead * p.n + q, 0, 2);
        for (int64_t q = j0; q < j1; q += 64 / int64_t(sizeof(T))) __builtin_prefetch(g + kRowsAhead * p.n + q, 0, 2);
      }
      int64_t j = j0;
      if constexpr (V::kScatter) {
        int64_t count = 0;
        for (; j + W <= j1; j += W)
          count += V::compress_to_b(w + j, g + j, int32_t(C), int32_t(j - j0), &list.off[size_t(count)],
                                    &list.val[size_t(count)]);
        list.add_to(slab.data(), count);
      }
      for (; j < j1; ++j)
        if (!winner_to_a(w[j])) slab[size_t(winner_index(w[j]) * C + (j - j0))] += g[j];
    }
    write_db_tile(p, bi, j0, j1, slab.data(), C);
  }

  // Rows 0..k of the dB column tile [j0, j1) of product bi from src (rows
  // src_stride apart; 0: one row for all), with non-temporal stores where
  // p.stream, fenced so that later reads, and other threads, see them.
  static void write_db_tile(const ScatterArgs<T>& p, int64_t bi, int64_t j0, int64_t j1, const T* src,
                            int64_t src_stride) {
    T* const out = p.db + bi * p.k * p.n + j0;
    for (int64_t r = 0; r < p.k; ++r) {
      const T* row = src + r * src_stride;
      if (p.stream)
        stream_copy(out + r * p.n, row, j1 - j0);
      else
        std::copy(row, row + (j1 - j0), out + r * p.n);
    }
    if (p.stream) V::stream_fence();
  }

  // The dB column tile [j0, j1) of product bi when its outputs are few
  // (ScatterArgs::direct_cols): zeroed in place (non-temporal stores where
  // p.stream), then each output whose winner is (B, r) added at dB[r, j].
  static void scatter_b_direct(const ScatterArgs<T>& p, int64_t bi, int64_t j0, int64_t j1) {
    alignas(64) static const T zeros[ScatterArgs<T>::kCols] = {};
    write_db_tile(p, bi, j0, j1, zeros, 0);  // fenced: the adds below read what it wrote
    T* const out = p.db + bi * p.k * p.n;
    for (int64_t i = 0; i < p.m; ++i) {
      const int32_t* w = p.w + (bi * p.m + i) * p.n;
      const T* g = p.g + (bi * p.m + i) * p.n;
      for (int64_t j = j0; j < j1; ++j)
        if (!winner_to_a(w[j])) out[winner_index(w[j]) * p.n + j] += g[j];
    }
  }

  // ScatterArgs::whole_products(): products_per_task() whole products per
  // task, each one's dA and dB zeroed and summed in place (they stay in L1)
  // in one pass over its outputs (so p.stream does not apply). The winner's
  // side picks the address by indexing, not by a branch: it is data, and the
  // branch GCC made of a conditional expression mispredicted at every other
  // output (2560 products [4x16]x[16x16]: 0.41 ms, indexed 0.17 ms).
  static void scatter_whole(const ScatterArgs<T>& p, int64_t task) {
    const int64_t per = p.products_per_task();
    for (int64_t bi = task * per, b_end = std::min(p.batch, bi + per); bi < b_end; ++bi) {
      T* const da = p.da + bi * p.m * p.k;
      T* const db = p.db + bi * p.k * p.n;
      std::fill(da, da + p.m * p.k, T(0));
      std::fill(db, db + p.k * p.n, T(0));
      const int32_t* w = p.w + bi * p.m * p.n;
      const T* g = p.g + bi * p.m * p.n;
      // Side 0: dA[i, r]; side 1: dB[r, j].
      const int64_t strides[2] = {1, p.n};
      for (int64_t i = 0; i < p.m; ++i, w += p.n, g += p.n) {
        T* const rows[2] = {da + i * p.k, db};
        for (int64_t j = 0; j < p.n; ++j) {
          const int32_t e = w[j];
          const int64_t side = int64_t(uint32_t(e) >> 31);  // !winner_to_a(e)
          rows[side][int64_t(winner_index(e)) * strides[side] + (j & -side)] += g[j];
        }
      }
    }
  }

  // ------------------------------------------------------------ transpose
  // A block of 16 rows of X into columns of X^T: whole 16x16 blocks in
  // registers where the ISA can (V::kTranspose16), the rest through a tile.
  static void transpose(const TransposeArgs<T>& p, int64_t task) {
    int64_t c0 = 0;
    if constexpr (V::kTranspose16) {
      constexpr int64_t R = TransposeArgs<T>::kRows;
      static_assert(R == W, "a 16x16 block is 16 vectors");
      const int64_t bi = task / p.row_blocks(), r0 = (task % p.row_blocks()) * R;
      if (r0 + R <= p.k && p.s_sc == 1) {
        const int64_t ld = p.dst_ld();
        const T* src = p.src + bi * p.s_sb + r0 * p.s_sr;
        T* dst = p.dst + bi * p.n * ld + r0;
        // Streamed where every row of the block starts a 64-byte line.
        const bool stream = p.stream && (reinterpret_cast<uintptr_t>(dst) % 64 == 0) && (ld * int64_t(sizeof(T))) % 64 == 0;
        for (; c0 + R <= p.n; c0 += R) V::transpose16(src + c0, p.s_sr, dst + c0 * ld, ld, stream);
        if (stream) V::stream_fence();
      }
    }
    transpose_rest(p, task, c0);
  }

  // ------------------------------------------------------------ one column
  // A forward task's product bi, block of r [r0, r1) and rows [i0, i1) (ColArgs).
  struct ColTask {
    int64_t bi, blk, r0, r1, i0, i1;
  };
  static ColTask col_task(const ColArgs<T>& p, int64_t task) {
    const int64_t rbs = p.row_blocks(), rb = task % rbs, blk = (task / rbs) % p.blocks(), bi = task / (rbs * p.blocks());
    const int64_t r0 = blk * ColArgs<T>::kBlock, i0 = rb * ColArgs<T>::kRows;
    return {bi, blk, r0, std::min(p.k, r0 + ColArgs<T>::kBlock), i0, std::min(p.m, i0 + ColArgs<T>::kRows)};
  }

  // Hard one-column forward: the task's block of B's column read in vectors
  // (NaN noted once), each of its rows of A against it with four accumulators
  // (the max/min chain is latency-bound with one).
  static void hard_col(const ColArgs<T>& p, int64_t task) {
    constexpr int kAcc = 4;
    const auto [bi, blk, r0, r1, i0, i1] = col_task(p, task);
    const int64_t blocks = p.blocks();
    const T* const b = p.b + bi * p.b_sb;
    uint32_t nan = 0;
    int64_t r = r0;
    for (; r + W <= r1; r += W) nan |= V::nan_mask(V::load(b + r));
    if (r < r1) nan |= V::nan_mask(V::load_partial(b + r, int(r1 - r), neg_inf()));
    alignas(64) T lanes[W];
    for (int64_t i = i0; i < i1; ++i) {
      const T* const a = p.a + bi * p.a_sb + i * p.a_si;
      reg acc[kAcc];
      for (int q = 0; q < kAcc; ++q) acc[q] = V::set1(neg_inf());
      r = r0;
      for (; r + kAcc * W <= r1; r += kAcc * W) {
#pragma GCC unroll 4
        for (int q = 0; q < kAcc; ++q) {
          const reg av = V::load(a + r + q * W);
          nan |= V::nan_mask(av);
          acc[q] = V::max(acc[q], V::min(av, V::load(b + r + q * W)));
        }
      }
      for (; r < r1; r += W) {  // the last vectors, the last one partial (-inf beyond: no effect on the max)
        const int rest = int(std::min<int64_t>(W, r1 - r));
        const reg av = V::load_partial(a + r, rest, neg_inf());
        nan |= V::nan_mask(av);
        acc[0] = V::max(acc[0], V::min(av, V::load_partial(b + r, rest, neg_inf())));
      }
      for (int q = 1; q < kAcc; ++q) acc[0] = V::max(acc[0], acc[q]);
      V::store_lanes(lanes, acc[0]);
      T best = lanes[0];
      for (int l = 1; l < W; ++l) best = tmax(best, lanes[l]);
      p.part[(bi * blocks + blk) * p.m + i] = best;
    }
    if (nan && p.nan_seen) p.nan_seen->store(1, std::memory_order_relaxed);
  }

  // Soft one-column forward (ColArgs, p.c = H): per row with a finite shift
  // h, the partial sum over the task's r of 1/(2^((h-a)s) + 2^((h-b)s)),
  // s = p.scale; every term, none skipped. The difference is taken before the
  // scaling: h*s - a*s loses the low bits of two large products (at tau =
  // 0.01 and values ~50, ~3e-4 of each weight, which the gradient showed).
  // The last vector's lanes past the block count zero.
  static void soft_col(const ColArgs<T>& p, int64_t task) {
    constexpr int kAcc = 2;
    const auto [bi, blk, r0, r1, i0, i1] = col_task(p, task);
    const int64_t blocks = p.blocks();
    const T* const b = p.b + bi * p.b_sb;
    const reg sv = V::set1(p.scale);
    alignas(64) T ones[W];
    std::fill(ones, ones + W, T(1));
    for (int64_t i = i0; i < i1; ++i) {
      const T h = p.c[bi * p.m + i];
      T& out = p.part[(bi * blocks + blk) * p.m + i];
      if (!std::isfinite(h)) {  // C = H there: no sum needed
        out = T(0);
        continue;
      }
      const T* const a = p.a + bi * p.a_sb + i * p.a_si;
      const reg hv = V::set1(h);
      reg acc[kAcc];
      for (int q = 0; q < kAcc; ++q) acc[q] = V::zero();
      int64_t r = r0;
      for (; r + kAcc * W <= r1; r += kAcc * W) {
#pragma GCC unroll 2
        for (int q = 0; q < kAcc; ++q) {
          acc[q] = V::add(acc[q], col_terms(hv, V::load(a + r + q * W), V::load(b + r + q * W), sv).pr);
        }
      }
      for (; r < r1; r += W) {
        const int rest = int(std::min<int64_t>(W, r1 - r));
        const ColTerms t = col_terms(hv, V::load_partial(a + r, rest, T(0)), V::load_partial(b + r, rest, T(0)), sv);
        acc[0] = V::add(acc[0], V::mul(t.pr, V::load_partial(ones, rest, T(0))));
      }
      for (int q = 1; q < kAcc; ++q) acc[0] = V::add(acc[0], acc[q]);
      out = V::hsum(acc[0]);
    }
  }

  // Soft one-column gradients (ColArgs): for the task's block of r, per row i,
  //   dA[i, r] = g_i u p^2,  dB[r] = sum_i g_i v p^2,
  //   u = 2^((c_i - a)s), v = 2^((c_i - b)s), p = 1/(u+v)
  // (soft_grad_part; differences before scaling, see soft_col), every term,
  // under FlushDenormals on g scaled by gnorm and scaled back after (as
  // soft_grad_whole: the terms that do not count lie far below float32's
  // smallest normal).
  static void soft_col_grad(const ColArgs<T>& p, int64_t task) {
    const int64_t blocks = p.blocks(), blk = task % blocks, bi = task / blocks;
    const int64_t r0 = blk * ColArgs<T>::kBlock, r1 = std::min(p.k, r0 + ColArgs<T>::kBlock);
    const T* const b = p.b + bi * p.b_sb;
    T* const db = p.db + bi * p.k;
    std::fill(db + r0, db + r1, T(0));
    {
      const FlushDenormals flush;
      const reg sv = V::set1(p.scale);
      for (int64_t i = 0; i < p.m; ++i) {
        T* const da = p.da + (bi * p.m + i) * p.k;
        const T g = p.g[bi * p.m + i] * p.gnorm;
        if (g == T(0)) {  // no upstream gradient, or C not finite: nothing passes
          std::fill(da + r0, da + r1, T(0));
          continue;
        }
        const T* const a = p.a + bi * p.a_sb + i * p.a_si;
        const reg cv = V::set1(p.c[bi * p.m + i]), gv = V::set1(g);
        for (int64_t r = r0; r < r1; r += W) {
          const int rest = int(std::min<int64_t>(W, r1 - r));
          const ColTerms t = col_terms(cv, V::load_partial(a + r, rest, T(0)), V::load_partial(b + r, rest, T(0)), sv);
          V::store_partial(da + r, soft_grad_part(t.u, t.pr, gv), rest);
          V::store_partial(db + r, V::add(V::load_partial(db + r, rest, T(0)), soft_grad_part(t.v, t.pr, gv)), rest);
        }
      }
    }
    if (p.gnorm != T(1)) {
      for (int64_t i = 0; i < p.m; ++i) unscale(p.da + (bi * p.m + i) * p.k + r0, p.da + (bi * p.m + i) * p.k + r1, p.gnorm);
      unscale(db + r0, db + r1, p.gnorm);
    }
  }

  static KernelTable<T> table(const char* name) {
    return {name,           &hard,      &hard_pack, MR,         NR,        &argmax,        &soft_fwd,
            &soft_grad,     &soft_grad_prep,        &soft_grad_whole,      &scatter_a,     &scatter_b,
            &scatter_whole, &transpose,     &hard_col,      &soft_col,      &soft_col_grad};
  }
};

}  // namespace cpu
}  // namespace vico_flow
