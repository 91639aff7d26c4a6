#pragma once
// FairGrad (Ban & Ji 2024, "Fair Resource Allocation in Multi-Task Learning", ICML, Eq. 4) in Gram
// space: the weights x > 0 solve K x = x^(-1/alpha) element-wise (alpha-fair utilities; d = sum_i
// x_i g_i). With p = 1/alpha, F(x) = K x - x^-p is the gradient of the strictly convex
//   phi(x) = 1/2 x^T K x - sum_i h(x_i),   h(x) = log x (p = 1), x^(1-p) / (1-p) (p != 1),
// (-h'' = p x^(-p-1) > 0), so the root is phi's minimiser on x > 0. Damped Newton with an Armijo
// backtracking line search (Boyd & Vandenberghe 2004, §9.5): H = K + diag(p x^(-p-1)) (positive
// definite for x > 0: Cholesky), H D = -F, decrement lambda^2 = -F . D; the step t D takes the
// first t = 2^-k, k < 60, with x + t D > 0 and phi(x + t D) - phi(x) <= -t lambda^2 / 4. The
// difference phi(x + t D) - phi(x) is evaluated as t D.Kx + t^2/2 D.KD - sum_i [h(x_i + t D_i) -
// h(x_i)], each h difference through log1p / expm1, so that it stays accurate down to steps at
// rounding level (phi itself would lose the decrease in its own rounding long before). Once
// lambda <= 2^-30 the full Newton step is taken and the loop stops: Newton converges
// quadratically there, the next step would change x by O(lambda^2), below rounding.
//
// Convergence: phi is strictly convex; when a root exists (no v >= 0, v != 0, with K v = 0, i.e.
// 0 is not a non-negative combination of the non-zero gradients) it is phi's unique minimiser and
// phi's sublevel sets are bounded; for alpha <= 1 (p >= 1, -h -> +inf at 0) they are compact in
// x > 0, where B&V's Thm (§9.5.3) applies: global convergence, quadratic at the end. For
// alpha > 1 a sublevel set can reach x_i = 0, where the Hessian is unbounded; every step still
// decreases phi and the minimiser is interior (F_i -> -inf as x_i -> 0), which the tests check
// through the residual.
//
// Scale: K is divided by c = max_i K_ii, solved for x', and x = c^(-1/(1+p)) x' (the equation's
// exact scaling: (cK)(s x') = (s x')^-p with s^(1+p) = 1/c), so the iteration sees diagonal entries
// <= 1. The start is the solution for orthogonal gradients, x'_i = K'_ii^(-1/(1+p)).
//
// Special cases, documented in python/fastmtl/methods/pcd_fairgrad.py:
// * alpha = 0 (linear scalarisation, the paper's Section 3; torchjd's convention): x = 1/T;
// * a zero gradient (K_ii <= 0) has no root for its equation (0 = x_i^-p); its weight is 0 and
//   the others are solved without it (its row and column of a PSD K are zero anyway);
// * no root (0 in the cone of the gradients): phi decreases without a minimiser, x grows along
//   the null direction (which G maps to 0); the result is the iterate after max_iters steps,
//   finite and positive; a step that would leave the finite numbers is not taken (the loop stops);
// * a failed factorisation stops the loop with the current iterate.
// The reference: python/fastmtl/methods/pcd_fairgrad.py (fairgrad_weights), the same steps in
// torch ops. Solver interface: csrc/cpu/small_solve_cpu.h.
#include <cmath>
#include <cstdint>

#include "fastmtl/dense_math.h"
#include "fastmtl/macros.h"

namespace fastmtl {

// lambda below which the full Newton step ends the solve (see the header comment).
constexpr double kFairGradConvergedDecrement = 0x1p-30;
// Halvings of the line search (t >= 2^-59).
constexpr int kFairGradLineSearchSteps = 60;

struct FairGradSolver {
  double alpha;       // >= 0
  int64_t max_iters;  // Newton steps at most

  // K' (T x T), H (T x T, its lower triangle becomes the Cholesky factor), then F, D, K'x, K'D and
  // the frozen flags (zero gradients), T each.
  FASTMTL_HOST_DEVICE int64_t scratch_size(int64_t T) const { return 2 * T * T + 5 * T; }
  FASTMTL_HOST_DEVICE int64_t out_size(int64_t T) const { return T; }  // x

