// Scalar semantics of the tropical (max, min) products: the one place that says
// what a single triple (a = A[i,r], b = B[r,j]) contributes, shared by the CPU
// kernels (scalar path and the SIMD paths, which mirror these functions lane by
// lane) and the CUDA kernels. vico_flow/reference.py is the executable spec;
// these functions must agree with it exactly (hard) or to rounding (soft).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define VF_HD __host__ __device__ __forceinline__
#else
#define VF_HD inline
#endif

namespace vico_flow {

// ---------------------------------------------------------------- hard product
// Written as ternaries, not fminf/fmaxf: GCC vectorises these, and with NaN
// refused at the API boundary the two spellings agree.
template <class T> VF_HD T tmin(T a, T b) { return a < b ? a : b; }
template <class T> VF_HD T tmax(T a, T b) { return a < b ? b : a; }

#if defined(__CUDA_ARCH__)
// On the GPU the float ternaries compile to a compare and a select each (they
// must keep the ternary's NaN behaviour), fminf/fmaxf to one FMNMX each: 4 ->
// 2 ALU instructions per triple in the hard product's inner loop (4096^3
// forward on an H100: 21.3 -> 13.3 ms). Same values for non-NaN operands; only
// the sign of a zero result may differ, and -0 == +0.
template <> VF_HD float tmin<float>(float a, float b) { return fminf(a, b); }
template <> VF_HD float tmax<float>(float a, float b) { return fmaxf(a, b); }
#endif

// One step of C[i,j] = max_r min(A[i,r], B[r,j]).
template <class T> VF_HD T hard_step(T acc, T a, T b) { return tmax(acc, tmin(a, b)); }

// Tie rule of the hard gradient, part 1: the winning r is the *first* r whose
// min reaches the max, so a later r replaces the running best only when it is
// strictly greater.
template <class T> VF_HD bool hard_replaces(T candidate, T best) { return candidate > best; }

// Tie rule, part 2: within the winning triple the gradient goes to A when
// A <= B (A wins ties), else to B.
template <class T> VF_HD bool grad_goes_to_a(T a, T b) { return a <= b; }

// What the forward saves for the hard backward, one int32 per output: the
// winning r, and whether the gradient goes to A (stored as r) or B (stored as
// ~r = -r-1). The backward then reads no operand at all.
// Branch free (r ^ 0 or r ^ -1): which operand wins is a coin flip on real data.
VF_HD int32_t encode_winner(int64_t r, bool to_a) { return int32_t(r) ^ (int32_t(to_a) - 1); }
VF_HD int32_t winner_index(int32_t w) { return w < 0 ? ~w : w; }
VF_HD bool winner_to_a(int32_t w) { return w >= 0; }

// ---------------------------------------------------------------- soft product
// Everything soft is computed in base 2 on operands pre-scaled by
// s = log2(e) / tau, so exp(x / tau) becomes exp2(x * s) and a scaled operand
// is  a' = a * s.  With h' = (hard result) * s as the shift,
//     term(h', a', b') = 1 / (exp2(h' - a') + exp2(h' - b'))
//     C = H + tau * ln(sum_r term)
// Each term is <= 1 and at the winning r it is >= 1/2, so the sum lies in
// [1/2, k]: no overflow, no underflow of the sum, whatever tau is.
constexpr double kLog2e = 1.4426950408889634;

// exp2 arguments are clamped to [-kExp2Clamp, kExp2Clamp]: terms that far out
// are < 2^-100 of the winning term, and the clamp keeps every intermediate
// (including (u+v)^2 in the gradient, formed as products of reciprocals) finite.
constexpr float kExp2Clamp = 100.0f;

// Terms whose scaled min lies more than `soft_cutoff(k)` below the (scaled) shift
// are skipped: each is < 2^-cutoff, so all k of them together change the sum
// (>= 1/2) by a relative 2^-24 at most: below float32 rounding.
VF_HD double soft_cutoff(int64_t k) {
  double lg = 0.0;
  for (int64_t v = k; v > 1; v >>= 1) lg += 1.0;  // floor(log2 k), no libm needed
  return lg + 26.0;
}

// Degree-6 Taylor coefficients of 2^f on [-1/2, 1/2] (ln2^n / n!): relative
// error < 1.3e-7, i.e. float32 rounding. Used by the SIMD exp2.
constexpr float kExp2Poly[7] = {1.0f,          0.69314718f,   0.24022651f,  0.055504109f,
                                0.0096181291f, 0.0013333558f, 1.5403530e-4f};

// Degree-12 Taylor coefficients of 2^f for float64 (ln2^n / n!): on [-1/2, 1/2]
// the terms left out come to < 2.5e-16 of 2^f, about float64 rounding.
constexpr double kExp2PolyDouble[13] = {1.0,
                                        0.6931471805599453,
                                        0.2402265069591007,
                                        0.055504108664821576,
                                        0.009618129107628477,
                                        0.0013333558146428441,
                                        0.00015403530393381606,
                                        1.5252733804059838e-05,
                                        1.3215486790144305e-06,
                                        1.0178086009239696e-07,
                                        7.054911620801121e-09,
                                        4.44553827187081e-10,
                                        2.5678435993488196e-11};

// Gradient weights of one triple, given u = exp2(c' - a'), v = exp2(c' - b')
// with c' the scaled soft output:  p = 1/(u+v) is the weight of r in the soft
// max, u/(u+v) and v/(u+v) the weights of A and B in the soft min, so
//     dC/dA[i,r] += g * u * p^2     dC/dB[r,j] += g * v * p^2.
template <class T> VF_HD T soft_grad_weight(T own, T p) { return own * p * p; }

}  // namespace vico_flow
