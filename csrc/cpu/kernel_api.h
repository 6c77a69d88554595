// The interface between the CPU op layer (ops_cpu.cpp: validation, layout,
// threading) and the per-instruction-set kernel bodies (kernels.h, compiled
// once per ISA). Plain structs of pointers and sizes: no torch types cross it.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>

#include "transpose.h"

namespace vico_flow {
namespace cpu {

// Cache tiling of the hard product (same for every ISA, so task counts are
// ISA independent). mc rows x NC columns of C per task (mc a multiple of
// kHardMC, chosen per call: larger blocks read B less often), depth in
// chunks of kHardKC. A chunk is deep: one B strip of a chunk (kHardKC x 64
// values, 256 KB) stays in L2 while the A strips stream past it, and every
// output merges its register tile into C once per chunk, which for the
// tracked product means merging the sub-chunk ids too. At 1024^3 (one chunk
// instead of four 256-deep ones), in A/B runs in one process, the forward took
// 4-9% less time and the tracked forward 6-19% less.
constexpr int64_t kHardMC = 48;
constexpr int64_t kHardNC = 256;
constexpr int64_t kHardKC = 1024;
// When the argmax is wanted, the register tile also notes in which kHardSub-deep
// sub-chunk its running max last grew (one compare per accumulator and
// sub-chunk against its value before, held in registers; Kernels::micro_tracked),
// as the sub-chunk's first r: the winner search addresses the operands with it
// as it is. The exact r is then one vector compare of kHardSub values away
// (Kernels::argmax).
constexpr int64_t kHardSub = 16;
static_assert(kHardKC % kHardSub == 0, "depth chunks hold whole sub-chunks");

// Column tile of the soft kernels: the skip list of a row is built per tile.
constexpr int64_t kSoftJT = 256;
constexpr int64_t kSoftRowsPerTask = 8;  // rows r of a soft gradient task
// Rows i of a soft forward task: its factored sum (Kernels::soft_fwd) computes
// k x kSoftJT exp2 of B once per task, shared by these rows.
constexpr int64_t kSoftFwdRows = 32;
// The soft kernels factor their terms (Kernels::soft_fwd, soft_grad) where a
// row's scaled shifts lie within this many of the tile's lowest (a power of 2
// between them stays far inside float32's range and the exp2 clamp).
constexpr double kSoftFactorSpread = 64;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Whole products a task takes when each holds `work` units (outputs, terms)
// and a task should hold about `budget` of them: at least one.
inline int64_t products_per_task(int64_t budget, int64_t work) {
  return std::max<int64_t>(1, budget / std::max<int64_t>(1, work));
}

template <class T>
struct HardArgs {
  const T* a;  // A[b, i, r] at a + b*a_sb + i*a_si + r*a_sr (any strides, 0 for broadcast)
  int64_t a_sb, a_si, a_sr;
  const T* b;  // B[b, r, j]
  int64_t b_sb, b_sr, b_sj;
  T* c;          // contiguous [batch, m, n]
  int32_t* sub;  // nullable; contiguous [batch, m, n]: first r of the kHardSub-deep sub-chunk of the first max
                 // (small() products: the encoded winner itself, see Kernels::hard_small)
  int64_t batch, m, n, k, mc;
  // Nullable: set to 1 when an operand holds NaN. The operands are checked as
  // they are packed (in cache, a vector compare per W values), so the op layer
  // needs no separate pass over them to refuse NaN.
  std::atomic<int>* nan_seen = nullptr;
  // Write `sub` with non-temporal stores (whole 64-byte lines, where the ISA
  // has them): set for products of one depth chunk whose ids hold
  // kStreamBytes or more. The ids are written once and read back once by the
  // winner search, in order, after the whole product; an ordinary store first
  // reads each line for ownership and evicts the product's own operands.
  bool stream_sub = false;
  // Many small products (n below one register tile, k up to kSmallMaxK, e.g.
  // the per-pixel temporal blocks of a video): a task takes whole products,
  // about kSmallTaskTerms triples of them (32 per-pixel blocks [4x16]x[16x16]),
  // and skips the cache tiling, whose padding would waste most lanes. (With a
  // fixed 32 products a task, a batch of up to 32 products ran on one thread
  // whatever their size: 8 products [64x256]x[256x32] with winners took 0.31
  // ms, split 0.20.) kSmallMaxK is the bound from when depth chunks were
  // 256 deep; the path holds a whole product's B in a buffer, so it stays small.
  static constexpr int64_t kSmallTaskTerms = int64_t(1) << 15;
  static constexpr int64_t kSmallMaxK = 256;
  static bool small_shape(int64_t m, int64_t n, int64_t k) { return n <= 32 && k <= kSmallMaxK && m <= 64; }
  bool small() const { return small_shape(m, n, k); }
  // Products a small() task takes (an empty depth still writes every output).
  int64_t products_per_task() const { return cpu::products_per_task(kSmallTaskTerms, m * n * std::max<int64_t>(k, 1)); }
  int64_t num_tasks() const {
    return small() ? ceil_div(batch, products_per_task()) : batch * ceil_div(m, mc) * ceil_div(n, kHardNC);
  }

