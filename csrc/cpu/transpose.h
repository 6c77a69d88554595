// Transposed copies, shared by the op layer (any element type) and the
// per-ISA kernels (their vector path covers whole 16x16 float blocks and
// hands the rest to this). Plain loops over one block of rows.
#pragma once

#include <algorithm>
#include <cstdint>

namespace vico_flow {
namespace cpu {

// Outputs written once, whole, of at least this size are written with
// non-temporal stores where the kernels can (TransposeArgs::stream,
// ScatterArgs::stream): an ordinary store first reads each line for
// ownership, and evicts what the pass still reads. Smaller ones stay in
// cache for their consumer.
constexpr int64_t kStreamBytes = int64_t(4) << 20;

// X[b, k, n] (strides s_sb, s_sr, s_sc) -> out[b, n, k]: rows of out `ld`
// apart (0: k, contiguous), products n * ld apart.
template <class T>
struct TransposeArgs {
  const T* src;
  int64_t s_sb, s_sr, s_sc;
  T* dst;
  int64_t batch, k, n;
  // Write whole 64-byte lines of dst with non-temporal stores where the ISA
  // path can (the float 16x16 blocks); set for copies of kStreamBytes or
  // more (the soft backward's transposes). The hard forward's copy of B
  // opts out: its winner search reads scattered lines of it right after
  // (ops_cpu.cpp).
  bool stream = false;
  // A task: kRows rows of X along their length. Reading the rows through a
  // small tile and writing columns of it out keeps both sides in whole cache
  // lines (reading down a column directly puts rows 4 KB apart into one L1
  // set and thrashes it).
  static constexpr int64_t kRows = 16;
  int64_t num_tasks() const { return batch * ((k + kRows - 1) / kRows); }
  int64_t row_blocks() const { return (k + kRows - 1) / kRows; }
  // A depth chunk of B^T written from a packed strip (Kernels::transpose_strip)
  // lands in rows of the whole B^T, longer than the chunk.
  int64_t ld = 0;
  int64_t dst_ld() const { return ld ? ld : k; }
};

// Columns [c0, n) of the task's row block, through a kRows x kRows tile.
template <class T>
void transpose_rest(const TransposeArgs<T>& p, int64_t task, int64_t c0) {
  constexpr int64_t R = TransposeArgs<T>::kRows;
  const int64_t bi = task / p.row_blocks(), r0 = (task % p.row_blocks()) * R, rows = std::min(p.k - r0, R);
  const T* src = p.src + bi * p.s_sb + r0 * p.s_sr;
  const int64_t ld = p.dst_ld();
  T* dst = p.dst + bi * p.n * ld + r0;
  T tile[R][R];
  for (; c0 < p.n; c0 += R) {
    const int64_t cols = std::min(p.n - c0, R);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < cols; ++j) tile[r][j] = src[r * p.s_sr + (c0 + j) * p.s_sc];
    for (int64_t j = 0; j < cols; ++j)
      for (int64_t r = 0; r < rows; ++r) dst[(c0 + j) * ld + r] = tile[r][j];
  }
}

}  // namespace cpu
}  // namespace vico_flow
