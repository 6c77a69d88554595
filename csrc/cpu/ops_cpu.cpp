// CPU implementations of the tropical products: layout and dtype handling,
// threading, instruction-set dispatch. The arithmetic lives in kernels.h; the
// argument checks every backend shares live in vico_flow/ops.py (these entry
// points are private and assume checked, already broadcast 3-D inputs).
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <atomic>
#include <cmath>
#include <limits>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../tropical_common.h"
#include "kernel_api.h"
#include "ops_cpu.h"
#include "output_pool.h"

namespace vico_flow {
namespace cpu {
namespace {

bool cpu_has(const char* feature) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (std::string(feature) == "avx512") return __builtin_cpu_supports("avx512f");
  if (std::string(feature) == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
  return std::string(feature) == "scalar";
}

const KernelTable<float>* best_float_table() {
  if (cpu_has("avx512")) return &kAvx512Float;
  if (cpu_has("avx2")) return &kAvx2Float;
  return &kScalarFloat;
}

std::atomic<const KernelTable<float>*> g_float_table{nullptr};

const KernelTable<float>& float_table() {
  const KernelTable<float>* t = g_float_table.load();
  if (!t) {
    t = best_float_table();
    g_float_table.store(t);
  }
  return *t;
}

template <class T>
const KernelTable<T>& table_for();
template <>
const KernelTable<float>& table_for<float>() {
  return float_table();
}
// float64 follows the float32 choice: every float64 kernel runs in 8-lane
// AVX-512 vectors, or 4-lane AVX2 ones, or scalar code (in scalar code the
// 1024^3 hard product took 163 ms, its backward 5.1-5.5 ms, and the 512^3 soft
// forward 39-42 ms).
template <>
const KernelTable<double>& table_for<double>() {
  const KernelTable<float>* f = &float_table();
  return f == &kAvx512Float ? kAvx512Double : f == &kAvx2Float ? kAvx2Double : kScalarDouble;
}

// Half and bfloat16 compute in float32 (min/max are exact there, and the soft
// product needs the range); float32 and float64 compute in their own type.
at::ScalarType compute_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

template <class F>
void run_tasks(int64_t n, const F& f) {
  if (n <= 0) return;
  at::parallel_for(0, n, 1, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) f(t);
  });
}

void check_3d(const at::Tensor& A, const at::Tensor& B) {
  TORCH_CHECK(A.dim() == 3 && B.dim() == 3 && A.size(0) == B.size(0) && A.size(2) == B.size(1),
              "vico_flow._C expects broadcast 3-D operands [b,m,k] x [b,k,n], got ", A.sizes(), " and ", B.sizes());
  TORCH_CHECK(A.device().is_cpu() && B.device().is_cpu(), "vico_flow._C: CPU kernels need CPU tensors");
  TORCH_CHECK(A.scalar_type() == B.scalar_type(), "vico_flow._C: operand dtypes differ");
}

// Rows per task: as many as keep ~8 tasks per thread (each task reads its
// blocks of B into L2, or packs them where B is not packed once for the product),
// from kHardMC to kMaxRows. The task's block of C (and of sub-chunk ids when
// tracking) is merged after every depth chunk: with 256-deep chunks, 768 rows
// made the 2048^3 forward 13% slower than 192 (and the tracked one 14%); not
// measured again since the chunks became 1024 deep.
int64_t hard_row_block(int64_t batch, int64_t m, int64_t n) {
  constexpr int64_t kMaxRows = 4 * kHardMC;
  const int64_t want = 8 * at::get_num_threads();
  const int64_t col_tasks = batch * ceil_div(n, kHardNC);
  const int64_t row_blocks = std::max<int64_t>(1, ceil_div(want, std::max<int64_t>(col_tasks, 1)));
  const int64_t rows = ceil_div(ceil_div(m, row_blocks), kHardMC) * kHardMC;
  return std::min<int64_t>(std::max<int64_t>(rows, kHardMC), kMaxRows);
}

// Arguments of the hard kernel for 3-D A, B and C; `sub` (nullable) receives
// the kHardSub-deep sub-chunk of each output's first maximum.
template <class T>
HardArgs<T> hard_args(const at::Tensor& A, const at::Tensor& B, at::Tensor& C, int32_t* sub) {
  const int64_t batch = A.size(0), m = A.size(1), k = A.size(2), n = B.size(2);
  return {A.data_ptr<T>(), A.stride(0), A.stride(1), A.stride(2),
          B.data_ptr<T>(), B.stride(0), B.stride(1), B.stride(2),
          C.data_ptr<T>(), sub, batch, m, n, k, hard_row_block(batch, m, n)};
}

// NaN is refused (vico_flow.ops names the operand and where): the kernels
// note it while they pack the operands.
void refuse_nan(const std::atomic<int>& nan_seen) {
  TORCH_CHECK_VALUE(!nan_seen.load(), "vico_flow._C: an operand contains NaN; expected finite values or +-inf");
}

// One task of a transposed copy: float through the kernels' table (vector
// 16x16 blocks), other types through the shared tile loop (transpose.h).
template <class T>
void transpose_task(const TransposeArgs<T>& p, int64_t t) {
  if constexpr (std::is_same_v<T, float>)
    float_table().transpose(p, t);
  else
    transpose_rest(p, t, 0);
}

// Arguments of a contiguous [b, n, k] copy of X [b, k, n] into `out`
// (allocated when undefined).
template <class T>
TransposeArgs<T> transpose_args(const at::Tensor& X, at::Tensor& out) {
  const int64_t batch = X.size(0), k = X.size(1), n = X.size(2);
  if (!out.defined()) out = empty_output({batch, n, k}, X.options());  // recycled memory: no page faults per call
  TransposeArgs<T> p{X.data_ptr<T>(), X.stride(0), X.stride(1), X.stride(2), out.data_ptr<T>(), batch, k, n};
  p.stream = out.numel() * int64_t(sizeof(T)) >= kStreamBytes;
  return p;
}

// X^T, contiguous, in `out` when given.
template <class T>
at::Tensor transposed_copy(const at::Tensor& X, at::Tensor out = at::Tensor()) {
  const TransposeArgs<T> p = transpose_args<T>(X, out);
  run_tasks(p.num_tasks(), [&](int64_t t) { transpose_task(p, t); });
  return out;
}

// Tasks [0, n) taken in order by whichever thread is free: for task lists
// whose tasks differ in length, and on machines where a core is sometimes
// taken by another process (at 2048^3 the hard product took 10% less time
// than with a fixed split of its tasks).
template <class F>
void run_tasks_dynamic(int64_t n, const F& f) {
  if (n <= 0) return;
  std::atomic<int64_t> next{0};
  at::parallel_for(0, at::get_num_threads(), 1, [&](int64_t, int64_t) {
    for (int64_t t = next.fetch_add(1); t < n; t = next.fetch_add(1)) f(t);
  });
}

// The buffers of HardArgs::pa / pb and their strip flags, alive for one product.
struct PackedOperands {
  at::Tensor a, b;
  std::vector<uint8_t> a_bits, b_bits;
};

// Packs each operand once for the whole product (Kernels::hard_pack) where its
// tasks would otherwise pack the same block several times: A when C has more
// than one column block, B when it has more than one row block (the thin flow
// products, one row block, pack B once anyway and keep no copy of it); with B
// packed once, B^T (`bt`, nullable: contiguous [b, n, k]) is written from its
// strips as they are packed. In
// A/B runs in one process on an Intel Xeon: the 1024^3 forward 13.4-13.9 ->
// 11.7-11.9 ms, 2048^3 111-116 -> 95-97 ms. The copy costs memory for the
// call: up to kMaxPackedBytes per operand (a 4096 x 4096 float32 one with its
// padding to whole strips), beyond which (large batches of flow products) the
// tasks pack as before.
template <class T>
void pack_once(HardArgs<T>& p, const KernelTable<T>& kt, PackedOperands& packed, T* bt) {
  constexpr int64_t kMaxPackedBytes = int64_t(80) << 20;
  if (p.small() || p.k == 0 || p.m == 0 || p.n == 0) return;
  p.mr = kt.hard_mr;
  p.nr = kt.hard_nr;
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  if (ceil_div(p.n, kHardNC) > 1 && p.packed_a_size() * int64_t(sizeof(T)) <= kMaxPackedBytes) {
    packed.a = empty_output({p.packed_a_size()}, opts);  // recycled memory, 2 MB pages
    packed.a_bits.resize(size_t(p.batch * p.chunks() * p.a_strips()));
    p.pa = packed.a.data_ptr<T>();
    p.pa_bits = packed.a_bits.data();
  }
  if (ceil_div(p.m, p.mc) > 1 && p.packed_b_size() * int64_t(sizeof(T)) <= kMaxPackedBytes) {
    packed.b = empty_output({p.packed_b_size()}, opts);
    packed.b_bits.resize(size_t(p.batch * p.chunks() * p.b_strips()));
    p.pb = packed.b.data_ptr<T>();
    p.pb_bits = packed.b_bits.data();
    p.bt = bt;
  }
  run_tasks_dynamic(p.pack_tasks(), [&](int64_t t) { kt.hard_pack(p, t); });
}

// The operands of a one-column product with r at unit stride (a copy only
// where it is not), and the ColArgs that read them.
template <class T>
struct ColOperands {
  at::Tensor A, B;
  ColArgs<T> args;
  ColOperands(const at::Tensor& A_in, const at::Tensor& B_in)
      : A(A_in.stride(2) == 1 ? A_in : A_in.contiguous()),
        B(B_in.stride(1) == 1 ? B_in : B_in.contiguous()),
        args{A.data_ptr<T>(), B.data_ptr<T>(), A.stride(0), A.stride(1), B.stride(0), nullptr,
             A.size(0),       A.size(1),       A.size(2),   nullptr} {}
};

// C = A (max,min) B for one-column products (ColArgs), C contiguous: each
// task's partial maxima, then their max per output; raises ValueError when an
// operand holds NaN.
template <class T>
void hard_col_into(const at::Tensor& A_in, const at::Tensor& B_in, at::Tensor& C) {
  ColOperands<T> ops(A_in, B_in);
  ColArgs<T>& p = ops.args;
  std::atomic<int> nan_seen{0};
  p.nan_seen = &nan_seen;
  const int64_t blocks = p.blocks(), outputs = p.batch * p.m;
  at::Tensor part = at::empty({outputs * blocks}, C.options());
  p.part = part.data_ptr<T>();
  const auto& kt = table_for<T>();
  run_tasks_dynamic(p.num_tasks(), [&](int64_t t) { kt.hard_col(p, t); });
  refuse_nan(nan_seen);
  T* const c = C.data_ptr<T>();
  const T* const q = p.part;
  for (int64_t o = 0; o < outputs; ++o) {  // o = bi * m + i
    const int64_t bi = o / p.m, i = o % p.m;
    T best = q[bi * blocks * p.m + i];
    for (int64_t blk = 1; blk < blocks; ++blk) best = tmax(best, q[(bi * blocks + blk) * p.m + i]);
    c[o] = best;
  }
}

// The soft one-column product (ColArgs) into C, which holds the hard one H:
// per output with a finite H, C = H + tau ln(sum of the tasks' partial sums).
template <class T>
void soft_col_into(const at::Tensor& A_in, const at::Tensor& B_in, at::Tensor& C, double tau) {
  ColOperands<T> ops(A_in, B_in);
  ColArgs<T>& p = ops.args;
  p.c = C.data_ptr<T>();
  p.scale = T(kLog2e / tau);
  const int64_t blocks = p.blocks(), outputs = p.batch * p.m;
  at::Tensor part = at::empty({outputs * blocks}, C.options());
  p.part = part.data_ptr<T>();
  const auto& kt = table_for<T>();
  run_tasks_dynamic(p.num_tasks(), [&](int64_t t) { kt.soft_col(p, t); });
  T* const c = C.data_ptr<T>();
  for (int64_t o = 0; o < outputs; ++o) {
    if (!std::isfinite(c[o])) continue;  // C = H
    const int64_t bi = o / p.m, i = o % p.m;
    T sum = T(0);
    for (int64_t blk = 0; blk < blocks; ++blk) sum += p.part[(bi * blocks + blk) * p.m + i];
    c[o] += T(tau) * std::log(sum);
  }
}

// C = A (max,min) B in the compute type (`sub`: see hard_args); raises
// ValueError when an operand holds NaN. `and_then` (nullable): a transposed
// copy of B. Where B is packed once for the product, the packing writes it
// (B read once for both: at 1024^3 the copy had taken ~1 ms as a pass of its
// own); otherwise it runs in the same parallel region after the product's
// tasks, filling the time threads would otherwise wait at its end.
template <class T>
void hard_into(const at::Tensor& A, const at::Tensor& B, at::Tensor& C, int32_t* sub = nullptr,
               const TransposeArgs<T>* and_then = nullptr) {
  if (!sub && !and_then && ColArgs<T>::applies(B.size(2), A.size(2))) return hard_col_into<T>(A, B, C);
  std::atomic<int> nan_seen{0};
  HardArgs<T> p = hard_args<T>(A, B, C, sub);
  p.nan_seen = &nan_seen;
  p.stream_sub = sub && !p.small() && p.k <= kHardKC && C.numel() * int64_t(sizeof(int32_t)) >= kStreamBytes;
  const auto& kt = table_for<T>();
  PackedOperands packed;
  pack_once(p, kt, packed, and_then ? and_then->dst : nullptr);
  if (p.bt) and_then = nullptr;  // written by the packing
  const int64_t n_hard = p.num_tasks();
  const int64_t n_more = and_then ? and_then->num_tasks() : 0;
  run_tasks_dynamic(n_hard + n_more, [&](int64_t t) {
    if (t < n_hard)
      kt.hard(p, t);
    else
      transpose_task(*and_then, t - n_hard);
  });
  refuse_nan(nan_seen);
}

// Room for B^T in the winner search, kept by the calling thread between calls
// up to kKeepBytes: a fresh buffer of that size costs a page fault per 4 KB
// on every call, about a tenth of the search itself. Taken through
// empty_output for its 2 MB pages.
at::Tensor search_workspace(const at::Tensor& B) {
  constexpr int64_t kKeepBytes = int64_t(64) << 20;
  const int64_t bytes = B.numel() * B.element_size();
  thread_local at::Tensor kept;
  if (bytes > kKeepBytes) return empty_output({B.size(0), B.size(2), B.size(1)}, B.options());
  if (!kept.defined() || kept.scalar_type() != B.scalar_type() || kept.numel() < B.numel())
    kept = empty_output({B.numel()}, B.options());
  return kept.narrow(0, 0, B.numel()).view({B.size(0), B.size(2), B.size(1)});
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> hard_forward(const at::Tensor& A_in, const at::Tensor& B_in, bool with_argmax) {
  check_3d(A_in, B_in);
  const auto ct = compute_type(A_in.scalar_type());
  const at::Tensor A = A_in.to(ct), B = B_in.to(ct);  // no copy unless half
  const int64_t batch = A.size(0), m = A.size(1), k = A.size(2), n = B.size(2);
  at::Tensor C = empty_output({batch, m, n}, A.options());
  at::Tensor idx = with_argmax ? empty_output({batch, m, n}, A.options().dtype(at::kInt)) : at::empty({0}, A.options().dtype(at::kInt));
  AT_DISPATCH_FLOATING_TYPES(ct, "vico_flow_hard_forward", [&] {
    // The winner search runs unless there is no r to find or the products
    // are small ones, whose winners the product itself finds. It reads B
    // down its columns: a transposed copy pays off once there are enough rows
    // to share it (made as B is packed, or beside the product, see
    // hard_into); a few flow rows read B in place.
    const bool searched = with_argmax && k > 0 && !HardArgs<scalar_t>::small_shape(m, n, k);
    const bool copied = searched && m >= 32;
    at::Tensor Bt = copied ? search_workspace(B) : B;
    TransposeArgs<scalar_t> tp = copied ? transpose_args<scalar_t>(B, Bt) : TransposeArgs<scalar_t>{};
    // The search reads a scattered line of the copy per output: written with
    // ordinary stores (unlike the sub-chunk ids, see HardArgs::stream_sub),
    // more of it is still in cache then. Both changes together took a 1024^3
    // fwd+bwd from about 17.9-18.0 to 17.6-17.7 ms (in-process A/B, 150
    // rounds, twice; the copy was then made after the product): the search
    // 0.2 ms less.
    tp.stream = false;
    hard_into<scalar_t>(A, B, C, with_argmax ? idx.data_ptr<int32_t>() : nullptr, copied ? &tp : nullptr);
    if (!searched) return;
    const at::Tensor Ac = A.contiguous();
    const ArgmaxArgs<scalar_t> s{Ac.data_ptr<scalar_t>(), Bt.data_ptr<scalar_t>(),
                                copied ? n * k : B.stride(0), copied ? k : B.stride(2), copied ? 1 : B.stride(1),
                                C.data_ptr<scalar_t>(), idx.data_ptr<int32_t>(), batch, m, n, k};
    const auto& kt = table_for<scalar_t>();
    run_tasks_dynamic(s.num_tasks(), [&](int64_t t) { kt.argmax(s, t); });
  });
  return {C.to(A_in.scalar_type()), idx};
}

// Scatter of the hard gradient: each output's gradient goes to the one operand
// element the forward recorded (encode_winner). Every task owns what it
// writes: whole small products (ScatterArgs::whole_products), else column
// tiles of dB and rows of dA.
std::tuple<at::Tensor, at::Tensor> hard_backward(const at::Tensor& grad_in, const at::Tensor& A_in,
                                                 const at::Tensor& B_in, const at::Tensor& winners_in) {
  check_3d(A_in, B_in);
  const auto ct = compute_type(A_in.scalar_type());
  const int64_t batch = A_in.size(0), m = A_in.size(1), k = A_in.size(2), n = B_in.size(2);
  const at::Tensor G = grad_in.to(ct).contiguous(), win = winners_in.contiguous();
  TORCH_CHECK(win.sizes() == at::IntArrayRef({batch, m, n}) && win.scalar_type() == at::kInt,
              "vico_flow._C.hard_backward: winners must be int32 [b,m,n]");
  // The scatter tasks write both gradients whole (rows of dA, column slabs of
  // dB); zeros only when no task runs.
  const bool any = k > 0 && m > 0 && n > 0;
  const auto opts = A_in.options().dtype(ct);
  at::Tensor dA = any ? empty_output({batch, m, k}, opts) : at::zeros({batch, m, k}, opts);
  at::Tensor dB = any ? empty_output({batch, k, n}, opts) : at::zeros({batch, k, n}, opts);
  if (any) {
    AT_DISPATCH_FLOATING_TYPES(ct, "vico_flow_hard_backward", [&] {
      ScatterArgs<scalar_t> p{G.data_ptr<scalar_t>(), win.data_ptr<int32_t>(), dA.data_ptr<scalar_t>(),
                              dB.data_ptr<scalar_t>(), batch, m, n, k};
      p.stream = (dA.numel() + dB.numel()) * int64_t(sizeof(scalar_t)) >= kStreamBytes;
      const auto& kt = table_for<scalar_t>();
      if (p.whole_products()) {
        run_tasks(p.whole_tasks(), [&](int64_t t) { kt.scatter_whole(p, t); });
        return;
      }
      // One parallel region: the few long dB tasks first, then the many short
      // dA rows, taken by whichever thread is free (they write disjoint outputs).
      const int64_t n_b = p.cols_tasks();
      run_tasks_dynamic(n_b + p.rows_tasks(), [&](int64_t t) {
        if (t < n_b)
          kt.scatter_b(p, t);
        else
          kt.scatter_a(p, t - n_b);
      });
    });
  }
  return {dA.to(A_in.scalar_type()), dB.to(A_in.scalar_type())};
}

at::Tensor soft_forward(const at::Tensor& A_in, const at::Tensor& B_in, double tau) {
  check_3d(A_in, B_in);
  const auto ct = compute_type(A_in.scalar_type());
  const at::Tensor A = A_in.to(ct), B = B_in.to(ct);
  const int64_t batch = A.size(0), m = A.size(1), k = A.size(2), n = B.size(2);
  at::Tensor C = empty_output({batch, m, n}, A.options());
  AT_DISPATCH_FLOATING_TYPES(ct, "vico_flow_soft_forward", [&] {
    hard_into<scalar_t>(A, B, C);  // the shift H
    if (k > 0 && ColArgs<scalar_t>::applies(n, k)) {
      soft_col_into<scalar_t>(A, B, C, tau);
    } else if (k > 0) {
      const double s = kLog2e / tau;
      const at::Tensor Ac = A.contiguous();
      at::Tensor Bs = empty_output(B.sizes(), B.options());
      // A tensor factor: the Scalar overload of mul_out computed into a
      // temporary and copied it into Bs, a fresh B-sized buffer per call
      // whose every page faulted (the soft forward of [4 x 4096] x
      // [4096 x 4096] took 39 ms instead of 19).
      at::mul_out(Bs, B, at::scalar_tensor(s, B.options()));
      SoftFwdArgs<scalar_t> p{Ac.data_ptr<scalar_t>(), Bs.data_ptr<scalar_t>(), C.data_ptr<scalar_t>(), batch, m, n, k,
                              scalar_t(s), scalar_t(tau), scalar_t(soft_cutoff(k))};
      const auto& kt = table_for<scalar_t>();
      run_tasks_dynamic(p.num_tasks(), [&](int64_t t) { kt.soft_fwd(p, t); });
    }
  });
  return C.to(A_in.scalar_type());
}

namespace {

// The shifts of Kernels::soft_grad for Cs [b, m, n] (and `not_finite`, its
// mask, undefined when every C is finite): per row and kSoftJT column tile
// the lowest C * s where C is finite (cmin, +inf when the tile has none: the
// skip threshold); per tile the lowest finite C over the rows, unscaled
// (gamma: the factored terms' exponents are differences taken before the
// scaling); and per row and tile whether its C * s lie within
// kSoftFactorSpread of gamma * s (fact: the row takes the factored terms there).
struct SoftGradShifts {
  at::Tensor cmin, gamma, fact;
};

template <class T>
SoftGradShifts soft_grad_shifts(const at::Tensor& Cs, const at::Tensor& not_finite, double s) {
  const int64_t batch = Cs.size(0), m = Cs.size(1), n = Cs.size(2), tiles = ceil_div(n, kSoftJT);
  at::Tensor cmin = at::empty({batch, m, tiles}, Cs.options());
  at::Tensor cmax = at::empty({batch, m, tiles}, Cs.options());
  const T* c = Cs.data_ptr<T>();
  const bool* skip = not_finite.defined() ? not_finite.data_ptr<bool>() : nullptr;
  T* lo = cmin.data_ptr<T>();
  T* hi = cmax.data_ptr<T>();
  run_tasks(batch * m, [&](int64_t row) {
    for (int64_t t = 0; t < tiles; ++t) {
      T best = std::numeric_limits<T>::infinity(), top = -std::numeric_limits<T>::infinity();
      for (int64_t j = t * kSoftJT; j < std::min(n, (t + 1) * kSoftJT); ++j)
        if (!skip || !skip[row * n + j]) {
          best = std::min(best, c[row * n + j]);
          top = std::max(top, c[row * n + j]);
        }
      lo[row * tiles + t] = best;
      hi[row * tiles + t] = top;
    }
  });
  at::Tensor gamma = std::get<0>(cmin.min(1));  // [b, tiles], unscaled
  at::Tensor fact = cmin.isfinite().logical_and_((cmax - gamma.unsqueeze(1)).mul_(s).le_(kSoftFactorSpread));
  return {cmin.mul_(s), gamma.contiguous(), fact.to(at::kByte).contiguous()};
}

// 1 / max |G| where that is a finite float, else 1: the soft gradient kernels
// scale G by it where they flush denormals (Kernels::FlushDenormals), so that
// what they flush is relative to the largest upstream gradient.
template <class T>
T gradient_norm(const at::Tensor& G) {
  const auto [lo, hi] = at::aminmax(G);  // (no |G| temporary)
  const double gmax = std::max(-lo.template item<double>(), hi.template item<double>());
  return gmax > 0 && std::isfinite(gmax) && std::isfinite(T(1.0 / gmax)) ? T(1.0 / gmax) : T(1);
}

// dC/dB of C = A (soft max,min) B (see Kernels::soft_grad) from contiguous
// unscaled operands At = A^T [b,k,m], B [b,k,n], C and G with zeros where C is
// not finite [b,m,n], and that mask (bool [b,m,n], undefined when all finite).
// The result goes into `out`, viewed as [b, k, n] (any strides: the transposed
// call writes dA [b, m, k] through its transpose). gnorm: gradient_norm(G),
// the same for G and its transpose.
template <class T>
void soft_grad_rhs(const at::Tensor& At, const at::Tensor& B, const at::Tensor& C, const at::Tensor& G,
                   const at::Tensor& not_finite, double s, T gnorm, at::Tensor out) {
  const int64_t batch = B.size(0), k = B.size(1), n = B.size(2), m = C.size(1);
  const SoftGradShifts sh = soft_grad_shifts<T>(C, not_finite, s);
  SoftGradArgs<T> p{At.data_ptr<T>(), B.data_ptr<T>(), C.data_ptr<T>(), G.data_ptr<T>(), sh.cmin.data_ptr<T>(),
                    out.data_ptr<T>(), out.stride(0), out.stride(1), out.stride(2),
                    batch, m, n, k, T(s), T(soft_cutoff(k > m ? k : m))};
  p.gamma = sh.gamma.data_ptr<T>();
  p.fact = sh.fact.data_ptr<uint8_t>();
  const auto& kt = table_for<T>();
  at::Tensor gf;
  if (sh.fact.any().item<bool>()) {
    p.gnorm = gnorm;
    gf = empty_output(C.sizes(), C.options());
    p.gf = gf.data_ptr<T>();
    run_tasks(batch * m, [&](int64_t row) { kt.soft_grad_prep(p, row); });
  }
  run_tasks_dynamic(p.num_tasks(), [&](int64_t t) { kt.soft_grad(p, t); });
}

}  // namespace

// Both gradients of the soft product, recomputed from A, B and C. dC/dA is the
// right-hand gradient of the transposed product C^T = B^T (max,min) A^T, so one
// kernel serves both; it scales operands as it loads them, A^T is shared by the
// two calls, the transposed C and G replace the originals, and dA is written in
// place: about three [m,n]-or-[k,n]-sized temporaries (A^T, C^T, G^T).
std::tuple<at::Tensor, at::Tensor> soft_backward(const at::Tensor& grad_in, const at::Tensor& A_in, const at::Tensor& B_in,
                                                 const at::Tensor& C_in, double tau) {
  check_3d(A_in, B_in);
  const auto ct = compute_type(A_in.scalar_type());
  const int64_t batch = A_in.size(0), m = A_in.size(1), k = A_in.size(2), n = B_in.size(2);
  if (k == 0 || m == 0 || n == 0)
    return {at::zeros({batch, m, k}, A_in.options()), at::zeros({batch, k, n}, A_in.options())};
  at::Tensor dA, dB;
  AT_DISPATCH_FLOATING_TYPES(ct, "vico_flow_soft_backward", [&] {
    const double s = kLog2e / tau;
    // Outputs at +-inf pass no gradient: zero C and g there (copies only then).
    at::Tensor not_finite = at::isfinite(C_in).logical_not_();
    const bool any_inf = not_finite.any().item<bool>();
    not_finite = any_inf ? not_finite.contiguous() : at::Tensor();
    at::Tensor C = C_in.to(ct).contiguous();
    at::Tensor G = grad_in.to(ct).contiguous();
    if (any_inf) {
      C = C.masked_fill(not_finite, 0);
      G = G.masked_fill(not_finite, 0);
    }
    const scalar_t gnorm = gradient_norm<scalar_t>(G);  // one aminmax: G^T has the same
    if (SoftWholeArgs<scalar_t>::applies(m, n, k)) {  // small products: both gradients in one pass
      const at::Tensor A = A_in.to(ct).contiguous(), B = B_in.to(ct).contiguous();
      dA = empty_output({batch, m, k}, B.options());
      dB = empty_output({batch, k, n}, B.options());
      SoftWholeArgs<scalar_t> p{A.data_ptr<scalar_t>(),  B.data_ptr<scalar_t>(),  C.data_ptr<scalar_t>(),
                                G.data_ptr<scalar_t>(),  dA.data_ptr<scalar_t>(), dB.data_ptr<scalar_t>(),
                                batch, m, n, k, scalar_t(s)};
      p.gnorm = gnorm;
      const auto& kt = table_for<scalar_t>();
      run_tasks(p.num_tasks(), [&](int64_t t) { kt.soft_grad_whole(p, t); });
      return;
    }
    if (ColArgs<scalar_t>::applies(n, k)) {  // one column: vectors along r, both gradients in one pass
      ColOperands<scalar_t> ops(A_in.to(ct), B_in.to(ct));
      ColArgs<scalar_t>& p = ops.args;
      dA = empty_output({batch, m, k}, ops.B.options());
      dB = empty_output({batch, k, n}, ops.B.options());
      p.c = C.data_ptr<scalar_t>();
      p.g = G.data_ptr<scalar_t>();
      p.gnorm = gnorm;
      p.scale = scalar_t(s);
      p.da = dA.data_ptr<scalar_t>();
      p.db = dB.data_ptr<scalar_t>();
      const auto& kt = table_for<scalar_t>();
      run_tasks_dynamic(p.grad_tasks(), [&](int64_t t) { kt.soft_col_grad(p, t); });
      return;
    }
    const at::Tensor At = transposed_copy<scalar_t>(A_in.to(ct));  // [b,k,m]
    const at::Tensor B = B_in.to(ct).contiguous();                 // [b,k,n]
    dB = empty_output({batch, k, n}, B.options());
    soft_grad_rhs<scalar_t>(At, B, C, G, not_finite, s, gnorm, dB);
    // dA^T is the right-hand gradient of C^T = B^T (max,min) A^T: the roles of
    // At and B swap; C and G are replaced by their transposes one at a time.
    G = transposed_copy<scalar_t>(G);
    C = transposed_copy<scalar_t>(C);
    if (any_inf) not_finite = transposed_copy<bool>(not_finite);
    dA = empty_output({batch, m, k}, B.options());
    soft_grad_rhs<scalar_t>(B, At, C, G, not_finite, s, gnorm, dA.transpose(1, 2));
  });
  return {dA.to(A_in.scalar_type()), dB.to(A_in.scalar_type())};
}

namespace {

// One block of a chain: F (K x n, contiguous) through every layer's W block
// (n x n, any strides), in thread-local buffers. Each layer is the ordinary
// hard or soft kernel body (Kernels::hard / soft_fwd) run on those buffers, so
// the chain adds no arithmetic of its own.
template <class T>
void chain_block(const T* f, T* out, const std::vector<at::Tensor>& Ws, int64_t bi, int64_t K, int64_t n, bool soft,
                 double tau) {
  thread_local std::vector<T> cur, nxt, w, ws;
  cur.assign(f, f + K * n);
  nxt.resize(size_t(K * n));
  w.resize(size_t(n * n));
  const auto& kt = table_for<T>();
  const double s = kLog2e / tau;
  for (const at::Tensor& W : Ws) {
    const T* src = W.data_ptr<T>() + bi * W.stride(0);
    for (int64_t r = 0; r < n; ++r)
      for (int64_t j = 0; j < n; ++j) w[size_t(r * n + j)] = src[r * W.stride(1) + j * W.stride(2)];
    HardArgs<T> hp{cur.data(), K * n, n, 1, w.data(), n * n, n, 1, nxt.data(), nullptr, 1, K, n, n, kHardMC};
    for (int64_t t = 0; t < hp.num_tasks(); ++t) kt.hard(hp, t);
    if (soft && n > 0) {
      ws.resize(size_t(n * n));
      for (int64_t i = 0; i < n * n; ++i) ws[size_t(i)] = T(w[size_t(i)] * T(s));
      SoftFwdArgs<T> sp{cur.data(), ws.data(), nxt.data(), 1, K, n, n, T(s), T(tau), T(soft_cutoff(n))};
      for (int64_t t = 0; t < sp.num_tasks(); ++t) kt.soft_fwd(sp, t);
    }
    std::swap(cur, nxt);
  }
  std::copy(cur.begin(), cur.end(), out);
}

}  // namespace

// F [b, K, n] through layers W_l [b, n, n] (F <- F (max,min) W_l, hard or soft),
// one block per task, never writing an intermediate flow to a tensor.
at::Tensor chain_forward(const at::Tensor& F_in, const std::vector<at::Tensor>& Ws_in, bool soft, double tau) {
  TORCH_CHECK(F_in.dim() == 3 && F_in.device().is_cpu(), "vico_flow._C.chain_forward: F must be a CPU [b, K, n] tensor");
  const auto ct = compute_type(F_in.scalar_type());
  const int64_t batch = F_in.size(0), K = F_in.size(1), n = F_in.size(2);
  const at::Tensor F = F_in.to(ct).contiguous();
  std::vector<at::Tensor> Ws;
  for (const at::Tensor& W : Ws_in) {
    TORCH_CHECK(W.dim() == 3 && W.size(0) == batch && W.size(1) == n && W.size(2) == n && W.device().is_cpu(),
                "vico_flow._C.chain_forward: every W must be a CPU [b, n, n] tensor matching F");
    Ws.push_back(W.to(ct));
  }
  at::Tensor out = empty_output({batch, K, n}, F.options());
  AT_DISPATCH_FLOATING_TYPES(ct, "vico_flow_chain_forward", [&] {
    const scalar_t* f = F.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    run_tasks(batch, [&](int64_t bi) { chain_block<scalar_t>(f + bi * K * n, o + bi * K * n, Ws, bi, K, n, soft, tau); });
  });
  return out.to(F_in.scalar_type());
}

void set_isa(const std::string& name) {
  const KernelTable<float>* t = nullptr;
  if (name == "auto") t = best_float_table();
  else if (name == "avx512" || name == "avx2" || name == "scalar") {
    TORCH_CHECK_VALUE(cpu_has(name.c_str()), "set_cpu_isa: this processor does not support '", name, "'");
    t = name == "avx512" ? &kAvx512Float : name == "avx2" ? &kAvx2Float : &kScalarFloat;
  } else {
    TORCH_CHECK_VALUE(false, "set_cpu_isa: isa must be 'auto', 'avx512', 'avx2' or 'scalar', got '", name, "'");
  }
  g_float_table.store(t);
}

std::string isa() { return float_table().isa; }
std::string float64_isa() { return table_for<double>().isa; }

std::vector<std::string> available_isas() {
  std::vector<std::string> out;
  for (const char* f : {"avx512", "avx2", "scalar"})
    if (cpu_has(f)) out.emplace_back(f);
  return out;
}

}  // namespace cpu
}  // namespace vico_flow

