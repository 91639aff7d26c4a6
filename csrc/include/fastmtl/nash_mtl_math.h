#pragma once
// Nash-MTL (Navon et al. 2022, "Multi-Task Learning as a Bargaining Game") in Gram space: the
// bargaining weights alpha > 0 solve K alpha = 1 / alpha (element-wise), the stationarity
// condition of the strictly convex, self-concordant
//   phi(alpha) = 1/2 alpha^T K alpha - sum_i log alpha_i.
// Damped Newton (Nesterov & Nemirovski; Boyd & Vandenberghe 2004, §9.6.4): with the gradient
// r = K alpha - 1/alpha and the Hessian H = K + diag(1/alpha^2) (positive definite for alpha > 0,
// so Cholesky), the step D solves H D = -r, the Newton decrement is lambda = sqrt(-r . D), and
// alpha += D / (1 + lambda) stays positive without a line search (|D_i| / alpha_i <= lambda, since
// H >= diag(1/alpha^2)). The same steps as the reference python/fastmtl/methods/nash_mtl.py
// (nash_mtl_weights): start alpha_i = 1/|g_i| (1 for a zero gradient), `iterations` steps, then
// alpha scaled down so that |sum_i alpha_i g_i| = sqrt(alpha^T K alpha) <= max_norm (0: no cap).
//
// Two early exits, both with the reference's result within its rounding error bound:
// * a failed factorisation (H not numerically positive definite: overflow, or 1/alpha^2 lost
//   against K) keeps alpha, as the reference's no-op step; every later step would see the same
//   alpha and fail again, so the loop stops there;
// * after a step whose decrement lambda <= 2^-30, the next decrement is <= 2 lambda^2 < 2^-58 in
//   exact arithmetic (damped Newton on a self-concordant function, Nesterov 2004, "Introductory
//   Lectures on Convex Optimization", Thm 4.1.14), and so on quadratically, so every later step
//   moves each alpha_i by less than one rounding unit (|D_i| / alpha_i <= lambda): the remaining
//   reference steps only stir rounding noise at the fixed point. A kernel may branch on its own
//   data (no host involved), so it stops there.
// Solver interface: csrc/cpu/small_solve_cpu.h.
#include <cmath>
#include <cstdint>

#include "fastmtl/dense_math.h"
#include "fastmtl/macros.h"

namespace fastmtl {

// lambda below which the remaining Newton steps change alpha by less than float64 rounding.
constexpr double kNashConvergedDecrement = 0x1p-30;

struct NashMtlSolver {
  double max_norm;     // cap on |sum_i alpha_i g_i|; 0: none
  int64_t iterations;  // damped Newton steps at most

  // H (T x T, its lower triangle becomes the Cholesky factor), then r and D.
  FASTMTL_HOST_DEVICE int64_t scratch_size(int64_t T) const { return T * T + 2 * T; }
  FASTMTL_HOST_DEVICE int64_t out_size(int64_t T) const { return T; }  // alpha

  FASTMTL_HOST_DEVICE void operator()(const double* K, int64_t T, int64_t /*job*/, double* scratch,
                                      double* alpha) const {
    double* H = scratch;
    double* r = H + T * T;
    double* D = r + T;
    // The solution for orthogonal gradients, alpha_i = 1 / |g_i|, as the start.
    for (int64_t i = 0; i < T; ++i) {
      const double norm = std::sqrt(K[i * T + i] > 0 ? K[i * T + i] : 0.0);
      alpha[i] = norm > 0 ? 1.0 / norm : 1.0;
    }
    for (int64_t iteration = 0; iteration < iterations; ++iteration) {
      if (!newton_step(K, T, alpha, H, r, D)) break;
    }
    if (max_norm > 0) {
      const double squared = quadratic_form(K, T, T, alpha);
      const double norm = std::sqrt(squared > 0 ? squared : 0.0);
      if (norm > max_norm) {
        const double shrink = max_norm / (norm > 1e-300 ? norm : 1e-300);
        for (int64_t i = 0; i < T; ++i) alpha[i] *= shrink;
      }
    }
  }

  // One damped Newton step on alpha; false when the loop should stop (H not factorisable, or
  // the decrement at rounding level: see the header comment).
  FASTMTL_HOST_DEVICE static bool newton_step(const double* K, int64_t T, double* alpha, double* H, double* r,
                                              double* D) {
    matvec(K, T, T, alpha, r);
    for (int64_t i = 0; i < T; ++i) {
      r[i] -= 1.0 / alpha[i];
      D[i] = -r[i];
    }
    for (int64_t i = 0; i < T; ++i) {
      for (int64_t k = 0; k <= i; ++k) H[i * T + k] = K[i * T + k];  // the lower triangle is all Cholesky reads
      H[i * T + i] += 1.0 / (alpha[i] * alpha[i]);
    }
    if (!cholesky_factor(H, T, T)) return false;
    cholesky_solve(H, T, T, D);
    const double squared = -dot(r, D, T);
    const double decrement = std::sqrt(squared > 0 ? squared : 0.0);
    for (int64_t i = 0; i < T; ++i) alpha[i] += D[i] / (1 + decrement);
    return !(decrement <= kNashConvergedDecrement);
  }
};

}  // namespace fastmtl