  FASTMTL_HOST_DEVICE void operator()(const double* K, int64_t T, int64_t /*job*/, double* scratch,
                                      double* x) const {
    if (alpha == 0) {
      for (int64_t i = 0; i < T; ++i) x[i] = 1.0 / static_cast<double>(T);
      return;
    }
    const double p = 1.0 / alpha;
    double* Kn = scratch;
    double* H = Kn + T * T;
    double* F = H + T * T;
    double* D = F + T;
    double* Kx = D + T;
    double* KD = Kx + T;
    double* frozen = KD + T;
    double c = 0;
    for (int64_t i = 0; i < T; ++i) c = std::fmax(c, K[i * T + i]);
    if (!(c > 0)) {  // every gradient zero
      for (int64_t i = 0; i < T; ++i) x[i] = 0;
      return;
    }
    for (int64_t i = 0; i < T; ++i) {
      frozen[i] = K[i * T + i] > 0 ? 0.0 : 1.0;
      // A zero gradient's row is zeroed (K is PSD: it is zero up to rounding anyway) so that it
      // decouples exactly; its x stays at 1 during the solve.
      for (int64_t j = 0; j < T; ++j) {
        Kn[i * T + j] = (K[i * T + i] > 0 && K[j * T + j] > 0) ? K[i * T + j] / c : 0.0;
      }
      x[i] = frozen[i] != 0 ? 1.0 : std::pow(Kn[i * T + i], -1.0 / (1.0 + p));
    }
    for (int64_t iteration = 0; iteration < max_iters; ++iteration) {
      matvec(Kn, T, T, x, Kx);
      for (int64_t i = 0; i < T; ++i) {
        F[i] = frozen[i] != 0 ? 0.0 : Kx[i] - std::pow(x[i], -p);
        D[i] = -F[i];
        for (int64_t j = 0; j <= i; ++j) H[i * T + j] = Kn[i * T + j];
        H[i * T + i] += frozen[i] != 0 ? 1.0 : p * std::pow(x[i], -p - 1);
      }
      if (!cholesky_factor(H, T, T)) break;
      cholesky_solve(H, T, T, D);
      const double squared = -dot(F, D, T);
      const double decrement_squared = squared > 0 ? squared : 0.0;
      if (std::sqrt(decrement_squared) <= kFairGradConvergedDecrement) {
        if (step_is_admissible(x, D, 1.0, T)) {
          for (int64_t i = 0; i < T; ++i) x[i] += D[i];
        }
        break;
      }
      matvec(Kn, T, T, D, KD);
      const double slope = dot(D, Kx, T), curvature = dot(D, KD, T);
      double t = 1.0;
      bool accepted = false;
      for (int k = 0; k < kFairGradLineSearchSteps && !accepted; ++k, t *= 0.5) {
        accepted = step_is_admissible(x, D, t, T) &&
                   phi_change(x, D, t, slope, curvature, p, T) <= -0.25 * t * decrement_squared;
        if (accepted) {
          for (int64_t i = 0; i < T; ++i) x[i] += t * D[i];
        }
      }
      if (!accepted) break;  // no decrease left above rounding
    }
    const double unscale = std::pow(c, -1.0 / (1.0 + p));
    for (int64_t i = 0; i < T; ++i) x[i] = frozen[i] != 0 ? 0.0 : x[i] * unscale;
  }

  // x + t D stays positive and finite.
  FASTMTL_HOST_DEVICE static bool step_is_admissible(const double* x, const double* D, double t, int64_t T) {
    bool ok = true;
    for (int64_t i = 0; i < T; ++i) {
      const double next = x[i] + t * D[i];
      ok = ok && next > 0 && is_finite_value(next);
    }
    return ok;
  }

  // phi(x + t D) - phi(x), from slope = D.K'x and curvature = D.K'D (see the header comment).
  FASTMTL_HOST_DEVICE static double phi_change(const double* x, const double* D, double t, double slope,
                                               double curvature, double p, int64_t T) {
    double change = t * slope + 0.5 * t * t * curvature;
    for (int64_t i = 0; i < T; ++i) change -= h_change(x[i], t * D[i], p);
    return change;
  }

  // h(x + delta) - h(x), accurate for small delta / x.
  FASTMTL_HOST_DEVICE static double h_change(double x, double delta, double p) {
    const double log_ratio = std::log1p(delta / x);
    if (p == 1) return log_ratio;
    return std::pow(x, 1 - p) * std::expm1((1 - p) * log_ratio) / (1 - p);
  }
};

}  // namespace fastmtl