  // Operands packed once for the whole product (Kernels::hard_pack, a parallel
  // pass before the product's tasks), each nullable. Without them every task
  // packs its own blocks: A once per column block of C and B once per row
  // block, and at 2048^3 (11 row blocks, 8 column blocks) that packing took
  // about a quarter of the forward. Layout: per product and depth chunk, the
  // strips of mr rows of A (nr columns of B) as a task packs them (kp x mr,
  // kp x nr; kp = packed_depth), one after another; pa_bits / pb_bits: per
  // strip, 1 where V::bits_min applies to all its values. mr and nr are the
  // register tile of the ISA that runs the product (KernelTable::hard_mr, hard_nr).
  T* pa = nullptr;
  T* pb = nullptr;
  // Nullable, only with pb: contiguous [batch, n, k], where hard_pack writes
  // B^T (the winner search's copy) from each B strip it has just packed,
  // so that B is read once for both.
  T* bt = nullptr;
  uint8_t* pa_bits = nullptr;
  uint8_t* pb_bits = nullptr;
  int64_t mr = 0, nr = 0;
  // A task of hard_pack packs this many strips of A (48 rows: 192 KB at
  // 1024-deep chunks) or one strip of B.
  static constexpr int64_t kPackStripsA = 8;
  int64_t chunks() const { return ceil_div(k, kHardKC); }
  int64_t chunk_depth(int64_t c) const { return std::min(kHardKC, k - c * kHardKC); }
  // Depth of a packed chunk: the tracked tile runs whole sub-chunks (the
  // packing pads with -inf).
  int64_t packed_depth(int64_t kc) const { return sub ? ceil_div(kc, kHardSub) * kHardSub : kc; }
  int64_t packed_total_depth() const { return (chunks() - 1) * kHardKC + packed_depth(chunk_depth(chunks() - 1)); }
  int64_t a_strips() const { return ceil_div(m, mr); }
  int64_t b_strips() const { return ceil_div(n, nr); }
  // Where strip s (of `strips`, each `width` wide) of chunk c of product bi
  // starts in pa or pb, and its index in pa_bits or pb_bits. Every chunk
  // before the last is kHardKC deep.
  int64_t packed_offset(int64_t strips, int64_t width, int64_t bi, int64_t c, int64_t s) const {
    return (bi * packed_total_depth() * strips + c * kHardKC * strips + s * packed_depth(chunk_depth(c))) * width;
  }
  int64_t strip_index(int64_t strips, int64_t bi, int64_t c, int64_t s) const { return (bi * chunks() + c) * strips + s; }
  int64_t packed_a_size() const { return batch * packed_total_depth() * a_strips() * mr; }
  int64_t packed_b_size() const { return batch * packed_total_depth() * b_strips() * nr; }
  int64_t pack_a_tasks() const { return pa ? ceil_div(a_strips(), kPackStripsA) : 0; }
  int64_t pack_b_tasks() const { return pb ? b_strips() : 0; }
  int64_t pack_tasks() const { return batch * chunks() * (pack_a_tasks() + pack_b_tasks()); }
};

// Products of one column (n == 1; soft readouts: [K x N] x [N x 1]), hard
// without winners and soft, forward and backward: vectors along the inner
// dimension. The tiled kernels pad the one column to a tile's width (NR = 64
// in float32 on AVX-512): a hard [4 x 40960] x [40960 x 1] product took
// 1.0 ms there, its soft forward 2.2 ms, fwd+bwd 6.7 ms. A task takes kBlock
// values of r of one product and kRows of its rows (forward) or all of them
// (gradient). Forward kernels write each row's partial max (hard) or partial
// sum of terms (soft) to part[(b * blocks() + block) * m + i]; the gradient
// kernel writes its block of dA and dB.
template <class T>
struct ColArgs {
  const T* a;  // A[b, i, r] at a + b*a_sb + i*a_si + r (unit stride along r)
  const T* b;  // B[b, r, 0] at b + b*b_sb + r (unit stride along r)
  int64_t a_sb, a_si, b_sb;
  T* part;
  int64_t batch, m, k;
  std::atomic<int>* nan_seen;  // set when an operand holds NaN (hard_col)
  // soft: c = the hard product H (soft_col) or C with 0 where it is not finite
  // (soft_col_grad), contiguous [b, m]; scale = log2(e) / tau.
  const T* c = nullptr;
  T scale = T(1);
  // soft_col_grad: g contiguous [b, m] with 0 where C is not finite, scaled by
  // gnorm under flush-to-zero (see SoftGradArgs::gnorm); dA contiguous
  // [b, m, k], dB contiguous [b, k].
  const T* g = nullptr;
  T gnorm = T(1);
  T* da = nullptr;
  T* db = nullptr;
  static constexpr int64_t kBlock = 4096;  // 16 KB of B in float32: stays in L1 across the rows
  // The forward kernels split the rows too, kRows to a task (so that a tall A
  // with a short column still spreads over the threads); the gradient kernel
  // takes every row of its block, whose dB it owns.
  static constexpr int64_t kRows = 64;
  // Used from this depth on (shallower one-column products are small products).
  static constexpr int64_t kMinDepth = 64;
  static bool applies(int64_t n, int64_t k) { return n == 1 && k >= kMinDepth; }
  int64_t blocks() const { return ceil_div(k, kBlock); }
  int64_t row_blocks() const { return ceil_div(m, kRows); }
  int64_t num_tasks() const { return batch * blocks() * row_blocks(); }  // forward
  int64_t grad_tasks() const { return batch * blocks(); }
};

template <class T>
struct ArgmaxArgs {
  const T* a;    // contiguous [batch, m, k]
  const T* bt;   // B[b, r, j] at bt + b*bt_sb + j*bt_sj + r*bt_sr (a contiguous transpose: bt_sr == 1)
  int64_t bt_sb, bt_sj, bt_sr;
  const T* c;    // contiguous [batch, m, n]
  int32_t* idx;  // in: winning sub-chunk's first r (HardArgs::sub), out: encode_winner(first r reaching C, A <= B there)
  int64_t batch, m, n, k;
  // kRows rows of outputs per task (the first rows of a task miss the
  // prefetches of Kernels::argmax: with 8 rows the 1024^3 search took ~0.1
  // ms longer). An output needs one sub-chunk of a row of A and of a row of
  // B^T (a cache line each at kHardSub = 16 floats), both scattered: they are
  // prefetched kAhead outputs ahead (about an L3 latency: 16 was measurably
  // short, 32 to 128 alike).
  static constexpr int64_t kRows = 32;
  static constexpr int64_t kAhead = 48;
  // Where the row blocks are too few to share out (a few flow rows against a
  // wide B), each is split into column blocks of at least kMinCols outputs,
  // up to kMinTasks tasks in all, rounded to 16 outputs (a 64-byte line of
  // winners: where a row starts a line, no two tasks write one). With one
  // task, the [4 x 4096] x [4096 x 4096] search ran on one thread, the
  // other waiting.
  static constexpr int64_t kMinTasks = 16, kMinCols = 256;
  int64_t row_tasks() const { return batch * ceil_div(m, kRows); }
  int64_t cols_per_task() const {
    const int64_t rows = row_tasks();
    const int64_t blocks =
        rows == 0 || rows >= kMinTasks ? 1 : std::max<int64_t>(1, std::min(ceil_div(n, kMinCols), ceil_div(kMinTasks, rows)));
    return std::max<int64_t>(1, ceil_div(ceil_div(n, blocks), 16) * 16);
  }
  int64_t num_tasks() const { return row_tasks() * ceil_div(n, cols_per_task()); }
};

template <class T>
struct SoftFwdArgs {
  const T* a;   // contiguous [batch, m, k], A unscaled: the kernel multiplies by scale as it reads (no copy)
  const T* bs;  // contiguous [batch, k, n], B * s with s = log2(e)/tau (read in vectors: scaled once)
  T* c;         // contiguous [batch, m, n]: in the hard product H, out the soft one
  int64_t batch, m, n, k;
  T scale, tau, cut;
  int64_t num_tasks() const { return batch * ceil_div(m, kSoftFwdRows) * ceil_div(n, kSoftJT); }
};

template <class T>
struct SoftGradArgs {
  // Unscaled operands: the kernel multiplies by `scale` (s = log2(e)/tau) as it
  // loads them, so the caller makes no scaled copies.
  const T* at;    // contiguous [batch, k, m], A^T
  const T* bs;    // contiguous [batch, k, n], B
  const T* cs;    // contiguous [batch, m, n], C (0 where C is not finite)
  const T* g;     // contiguous [batch, m, n], upstream gradient (0 where C is not finite)
  const T* cmin;  // contiguous [batch, m, ceil(n/kSoftJT)]: min finite cs of the tile, +inf if none
  T* db;          // dC/dB[b, r, j] at db + b*db_sb + r*db_sr + j*db_sj (db_sj == 1: vector stores;
                  // otherwise strided, e.g. dA written in place by the transposed call)
  int64_t db_sb, db_sr, db_sj;
  int64_t batch, m, n, k;
  T scale, cut;
  // The factored terms (Kernels::soft_grad): per tile, its lowest finite cs,
  // unscaled (gamma, [batch, ceil(n/kSoftJT)], +inf if none); per row and tile,
  // whether the row takes them (fact, [batch, m, ceil(n/kSoftJT)]); and for
  // those, g * gnorm * 2^((gamma - cs) * scale) (gf, [batch, m, n], written by
  // soft_grad_prep; unused elsewhere, null when no row takes them), with
  // gnorm = 1 / max |g| (or 1), so that the denormals the factored terms
  // flush are relative to the largest upstream gradient.
  const T* gamma = nullptr;
  const uint8_t* fact = nullptr;
  T* gf = nullptr;
  T gnorm = T(1);
  int64_t num_tasks() const { return batch * ceil_div(n, kSoftJT) * ceil_div(k, kSoftRowsPerTask); }
};

// Both gradients of small soft products at once (Kernels::soft_grad_whole):
// products whose operands and output hold at most kMaxElems values together
// (a video's per-pixel blocks), about kTaskTerms terms of the sum to a task.
// The tiled path (SoftGradArgs) makes transposed copies and one pass per
// gradient, in tasks of a few rows: for 2560 products [4x16]x[16x16] that was
// 10,240 tasks and the backward took ~3.3x the forward.
template <class T>
struct SoftWholeArgs {
  const T* a;   // contiguous [batch, m, k], unscaled
  const T* b;   // contiguous [batch, k, n], unscaled
  const T* cs;  // contiguous [batch, m, n], C (0 where C is not finite)
  const T* g;   // contiguous [batch, m, n], upstream gradient (0 where C is not finite)
  T* da;        // contiguous [batch, m, k], written whole
  T* db;        // contiguous [batch, k, n], written whole
  int64_t batch, m, n, k;
  T scale;
  T gnorm = T(1);  // g scaled by this (1 / max |g|, or 1) under flush-to-zero (Kernels::FlushDenormals)
  static constexpr int64_t kMaxElems = 4096;
  static constexpr int64_t kTaskTerms = int64_t(1) << 16;
  static bool applies(int64_t m, int64_t n, int64_t k) { return m * k + k * n + m * n <= kMaxElems; }
  int64_t products_per_task() const { return cpu::products_per_task(kTaskTerms, m * n * k); }
  int64_t num_tasks() const { return ceil_div(batch, products_per_task()); }
};

// Scatter of the hard gradient from the encoded winners (tropical_common.h).
template <class T>
struct ScatterArgs {
  const T* g;        // contiguous [batch, m, n] upstream gradient
  const int32_t* w;  // contiguous [batch, m, n] encoded winners
  T* da;             // contiguous [batch, m, k], written whole
  T* db;             // contiguous [batch, k, n], written whole
  int64_t batch, m, n, k;
  // Write dA and dB with non-temporal stores; set when they hold kStreamBytes
  // or more (each is written once, whole, while this pass still reads the
  // winners and upstream gradient). At 1024^3 (8 MB of gradients) the scatter
  // took 12-22% less time (in-process A/B).
  bool stream = false;
  static constexpr int64_t kCols = 64;  // dB column tile of a task (its slab: k x kCols values)
  // Rows of dA per task: enough for kRowOutputs outputs, but at least
  // kMinRowTasks tasks. One row per task (1024 tasks at 1024^3, ~1 us each)
  // cost about as much again in taking tasks from the shared counter (an
  // atomic whose cache line moves between the cores: ~1 ms of CPU time per
  // 1024^3 backward on an Intel Xeon, perf) and in fencing each row's
  // non-temporal stores.
  static constexpr int64_t kRowOutputs = 8192, kMinRowTasks = 8;
  int64_t rows_per_task() const {
    return std::max<int64_t>(1, std::min(ceil_div(kRowOutputs, std::max<int64_t>(n, 1)), ceil_div(batch * m, kMinRowTasks)));
  }
  int64_t rows_tasks() const { return ceil_div(batch * m, rows_per_task()); }
  int64_t cols_tasks() const { return batch * ceil_div(n, kCols); }
  // Few rows of outputs (m * kDirectRatio <= k, e.g. the flow rows of
  // [4 x 4096] x [4096 x 4096]) put at most m values into each column of a
  // dB tile: the tile is zeroed in place and those values added into dB
  // itself, instead of zeroing a k x kCols slab, adding there and copying it
  // out (at [4 x 4096] x [4096 x 4096] the slabs' zeroing and copy-out took
  // a third of the backward).
  static constexpr int64_t kDirectRatio = 16;
  bool direct_cols() const { return m * kDirectRatio <= k; }
  // Products whose two gradients together hold at most kWholeElems values
  // (16 KB in float32: they stay in L1) and that have at most kWholeOutputs
  // outputs (a task's worth: a larger one, e.g. an outer product with k = 1,
  // keeps the parallel split) are scattered whole, several per task
  // (Kernels::scatter_whole), about kWholeOutputs outputs each. Split
  // into rows of dA and column tiles of dB, the 2560 products [4x16]x[16x16]
  // of a video's per-pixel blocks made 12,800 tasks of 16 to 64 outputs, and
  // each dB task zeroed and copied a k x kCols slab for 16 columns.
  static constexpr int64_t kWholeElems = 4096;
  static constexpr int64_t kWholeOutputs = 4096;
  bool whole_products() const { return m * k + k * n <= kWholeElems && m * n <= kWholeOutputs; }
  int64_t products_per_task() const { return cpu::products_per_task(kWholeOutputs, m * n); }
  int64_t whole_tasks() const { return ceil_div(batch, products_per_task()); }
};

template <class T>
struct KernelTable {
  const char* isa;
  void (*hard)(const HardArgs<T>&, int64_t task);
  void (*hard_pack)(const HardArgs<T>&, int64_t task);  // HardArgs::pa / pb, before `hard`
  int hard_mr, hard_nr;  // the register tile: HardArgs::mr, nr
  void (*argmax)(const ArgmaxArgs<T>&, int64_t task);  // winner search after `hard` with HardArgs::sub
  void (*soft_fwd)(const SoftFwdArgs<T>&, int64_t task);
  void (*soft_grad)(const SoftGradArgs<T>&, int64_t task);
  void (*soft_grad_prep)(const SoftGradArgs<T>&, int64_t row);  // SoftGradArgs::gf, one row of batch * m per task
  void (*soft_grad_whole)(const SoftWholeArgs<T>&, int64_t task);  // products_per_task() whole products per task
  void (*scatter_a)(const ScatterArgs<T>&, int64_t task);  // rows_per_task() rows of dA per task
  void (*scatter_b)(const ScatterArgs<T>&, int64_t task);  // one column tile of dB per task
  void (*scatter_whole)(const ScatterArgs<T>&, int64_t task);  // products_per_task() whole products per task
  void (*transpose)(const TransposeArgs<T>&, int64_t task);  // one block of kRows rows per task
  void (*hard_col)(const ColArgs<T>&, int64_t task);  // one-column products (ColArgs)
  void (*soft_col)(const ColArgs<T>&, int64_t task);
  void (*soft_col_grad)(const ColArgs<T>&, int64_t task);
};

// Defined in kernels_<isa>.cpp.
extern const KernelTable<float> kAvx512Float;
extern const KernelTable<double> kAvx512Double;
extern const KernelTable<float> kAvx2Float;
extern const KernelTable<double> kAvx2Double;
extern const KernelTable<float> kScalarFloat;
extern const KernelTable<double> kScalarDouble;

}  // namespace cpu
}  // namespace vico_flow
