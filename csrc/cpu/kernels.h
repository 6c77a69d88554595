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
  // Packs A[ic:ic+mc, r0:r0+kc] as MR-row strips, r-major (one strip = kc x MR),
  // padding missing rows with -inf (the identity of max, so pads never win).
  static void pack_a(const HardArgs<T>& p, int64_t bi, int64_t ic, int64_t mc, int64_t r0, int64_t kc, T* dst) {
    const T* a = p.a + bi * p.a_sb;
    for (int64_t s = 0; s < mc; s += MR) {
      T* strip = dst + (s / MR) * kc * MR;
      for (int ii = 0; ii < MR; ++ii) {
        const int64_t i = ic + s + ii;
        if (s + ii < mc) {
          const T* row = a + i * p.a_si + r0 * p.a_sr;
          for (int64_t r = 0; r < kc; ++r) strip[r * MR + ii] = row[r * p.a_sr];
        } else {
          for (int64_t r = 0; r < kc; ++r) strip[r * MR + ii] = neg_inf();
        }
      }
    }
  }

  // Packs B[r0:r0+kc, jc:jc+nc] as NR-column strips (one strip = kc x NR).
  static void pack_b(const HardArgs<T>& p, int64_t bi, int64_t jc, int64_t nc, int64_t r0, int64_t kc, T* dst) {
    const T* b = p.b + bi * p.b_sb;
    for (int64_t t = 0; t < nc; t += NR) {
      T* strip = dst + (t / NR) * kc * NR;
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
    }
  }

  // The register tile: acc[i][v] = max_r min(ap[r][i], bp[r][v]) over kc.
  static inline void micro(const T* ap, const T* bp, int64_t kc, reg (&acc)[MR][V::hard_nv]) {
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
      for (int v = 0; v < V::hard_nv; ++v) acc[i][v] = V::set1(neg_inf());
    for (int64_t r = 0; r < kc; ++r) {
      reg bv[V::hard_nv];
#pragma GCC unroll 8
      for (int v = 0; v < V::hard_nv; ++v) bv[v] = V::load(bp + r * NR + v * W);
#pragma GCC unroll 8
      for (int i = 0; i < MR; ++i) {
        const reg av = V::set1(ap[r * MR + i]);
#pragma GCC unroll 8
        for (int v = 0; v < V::hard_nv; ++v) acc[i][v] = V::max(acc[i][v], V::min(av, bv[v]));
      }
    }
  }

  // Merges a register tile into C: the first depth chunk overwrites, later
  // ones take the max and (with `chunk`) record where a strictly larger value
  // came from, which keeps the first-index tie rule across chunks.
  static void store_tile(const HardArgs<T>& p, reg (&acc)[MR][V::hard_nv], int64_t bi, int64_t i0, int64_t j0,
                         int rows, int cols, int64_t chunk_id) {
    T* c = p.c + (bi * p.m + i0) * p.n + j0;
    int32_t* ch = p.chunk ? p.chunk + (bi * p.m + i0) * p.n + j0 : nullptr;
    if (rows == MR && cols == NR) {
      for (int i = 0; i < MR; ++i)
        for (int v = 0; v < V::hard_nv; ++v) {
          T* cp = c + i * p.n + v * W;
          if (chunk_id == 0) {
            V::store(cp, acc[i][v]);
          } else if (ch) {
            V::merge_max_track(cp, ch + i * p.n + v * W, acc[i][v], int32_t(chunk_id));
          } else {
            V::merge_max(cp, acc[i][v]);
          }
        }
      if (ch && chunk_id == 0)
        for (int i = 0; i < MR; ++i) std::fill(ch + i * p.n, ch + i * p.n + NR, 0);
      return;
    }
    T tmp[NR];
    for (int i = 0; i < rows; ++i) {
      for (int v = 0; v < V::hard_nv; ++v) V::store_lanes(tmp + v * W, acc[i][v]);
      for (int j = 0; j < cols; ++j) {
        T* cp = c + i * p.n + j;
        if (chunk_id == 0) {
          *cp = tmp[j];
          if (ch) ch[i * p.n + j] = 0;
        } else if (hard_replaces(tmp[j], *cp)) {
          *cp = tmp[j];
          if (ch) ch[i * p.n + j] = int32_t(chunk_id);
        }
      }
    }
  }

  // HardArgs::small(): whole products, one output row at a time, W columns per
  // vector. B is gathered into a row-major buffer first (it may be strided).
  static void hard_small(const HardArgs<T>& p, int64_t task) {
    thread_local std::vector<T> bbuf;
    const int64_t npad = ceil_div(p.n, W) * W;
    bbuf.resize(size_t(std::max<int64_t>(p.k * npad, 1)));
    const int64_t b_end = std::min(p.batch, (task + 1) * HardArgs<T>::kSmallBatch);
    for (int64_t bi = task * HardArgs<T>::kSmallBatch; bi < b_end; ++bi) {
      const T* a = p.a + bi * p.a_sb;
      const T* b = p.b + bi * p.b_sb;
      for (int64_t r = 0; r < p.k; ++r)
        for (int64_t j = 0; j < npad; ++j) bbuf[size_t(r * npad + j)] = j < p.n ? b[r * p.b_sr + j * p.b_sj] : neg_inf();
      // Four rows at a time: four independent max chains hide the latency.
      constexpr int RB = 4;
      for (int64_t i0 = 0; i0 < p.m; i0 += RB) {
        const int rows = int(std::min<int64_t>(RB, p.m - i0));
        for (int64_t j0 = 0; j0 < p.n; j0 += W) {
          reg acc[RB];
          for (int ii = 0; ii < RB; ++ii) acc[ii] = V::set1(neg_inf());
          for (int64_t r = 0; r < p.k; ++r) {
            const reg bv = V::load(bbuf.data() + r * npad + j0);
            for (int ii = 0; ii < rows; ++ii)
              acc[ii] = V::max(acc[ii], V::min(V::set1(a[(i0 + ii) * p.a_si + r * p.a_sr]), bv));
          }
          for (int ii = 0; ii < rows; ++ii) V::store_partial(p.c + (bi * p.m + i0 + ii) * p.n + j0, acc[ii], int(p.n - j0));
        }
      }
      if (p.chunk) std::fill(p.chunk + bi * p.m * p.n, p.chunk + (bi + 1) * p.m * p.n, 0);
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
        if (p.chunk) std::fill(p.chunk + (bi * p.m + ic + i) * p.n + jc, p.chunk + (bi * p.m + ic + i) * p.n + jc + nc, 0);
      }
      return;
    }
    thread_local std::vector<T> abuf, bbuf;
    const int64_t mc_pad = ceil_div(mc, MR) * MR, nc_pad = ceil_div(nc, NR) * NR;
    abuf.resize(size_t(mc_pad * p.kc));
    bbuf.resize(size_t(nc_pad * p.kc));
    for (int64_t r0 = 0, chunk_id = 0; r0 < p.k; r0 += p.kc, ++chunk_id) {
      const int64_t kc = std::min(p.kc, p.k - r0);
      pack_b(p, bi, jc, nc, r0, kc, bbuf.data());
      pack_a(p, bi, ic, mc, r0, kc, abuf.data());
      // A strip (MR x kc, a few KB) stays in L1 while the B strips stream from L2.
      for (int64_t s = 0; s < mc; s += MR) {
        const T* ap = abuf.data() + (s / MR) * kc * MR;
        for (int64_t t = 0; t < nc; t += NR) {
          reg acc[MR][V::hard_nv];
          micro(ap, bbuf.data() + (t / NR) * kc * NR, kc, acc);
          store_tile(p, acc, bi, ic + s, jc + t, int(std::min<int64_t>(MR, mc - s)), int(std::min<int64_t>(NR, nc - t)),
                     chunk_id);
        }
      }
    }
  }

  // ------------------------------------------------------------ hard argmax
  // Outputs of one tile: turn each winning chunk into the first r of that chunk
  // whose min(A[i,r], B[r,j]) equals C[i,j] (the first-index tie rule), and
  // record where its gradient goes. Equality bits of the whole chunk are
  // gathered first and the first one taken: no data-dependent branch.
  static void argmax(const ArgmaxArgs<T>& p, int64_t task) {
    constexpr int64_t TS = ArgmaxArgs<T>::kArgmaxTile;
    const int64_t tiles_n = ceil_div(p.n, TS), tiles_m = ceil_div(p.m, TS);
    const int64_t jt = task % tiles_n, it = (task / tiles_n) % tiles_m, bi = task / (tiles_n * tiles_m);
    for (int64_t i = it * TS; i < std::min(p.m, (it + 1) * TS); ++i)
      argmax_row(p, bi, i, jt * TS, std::min(p.n, (jt + 1) * TS));
  }

  static void argmax_row(const ArgmaxArgs<T>& p, int64_t bi, int64_t i, int64_t j_begin, int64_t j_end) {
    const T* a = p.a + (bi * p.m + i) * p.k;
    const T* c = p.c + (bi * p.m + i) * p.n;
    int32_t* idx = p.idx + (bi * p.m + i) * p.n;
    // The chunk segments are scattered (latency bound): prefetch a few outputs ahead.
    constexpr int64_t kAhead = 6;
    const int64_t seg_bytes = std::min(p.kc, p.k) * int64_t(sizeof(T));
    auto prefetch = [&](int64_t j) {
      const int64_t off = int64_t(idx[j]) * p.kc;
      const char* pb = reinterpret_cast<const char*>(p.bt + bi * p.bt_sb + j * p.bt_sj + off);
      const char* pa = reinterpret_cast<const char*>(a + off);
      for (int64_t o = 0; o < seg_bytes; o += 64) {
        __builtin_prefetch(pb + o);
        __builtin_prefetch(pa + o);
      }
    };
    const bool contiguous = p.bt_sr == 1;
    if (contiguous)
      for (int64_t j = j_begin; j < std::min(j_end, j_begin + kAhead); ++j) prefetch(j);
    for (int64_t j = j_begin; j < j_end; ++j) {
      const T* bt = p.bt + bi * p.bt_sb + j * p.bt_sj;
      const T h = c[j];
      int64_t r = int64_t(idx[j]) * p.kc;
      const int64_t r1 = std::min(p.k, r + p.kc);
      int64_t found = -1;
      if (contiguous) {
        if (j + kAhead < j_end) prefetch(j + kAhead);
        if (r1 - r == kHardKCArgmax && kHardKCArgmax % W == 0 && kHardKCArgmax <= 64) {
          // A whole chunk (the common case): fixed trip count, no tail masks.
          uint64_t bits = 0;
#pragma GCC unroll 64
          for (int v = 0; v < int(kHardKCArgmax / W); ++v)
            bits |= uint64_t(V::eq_mask(V::min(V::load(a + r + v * W), V::load(bt + r + v * W)), h)) << (v * W);
          if (bits) found = r + __builtin_ctzll(bits);
          r = r1;
        }
        while (found < 0 && r < r1) {
          uint64_t bits = 0;
          int span = 0;  // lanes examined in this window of up to 64
          for (; span < 64 && r + span < r1; span += W) {
            const int cnt = int(std::min<int64_t>(W, r1 - r - span));
            uint64_t lanes =
                V::eq_mask(V::min(V::load_partial(a + r + span, cnt, T(0)), V::load_partial(bt + r + span, cnt, T(0))), h);
            if (cnt < W) lanes &= (uint64_t(1) << cnt) - 1;
            bits |= lanes << span;
          }
          if (bits) found = r + __builtin_ctzll(bits);
          r += span;
        }
      } else {  // few rows: B read in place, down its column
        for (; r < r1; ++r)
          if (tmin(a[r], bt[r * p.bt_sr]) == h) {
            found = r;
            break;
          }
      }
      if (found < 0) found = int64_t(idx[j]) * p.kc;  // unreachable: C[i,j] is attained in its chunk
      idx[j] = encode_winner(found, grad_goes_to_a(a[found], bt[found * p.bt_sr]));
    }
  }

  // ------------------------------------------------------------ soft forward
  // Rows i of a task, columns of one kSoftJT tile. For each row, the r whose
  // scaled A lies below (min shift of the tile) - cut contribute < 2^-cut each
  // to every output of the tile and are skipped; the rest are listed once and
  // swept for every vector group of the tile.
  static void soft_fwd(const SoftFwdArgs<T>& p, int64_t task) {
    constexpr int NV = V::soft_nv;
    constexpr int G = NV * W;
    const int64_t tiles_n = ceil_div(p.n, kSoftJT), tiles_m = ceil_div(p.m, kSoftRowsPerTask);
    const int64_t jt = task % tiles_n, it = (task / tiles_n) % tiles_m, bi = task / (tiles_n * tiles_m);
    const int64_t j_begin = jt * kSoftJT, j_end = std::min(p.n, j_begin + kSoftJT);
    const int64_t i_end = std::min(p.m, (it + 1) * kSoftRowsPerTask);
    thread_local std::vector<int32_t> active;
    active.resize(size_t(p.k));
    const T* bs = p.bs + bi * p.k * p.n;
    for (int64_t i = it * kSoftRowsPerTask; i < i_end; ++i) {
      T* c = p.c + (bi * p.m + i) * p.n;
      const T* as = p.as + (bi * p.m + i) * p.k;
      T hmin = pos_inf();
      for (int64_t j = j_begin; j < j_end; ++j)
        if (std::isfinite(c[j])) hmin = std::min(hmin, c[j]);
      if (hmin == pos_inf()) continue;  // every H of the tile is +-inf: C = H there
      const T thr = hmin * p.scale - p.cut;
      int64_t na = 0;
      for (int64_t r = 0; r < p.k; ++r) {
        active[size_t(na)] = int32_t(r);
        na += (as[r] >= thr);
      }
      for (int64_t j0 = j_begin; j0 < j_end; j0 += G) {
        const int cols = int(std::min<int64_t>(G, j_end - j0));
        reg hs[NV], acc[NV];
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) {
          hs[v] = V::mul(V::load_partial(c + j0 + v * W, cols - v * W, T(0)), V::set1(p.scale));
          acc[v] = V::zero();
        }
        if (cols == G) {
          for (int64_t q = 0; q < na; ++q) {
            const int64_t r = active[size_t(q)];
            const reg av = V::set1(as[r]);
            const T* brow = bs + r * p.n + j0;
#pragma GCC unroll 8
            for (int v = 0; v < NV; ++v) {
              const reg bv = V::load(brow + v * W);
              acc[v] = V::add(acc[v], V::rcp(V::add(V::exp2(V::sub(hs[v], av)), V::exp2(V::sub(hs[v], bv)))));
            }
          }
        } else {
          const int nv = int(ceil_div(cols, W));  // vectors that hold columns
          for (int64_t q = 0; q < na; ++q) {
            const int64_t r = active[size_t(q)];
            const reg av = V::set1(as[r]);
            const T* brow = bs + r * p.n + j0;
            for (int v = 0; v < nv; ++v) {
              const reg bv = V::load_partial(brow + v * W, cols - v * W, T(0));
              acc[v] = V::add(acc[v], V::rcp(V::add(V::exp2(V::sub(hs[v], av)), V::exp2(V::sub(hs[v], bv)))));
            }
          }
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
  // dC/dB for rows r of one task and the columns of one kSoftJT tile:
  //   dB[r, j] = sum_i g[i,j] * v * p^2,  u = exp2(c'-a'), v = exp2(c'-b'), p = 1/(u+v).
  // The rows i whose scaled A[i, r] lies below (min c' of the tile) - cut are
  // skipped (p < 2^-cut). dC/dA is this same kernel on the transposed problem
  // C^T = B^T (max,min) A^T, so the two gradients share one body.
  static void soft_grad(const SoftGradArgs<T>& p, int64_t task) {
    constexpr int NV = V::soft_nv;
    constexpr int G = NV * W;
    const int64_t tiles_n = ceil_div(p.n, kSoftJT), tiles_k = ceil_div(p.k, kSoftRowsPerTask);
    const int64_t jt = task % tiles_n, rt = (task / tiles_n) % tiles_k, bi = task / (tiles_n * tiles_k);
    const int64_t j_begin = jt * kSoftJT, j_end = std::min(p.n, j_begin + kSoftJT);
    const int64_t r_end = std::min(p.k, (rt + 1) * kSoftRowsPerTask);
    thread_local std::vector<int32_t> active;
    active.resize(size_t(p.m));
    const T* cs = p.cs + bi * p.m * p.n;
    const T* g = p.g + bi * p.m * p.n;
    const T* cmin = p.cmin + bi * p.m * tiles_n + jt;
    for (int64_t r = rt * kSoftRowsPerTask; r < r_end; ++r) {
      const T* at = p.at + (bi * p.k + r) * p.m;
      const T* brow = p.bs + (bi * p.k + r) * p.n;
      T* db = p.db + bi * p.db_sb + r * p.db_sr;
      int64_t na = 0;
      for (int64_t i = 0; i < p.m; ++i) {
        active[size_t(na)] = int32_t(i);
        na += (at[i] * p.scale >= cmin[i * tiles_n] - p.cut);
      }
      const reg sv = V::set1(p.scale);
      for (int64_t j0 = j_begin; j0 < j_end; j0 += G) {
        const int cols = int(std::min<int64_t>(G, j_end - j0));
        reg bv[NV], acc[NV];
        for (int v = 0; v < NV; ++v) {
          bv[v] = V::mul(V::load_partial(brow + j0 + v * W, cols - v * W, T(0)), sv);
          acc[v] = V::zero();
        }
        if (cols == G) {
          for (int64_t q = 0; q < na; ++q) {
            const int64_t i = active[size_t(q)];
            const reg av = V::set1(at[i] * p.scale);
#pragma GCC unroll 8
            for (int v = 0; v < NV; ++v) {
              const reg cv = V::mul(V::load(cs + i * p.n + j0 + v * W), sv);
              const reg u = V::exp2(V::sub(cv, av)), w = V::exp2(V::sub(cv, bv[v]));
              const reg pr = V::rcp(V::add(u, w));
              acc[v] = V::add(acc[v], V::mul(V::load(g + i * p.n + j0 + v * W), V::mul(V::mul(w, pr), pr)));
            }
          }
          store_row(db, j0, p.db_sj, acc, G);
        } else {
          const int nv = int(ceil_div(cols, W));  // vectors that hold columns
          for (int64_t q = 0; q < na; ++q) {
            const int64_t i = active[size_t(q)];
            const reg av = V::set1(at[i] * p.scale);
            for (int v = 0; v < nv; ++v) {
              const reg cv = V::mul(V::load_partial(cs + i * p.n + j0 + v * W, cols - v * W, T(0)), sv);
              const reg u = V::exp2(V::sub(cv, av)), w = V::exp2(V::sub(cv, bv[v]));
              const reg pr = V::rcp(V::add(u, w));
              const reg gv = V::load_partial(g + i * p.n + j0 + v * W, cols - v * W, T(0));
              acc[v] = V::add(acc[v], V::mul(gv, V::mul(V::mul(w, pr), pr)));
            }
          }
          store_row(db, j0, p.db_sj, acc, cols);
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
  // dA row: out[r] += g[j] for the outputs whose winner is (A, r). The vector
  // path (V::kScatter) gathers, adds and scatters W outputs at once when their
  // rows are distinct (the ISA's conflict detection says so), else goes scalar.
  static void scatter_a(const ScatterArgs<T>& p, int64_t task) {
    const int32_t* w = p.w + task * p.n;
    const T* g = p.g + task * p.n;
    T* out = p.da + task * p.k;
    int64_t j = 0;
    if constexpr (V::kScatter) {
      for (; j + W <= p.n; j += W)
        if (!V::scatter_add_to_a(out, w + j, g + j))
          for (int l = 0; l < W; ++l)
            if (winner_to_a(w[j + l])) out[w[j + l]] += g[j + l];
    }
    for (; j < p.n; ++j)
      if (winner_to_a(w[j])) out[w[j]] += g[j];
  }

  // dB column tile: out[r, j] += g[i, j] for the outputs whose winner is (B, r).
  // The tile's rows lie n apart in dB and would share a few cache sets, so the
  // sums go to a contiguous k x kCols slab first, copied out once. Lanes are
  // distinct columns, so a vector never adds twice to one element.
  static void scatter_b(const ScatterArgs<T>& p, int64_t task) {
    constexpr int64_t C = ScatterArgs<T>::kCols;
    const int64_t tiles = ceil_div(p.n, C);
    const int64_t bi = task / tiles, j0 = (task % tiles) * C, j1 = std::min(p.n, j0 + C);
    thread_local std::vector<T> slab;
    slab.assign(size_t(p.k * C), T(0));
    for (int64_t i = 0; i < p.m; ++i) {
      const int32_t* w = p.w + (bi * p.m + i) * p.n;
      const T* g = p.g + (bi * p.m + i) * p.n;
      int64_t j = j0;
      if constexpr (V::kScatter) {
        for (; j + W <= j1; j += W) V::scatter_add_to_b(slab.data() + (j - j0), w + j, g + j, C);
      }
      for (; j < j1; ++j)
        if (!winner_to_a(w[j])) slab[size_t(winner_index(w[j]) * C + (j - j0))] += g[j];
    }
    T* out = p.db + bi * p.k * p.n;
    for (int64_t r = 0; r < p.k; ++r)
      for (int64_t jj = j0; jj < j1; ++jj) out[r * p.n + jj] = slab[size_t(r * C + (jj - j0))];
  }

  static KernelTable<T> table(const char* name) {
    return {name, &hard, &argmax, &soft_fwd, &soft_grad, &scatter_a, &scatter_b};
  }
};

}  // namespace cpu
}  // namespace vico_flow
