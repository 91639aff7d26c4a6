#pragma once
// Scalar maths shared by the CPU and CUDA kernels: the PCGrad solve in Gram space and the
// GradDrop sign purity and keep mask. Plain C++, no libtorch, so CTest can check it alone.
#include <cstdint>

#include "fastmtl/finite.h"
#include "fastmtl/macros.h"

namespace fastmtl {

// PCGrad projection (Yu et al. 2020, Alg. 1): when g_i . g_j < 0, g_i -= (g_i . g_j / |g_j|^2) g_j.
// Returns the coefficient of g_j to subtract; 0 when there is no conflict or g_j has zero norm
// (a zero-gradient task is skipped, never divided by).
template <typename acc_t>
FASTMTL_HOST_DEVICE inline acc_t projection_coefficient(acc_t dot_ij, acc_t norm_sq_j) {
  return (dot_ij < acc_t(0) && norm_sq_j > acc_t(0)) ? dot_ij / norm_sq_j : acc_t(0);
}

// True when every entry of the T x T matrix K is finite.
template <typename k_t>
FASTMTL_HOST_DEVICE inline bool all_finite(const k_t* K, int64_t T) {
  bool finite = true;
  for (int64_t e = 0; e < T * T; ++e) finite = finite && is_finite_value(K[e]);
  return finite;
}

// Exact PCGrad in Gram space (docs/design.md, "Gram-space PCGrad"), for one task i. The projected
// gradient g_i^PC = sum_k a_k g_k is kept as its coefficients a, starting at e_i, together with
// v = a K (v_j = g_i^PC . g_j). For each j != i in order: when v_j < 0, a_j -= v_j / K_jj and
// v -= (v_j / K_jj) K_j (always against the original g_j). A pair without conflict costs O(1)
// and a projection O(T) (one row of K), instead of O(T) per pair for recomputing a K_:j.
//   K          T x T Gram matrix, row-major, contiguous (any floating type; maths in acc_t)
//   order_row  the order in which task i meets the others (entries equal to i, or outside
//              [0, T), are skipped), or nullptr for index order
//   a, v       output / scratch: T coefficients and T dot products, element k at [k * stride]
//              (the CUDA kernel interleaves the tasks' vectors so that a warp's accesses coalesce)
// Tasks are independent: the CPU kernel runs them in parallel, the CUDA kernel one per thread.
template <typename acc_t, typename k_t, typename index_t>
FASTMTL_HOST_DEVICE inline void pcgrad_project_task(const k_t* K, int64_t T, const index_t* order_row, int64_t i,
                                                    acc_t* a, acc_t* v, int64_t stride) {
  for (int64_t k = 0; k < T; ++k) {
    a[k * stride] = acc_t(k == i);
    v[k * stride] = static_cast<acc_t>(K[i * T + k]);
  }
  for (int64_t step = 0; step < T; ++step) {
    const int64_t j = order_row ? static_cast<int64_t>(order_row[step]) : step;
    if (j == i || j < 0 || j >= T) continue;
    const acc_t c = projection_coefficient(v[j * stride], static_cast<acc_t>(K[j * T + j]));
    if (c == acc_t(0)) continue;  // no conflict: nothing changes
    a[j * stride] -= c;
    const k_t* K_j = K + j * T;  // v_k -= c K_jk: the change of g_i^PC . g_k
    for (int64_t k = 0; k < T; ++k) v[k * stride] -= c * static_cast<acc_t>(K_j[k]);
  }
}

// The PCGrad weights w (sum_i g_i^PC = w . G) for all tasks; order is T x T (row i = task i's
// order) or nullptr. A non-finite K makes every weight NaN so the failure is visible downstream.
//   scratch  2 T values;  w  output of T
template <typename acc_t, typename index_t>
FASTMTL_HOST_DEVICE inline void pcgrad_solve(const acc_t* K, int64_t T, const index_t* order, acc_t* scratch,
                                             acc_t* w) {
  const bool finite = all_finite(K, T);
  for (int64_t k = 0; k < T; ++k) w[k] = finite ? acc_t(0) : acc_t(0) / acc_t(0);
  if (!finite) return;
  acc_t* a = scratch;
  acc_t* v = scratch + T;
  for (int64_t i = 0; i < T; ++i) {
    pcgrad_project_task(K, T, order ? order + i * T : static_cast<const index_t*>(nullptr), i, a, v, 1);
    for (int64_t k = 0; k < T; ++k) w[k] += a[k];
  }
}

// GradDrop helpers. Written for a scalar acc_t or a GCC/Clang vector of acc_t (`?:` selects
// lane-wise on vectors), so the vectorised CPU kernel and the CUDA kernel run this same code.
// `zero + x` broadcasts a constant to every lane in acc_t precision.

// GradDrop sign purity (Chen et al. 2020): P = 1/2 (1 + sum g / sum |g|). A coordinate where
// every task's gradient is zero has no sign to prefer: P = 1/2 (its output is zero anyway).
template <typename T>
FASTMTL_HOST_DEVICE inline T graddrop_purity(T signed_sum, T abs_sum) {
  const T zero = T{};
  const T one = zero + 1, half = one / 2;
  const T safe_abs = abs_sum > zero ? abs_sum : one;
  return abs_sum > zero ? half * (one + signed_sum / safe_abs) : half;
}

// The sign GradDrop keeps at one coordinate, times the activation sign (1 for parameter-level
// gradients): +1 keeps the positive sign-corrected gradients (P > U), -1 the negative ones
// (P < U), 0 none (P == U). Task i is kept iff g_i * direction > 0, which is the paper's
// M_i = [P > U][sign g_i > 0] + [P < U][sign g_i < 0] exactly: every factor is +-1 or 0, so no
// product rounds. One multiply and one compare per task and no branch, so the CPU loop vectorises.
template <typename T>
FASTMTL_HOST_DEVICE inline T graddrop_direction(T purity, T uniform, T activation_sign) {
  const T zero = T{};
  const T one = zero + 1;
  return ((purity > uniform ? one : zero) - (purity < uniform ? one : zero)) * activation_sign;
}

// Factor applied to task i's gradient: leak + (1 - leak) M_i, i.e. exactly 1 when kept and
// exactly leak when dropped. Callers multiply (never select) so NaN/Inf gradients stay visible.
template <typename T>
FASTMTL_HOST_DEVICE inline T graddrop_keep_factor(T g, T direction, T leak) {
  const T zero = T{};
  return g * direction > zero ? zero + 1 : leak;
}

// 0, or NaN when any of the T leaks lies outside [0, 1]: added to every GradDrop output so a
// bad leak that was not checked on the host (device tensors are not read back) is visible.
template <typename acc_t>
FASTMTL_HOST_DEVICE inline acc_t graddrop_leak_poison(const acc_t* leak, int64_t T) {
  bool valid = true;
  for (int64_t i = 0; i < T; ++i) valid = valid && leak[i] >= acc_t(0) && leak[i] <= acc_t(1);
  return valid ? acc_t(0) : acc_t(0) / acc_t(0);
}

// sign(x) as -1, 0 or +1 in acc_t; NaN stays NaN so a NaN activation poisons its coordinate.
template <typename acc_t>
FASTMTL_HOST_DEVICE inline acc_t sign_of(acc_t x) {
  return x != x ? x : acc_t(x > acc_t(0)) - acc_t(x < acc_t(0));
}

}  // namespace fastmtl