#ifdef VICO_WITH_CUDA
namespace vico_flow {
namespace cuda {
void register_ops(pybind11::module& m);  // csrc/cuda/ops_cuda.cpp
}
}  // namespace vico_flow
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace c = vico_flow::cpu;
  m.doc() = "vico_flow compiled kernels (private: use vico_flow.minmax_matmul and friends)";
  m.def("hard_forward", &c::hard_forward, "A (max,min) B on CPU; returns (C, encoded winners or empty)");
  m.def("hard_backward", &c::hard_backward, "scatter of the hard gradient to the recorded winners");
  m.def("soft_forward", &c::soft_forward, "log-sum-exp (max,min) product on CPU");
  m.def("soft_backward", &c::soft_backward, "gradients of the soft product, recomputed from A, B, C");
  m.def("chain_forward", &c::chain_forward, "F through several same-shaped (max,min) layers, fused per block");
  m.def("set_cpu_isa", &c::set_isa,
        "force the CPU kernels' instruction set (float32 and float64): auto|avx512|avx2|scalar");
  m.def("cpu_isa", &c::isa, "instruction set the float32 CPU kernels use now");
  m.def("cpu_isa_float64", &c::float64_isa, "instruction set the float64 CPU kernels use now");
  m.def("available_cpu_isas", &c::available_isas, "instruction sets this processor runs");
  m.attr("hard_depth_chunk") = vico_flow::cpu::kHardKC;  // for tests that must span several chunks
  m.def("release_cached_outputs", &c::release_cached_outputs, "free the memory kept for later CPU outputs; returns bytes");
  m.def("cached_output_bytes", &c::cached_output_bytes, "bytes kept for later CPU outputs");
#ifdef VICO_WITH_CUDA
  vico_flow::cuda::register_ops(m);
  m.attr("cuda_built") = true;
#else
  m.attr("cuda_built") = false;
#endif
}
