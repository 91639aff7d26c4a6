#pragma once
// IMTL-G (Liu et al. 2021, "Towards Impartial Multi-task Learning", ICLR; the pseudo-inverse form
// of Quinton & Rey 2024 / torchjd for linearly dependent gradients) in Gram space:
//   w = v / sum(v),  v = pinv(K') sqrt(diag K'),  K' = K / trace(K)  (K' = K when trace <= 0),
// and w = 0 when |sum(v)| < 1e-12. The combination d = w G then has equal projections on every
// unit task gradient. The same maths as the reference python/fastmtl/methods/gram_space.py
// (imtl_g_weights): pinv keeps torch.linalg.pinv's default cut, dropping the singular values
// (|eigenvalues| of the symmetric K') that are <= T eps sigma_max. The trace normalisation makes
// the 1e-12 test independent of the gradients' scale.
// Solver interface: csrc/cpu/small_solve_cpu.h. Eigen-decomposition: fastmtl/eigen_math.h.
#include <cfloat>
#include <cmath>
#include <cstdint>

#include "fastmtl/dense_math.h"
#include "fastmtl/eigen_math.h"
#include "fastmtl/macros.h"

namespace fastmtl {

struct ImtlGSolver {
  // Scratch: the matrix K' (destroyed by the decomposition), its eigenvectors (and the
  // decomposition's workspace), its eigenvalues, and the vector s = sqrt(diag K').
  FASTMTL_HOST_DEVICE int64_t scratch_size(int64_t T) const { return T * T + symmetric_eigen_scratch(T) + 2 * T; }
  FASTMTL_HOST_DEVICE int64_t out_size(int64_t T) const { return T; }  // w

  FASTMTL_HOST_DEVICE void operator()(const double* K, int64_t T, int64_t /*job*/, double* scratch,
                                      double* w) const {
    double* A = scratch;
    double* Vt = A + T * T;
    double* lambda = Vt + symmetric_eigen_scratch(T);
    double* s = lambda + T;
    double trace = 0;
    for (int64_t i = 0; i < T; ++i) trace += K[i * T + i];
    const double divisor = trace > 0 ? trace : 1.0;
    for (int64_t e = 0; e < T * T; ++e) A[e] = K[e] / divisor;
    for (int64_t i = 0; i < T; ++i) s[i] = std::sqrt(std::fmax(A[i * T + i], 0.0));
    symmetric_eigen(A, T, Vt, lambda);
    double sigma_max = 0;
    for (int64_t k = 0; k < T; ++k) sigma_max = std::fmax(sigma_max, std::fabs(lambda[k]));
    const double cut = static_cast<double>(T) * DBL_EPSILON * sigma_max;
    // v = sum over kept k of (V_k . s / lambda_k) V_k, accumulated in w.
    for (int64_t i = 0; i < T; ++i) w[i] = 0;
    for (int64_t k = 0; k < T; ++k) {
      if (!(std::fabs(lambda[k]) > cut)) continue;
      const double coefficient = dot(Vt + k * T, s, T) / lambda[k];
      for (int64_t i = 0; i < T; ++i) w[i] += coefficient * Vt[k * T + i];
    }
    double total = 0;
    for (int64_t i = 0; i < T; ++i) total += w[i];
    const bool vanishes = std::fabs(total) < 1e-12;
    for (int64_t i = 0; i < T; ++i) w[i] = vanishes ? 0.0 : w[i] / total;
  }
};

}  // namespace fastmtl
