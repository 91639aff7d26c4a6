#pragma once
// CAGrad (Liu et al. 2021, "Conflict-Averse Gradient Descent for Multi-task Learning") in Gram
// space, solved exactly: the same algorithm as the reference python/fastmtl/methods/cagrad.py
// (cagrad_weights; its module docstring derives it), on the CPU path's early exits, so a GPU
// thread stops as early as the CPU does.
//
// With K normalised by its trace (torchjd), g0 the mean gradient and √φ = c|g0|, minimise
// F(w) = wᵀK1/T + √φ √(wᵀKw) over the simplex. A minimiser g* != 0 is the projection of -ρ g0 onto
// the hull H of the gradients for the root ρ* > 0 of ψ(ρ) = |proj_H(-ρ g0)|² - φρ²; ψ(norm_eps/√φ)
// <= 0 is the Pareto-stationary verdict (update 0). The root search brackets ρ*, and on the face
// that carries the last projection ψ is a quadratic whose roots give the exact w* once the search
// reaches ρ*'s face. Projections are Wolfe's minimum-norm-point algorithm (Wolfe 1976, "Finding
// the nearest point in a polytope") on the Gram matrix of the shifted gradients g_i + ρ g0,
// warm-started from the previous corral.
//
// Linear algebra. Every solve is on the corral S (affinely independent gradients, Wolfe's
// invariant), with the matrix K_S + 11ᵀ, which is positive definite exactly then (xᵀ(K_S + 11ᵀ)x
// = |Σ x_i g_i|² + (Σ x_i)², zero only for an affine dependence): a Cholesky factor of the
// gathered corral (dense_math.h). Wolfe's affine minimiser is α/Σα with (K_S + 11ᵀ)α = 1, as in
// the reference; the face's affine path w(ρ) = w_a + ρ w_b (the reference's bordered KKT system)
// comes from the same matrix: with β = (K_S + 11ᵀ)⁻¹ b_S, w_a = α/Σα and w_b = (Σβ/Σα) α - β. A
// failed factorisation (a numerically dependent corral) stops Wolfe's loop where the reference's
// non-finite LU solution does ("broken"), and gives the face no roots.
//
// Indices of the corral are kept as small integers in the float64 scratch (exact below 2^53),
// since the solver interface (csrc/cpu/small_solve_cpu.h) has float64 scratch only.
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <limits>

#include "fastmtl/dense_math.h"
#include "fastmtl/macros.h"

namespace fastmtl {
namespace cagrad_detail {

constexpr double kInf = std::numeric_limits<double>::infinity();

// Wolfe's steps per projection: see _wolfe_steps in the reference (at least one per vertex of
// the optimal face, room for the minor steps).
FASTMTL_HOST_DEVICE inline int64_t wolfe_steps(int64_t T) { return 2 * T + 10; }

// The members of a 0/1 mask as indices (float64, exact), in increasing order; their count.
FASTMTL_HOST_DEVICE inline int64_t gather_members(const double* mask, int64_t T, double* members) {
  int64_t n = 0;
  for (int64_t i = 0; i < T; ++i) {
    if (mask[i] != 0) members[n++] = static_cast<double>(i);
  }
  return n;
}

FASTMTL_HOST_DEVICE inline int64_t member(const double* members, int64_t k) { return static_cast<int64_t>(members[k]); }

// Factor F = K_S + 11ᵀ (n x n, leading dimension n) of the corral's members; false when F is not
// numerically positive definite (the corral is numerically affinely dependent).
FASTMTL_HOST_DEVICE inline bool factor_corral(const double* K, int64_t T, const double* members, int64_t n,
                                              double* F) {
  for (int64_t r = 0; r < n; ++r) {
    const double* row = K + member(members, r) * T;
    for (int64_t s = 0; s <= r; ++s) F[r * n + s] = row[member(members, s)] + 1.0;
  }
  return cholesky_factor(F, n, n);
}

// uᵀ K_S u for u given on the members (gathered, length n).
FASTMTL_HOST_DEVICE inline double corral_quadratic_form(const double* K, int64_t T, const double* members,
                                                        int64_t n, const double* u, const double* v) {
  double total = 0;
  for (int64_t r = 0; r < n; ++r) {
    const double* row = K + member(members, r) * T;
    double inner = 0;
    for (int64_t s = 0; s < n; ++s) inner += row[member(members, s)] * v[s];
    total += u[r] * inner;
  }
  return total;
}

// Work space of one Wolfe solve: 5 vectors of T and a T x T factor.
struct WolfeWork {
  double* K_lam;
  double* mu;
  double* stepped;
  double* members;
  double* best_lam;
  double* best_corral;
  double* factor;
};

// Wolfe's minimum-norm point of conv{g_i : allowed_i} for the Gram matrix K (T x T): w on the
// simplex minimising wᵀKw; the reference's min_norm_point step by step (see its docstring).
// Cold start (warm = false): from the allowed vertex of smallest norm (allowed = nullptr: all).
// Warm start: from (lam, corral) as given (a point of conv(corral), corral affinely independent),
// with a minor step. On return lam/corral hold the point of smallest norm seen and its corral;
// the result says whether the optimality test passed.
FASTMTL_HOST_DEVICE inline bool min_norm_point(const double* K, int64_t T, const double* allowed, int64_t steps,
                                               bool warm, double* lam, double* corral, const WolfeWork& work) {
  double max_diag = 0;
  for (int64_t i = 0; i < T; ++i) max_diag = std::fmax(max_diag, std::fabs(K[i * T + i]));
  bool major = !warm;
  if (!warm) {
    int64_t shortest = -1;
    for (int64_t i = 0; i < T; ++i) {
      if (allowed != nullptr && allowed[i] == 0) continue;
      if (shortest < 0 || K[i * T + i] < K[shortest * T + shortest]) shortest = i;
    }
    if (shortest < 0) shortest = 0;  // no allowed task: not reached (the callers allow >= 1)
    for (int64_t i = 0; i < T; ++i) lam[i] = corral[i] = (i == shortest) ? 1.0 : 0.0;
  }
  double best_norm = quadratic_form(K, T, T, lam);
  for (int64_t i = 0; i < T; ++i) {
    work.best_lam[i] = lam[i];
    work.best_corral[i] = corral[i];
  }
  // The gap's rounding: K lam and lamᵀ K lam are sums of T + 1 terms of size <= max diag(K).
  const double gap_tol = 4.0 * static_cast<double>(T + 2) * DBL_EPSILON * max_diag;
  bool done = false;
  for (int64_t step = 0; step < steps && !done; ++step) {
    matvec(K, T, T, lam, work.K_lam);
    int64_t entering = -1;
    for (int64_t i = 0; i < T; ++i) {
      if (allowed != nullptr && allowed[i] == 0) continue;
      if (entering < 0 || work.K_lam[i] < work.K_lam[entering]) entering = i;
    }
    const double smallest = entering < 0 ? kInf : work.K_lam[entering];
    const double x_norm = dot(lam, work.K_lam, T);
    // Optimal: the Frank-Wolfe gap is at rounding level, or |x|² is, or the entering gradient is in
    // the corral already (its gap is then rounding or noise in K).
    done = major && (x_norm - smallest <= gap_tol || x_norm <= gap_tol || (entering >= 0 && corral[entering] != 0));
    bool broken = false;
    if (!done) {
      // corral_try = corral plus the entering gradient after a major step; mu = its affine minimiser.
      double* corral_try = work.stepped;  // reused below once corral_try is gathered into members
      for (int64_t i = 0; i < T; ++i) corral_try[i] = corral[i];
      if (major && entering >= 0) corral_try[entering] = 1.0;
      const int64_t n = gather_members(corral_try, T, work.members);
      double* alpha = work.mu;  // gathered (K_S + 11ᵀ) α = 1, then scattered as μ = α / Σα
      broken = !factor_corral(K, T, work.members, n, work.factor);
      double total = 0;
      if (!broken) {
        for (int64_t r = 0; r < n; ++r) alpha[r] = 1.0;
        cholesky_solve(work.factor, n, n, alpha);
        for (int64_t r = 0; r < n; ++r) total += alpha[r];
        broken = !(total > 0) || !all_finite_values(alpha, n);
      }
      if (!broken) {
        for (int64_t r = n - 1; r >= 0; --r) {  // scatter in place: member(r) >= r
          const double value = alpha[r] / total;
          const int64_t i = member(work.members, r);
          for (int64_t k = (r == n - 1 ? T - 1 : member(work.members, r + 1) - 1); k > i; --k) alpha[k] = 0;
          alpha[i] = value;
        }
        for (int64_t k = (n > 0 ? member(work.members, 0) : T) - 1; k >= 0; --k) alpha[k] = 0;
        const double* mu = alpha;
        bool inside = true;
        double theta = kInf;
        int64_t leaving = 0;  // torch's argmin of an all-inf ratio: index 0
        for (int64_t r = 0; r < n; ++r) {
          const int64_t i = member(work.members, r);
          if (mu[i] > 0) continue;
          inside = false;
          const double gap = lam[i] - mu[i];
          const double ratio = lam[i] / (gap > DBL_MIN ? gap : DBL_MIN);
          if (ratio < theta) {
            theta = ratio;
            leaving = i;
          }
        }
        if (inside) {
          for (int64_t i = 0; i < T; ++i) {
            lam[i] = mu[i];
            corral[i] = work.stepped[i];  // corral_try
          }
        } else {
          theta = theta < 0 ? 0.0 : (theta > 1 ? 1.0 : theta);
          // Stuck: the gradient that just entered leaves at once (θ = 0): noise, stop here.
          broken = major && leaving == entering && theta <= 0;
          if (!broken) {
            // Step from lam towards mu up to the first weight that reaches 0, and drop it.
            double sum = 0;
            for (int64_t i = 0; i < T; ++i) {
              double value = lam[i] + theta * (mu[i] - lam[i]);
              value = value > 0 ? value : 0.0;
              if (i == leaving || corral_try[i] == 0) value = 0;
              work.K_lam[i] = value;  // K_lam is free until the next step
              sum += value;
            }
            sum = sum > DBL_MIN ? sum : DBL_MIN;
            for (int64_t i = 0; i < T; ++i) {
              lam[i] = work.K_lam[i] / sum;
              corral[i] = (corral_try[i] != 0 && lam[i] > 0) ? 1.0 : 0.0;
            }
          }
        }
        major = inside;
      }
    }
    const double norm = quadratic_form(K, T, T, lam);
    if (norm <= best_norm) {
      best_norm = norm;
      for (int64_t i = 0; i < T; ++i) {
        work.best_lam[i] = lam[i];
        work.best_corral[i] = corral[i];
      }
    }
    done = done || broken;
  }
  for (int64_t i = 0; i < T; ++i) {
    lam[i] = work.best_lam[i];
    corral[i] = work.best_corral[i];
  }
  return done;
}

}  // namespace cagrad_detail

struct CagradSolver {
  double c;
  int64_t rescale;  // 0: none, 1: divide by 1 + c², 2: divide by 1 + c (the official code's options)
  double norm_eps;
  int64_t max_iters;
  double tol;

  // Scratch: K̂, K_ρ, a factor (T² each) and 16 vectors of T.
  FASTMTL_HOST_DEVICE int64_t scratch_size(int64_t T) const { return 3 * T * T + 16 * T; }
  FASTMTL_HOST_DEVICE int64_t out_size(int64_t T) const { return T; }

  FASTMTL_HOST_DEVICE void operator()(const double* K_in, int64_t T, int64_t /*job*/, double* scratch,
                                      double* weights) const {
    using namespace cagrad_detail;
    double* K = scratch;            // K / trace(K)
    double* K_rho = K + T * T;      // Gram matrix of the shifted gradients g_i + ρ g0
    double* factor = K_rho + T * T;
    double* vectors = factor + T * T;
    double* b = vectors;            // g_i · g0
    double* w = b + T;              // the last projection's weights ...
    double* corral = w + T;         // ... and its corral (0/1)
    double* best = corral + T;      // the best w by F met so far
    double* w_a = best + T;         // the face's affine path w_a + ρ w_b
    double* w_b = w_a + T;
    double* beta = w_b + T;
    double* candidate = beta + T;
    double* members = candidate + T;
    double* allowed = members + T;
    const WolfeWork work{allowed + T, allowed + 2 * T, allowed + 3 * T, allowed + 4 * T, allowed + 5 * T,
                         allowed + 6 * T, factor};

    // torchjd's normalisation: K / trace(K), or 0 when the trace is below norm_eps.
    double trace = 0;
    for (int64_t i = 0; i < T; ++i) trace += K_in[i * T + i];
    const bool small = trace < norm_eps;
    for (int64_t e = 0; e < T * T; ++e) K[e] = small ? 0.0 : K_in[e] / trace;
    const double inv_T = 1.0 / static_cast<double>(T);
    for (int64_t i = 0; i < T; ++i) {
      double total = 0;
      for (int64_t j = 0; j < T; ++j) total += K[i * T + j] * inv_T;
      b[i] = total;
    }
    double s = 0;  // |g0|²
    for (int64_t i = 0; i < T; ++i) s += inv_T * b[i];
    s = s > 0 ? s : 0.0;
    const double sqrt_phi = c * std::sqrt(s);

    bool stationary = false;
    if (c == 0) {
      linear_minimiser(K, T, b, w, corral, allowed, work);
    } else {
      stationary = root_search(K, T, b, s, sqrt_phi, K_rho, w, corral, best, w_a, w_b, beta, candidate, members,
                               work);
    }
    double g_w_norm = quadratic_form(K, T, T, w);
    g_w_norm = std::sqrt(g_w_norm > 0 ? g_w_norm : 0.0);
    // torchjd's rule: |g_w| < norm_eps means (approximately) Pareto-stationary, and the update is 0.
    const bool zero = stationary || g_w_norm < norm_eps;
    const double ratio = sqrt_phi / (zero ? 1.0 : g_w_norm);
    const double divisor = rescale == 1 ? 1.0 + c * c : (rescale == 2 ? 1.0 + c : 1.0);
    for (int64_t i = 0; i < T; ++i) weights[i] = (zero ? 0.0 : inv_T + ratio * w[i]) / divisor;
  }

 private:
  // c = 0: F = bᵀw is minimal on the face of the simplex where b_i = min b (ties within
  // 4 γ_(T+2): b is a mean of T entries |K_ij| <= 1); its minimum-norm point gives the
  // Pareto-stationary verdict whenever that face reaches 0 (reference: _linear_minimiser).
  FASTMTL_HOST_DEVICE static void linear_minimiser(const double* K, int64_t T, const double* b, double* w,
                                                   double* corral, double* allowed,
                                                   const cagrad_detail::WolfeWork& work) {
    double smallest = b[0];
    for (int64_t i = 1; i < T; ++i) smallest = std::fmin(smallest, b[i]);
    const double ties = smallest + 4.0 * static_cast<double>(T + 2) * DBL_EPSILON;
    for (int64_t i = 0; i < T; ++i) allowed[i] = b[i] <= ties ? 1.0 : 0.0;
    cagrad_detail::min_norm_point(K, T, allowed, cagrad_detail::wolfe_steps(T), false, w, corral, work);
  }

  FASTMTL_HOST_DEVICE double objective(const double* K, int64_t T, const double* b, double sqrt_phi,
                                       const double* v) const {
    const double norm_sq = quadratic_form(K, T, T, v);
    return dot(b, v, T) + sqrt_phi * std::sqrt(norm_sq > 0 ? norm_sq : 0.0);
  }

  // p(ρ) = proj_H(-ρ g0) by Wolfe on K + ρ(b1ᵀ + 1bᵀ) + ρ²|g0|²11ᵀ (w, corral in/out); returns ψ(ρ).
  FASTMTL_HOST_DEVICE double project(const double* K, int64_t T, const double* b, double s, double rho, bool warm,
                                     double* K_rho, double* w, double* corral,
                                     const cagrad_detail::WolfeWork& work) const {
    for (int64_t i = 0; i < T; ++i) {
      for (int64_t j = 0; j < T; ++j) K_rho[i * T + j] = K[i * T + j] + rho * (b[i] + b[j]) + rho * rho * s;
    }
    cagrad_detail::min_norm_point(K_rho, T, nullptr, cagrad_detail::wolfe_steps(T), warm, w, corral, work);
    return quadratic_form(K, T, T, w) - (c * c) * s * rho * rho;
  }

  // The root search (reference: _root_search): w = the minimiser of F; true when |g*| <= norm_eps.
  FASTMTL_HOST_DEVICE bool root_search(const double* K, int64_t T, const double* b, double s, double sqrt_phi,
                                       double* K_rho, double* w, double* corral, double* best, double* w_a,
                                       double* w_b, double* beta, double* candidate, double* members,
                                       const cagrad_detail::WolfeWork& work) const {
    const double safe_phi = sqrt_phi > 0 ? sqrt_phi : 1.0;
    double low = norm_eps / safe_phi;
    double max_diag = 0;
    for (int64_t i = 0; i < T; ++i) max_diag = std::fmax(max_diag, K[i * T + i]);
    double high = std::fmax(std::sqrt(max_diag) / safe_phi, low) * 1.01;  // ψ(high) < 0
    double psi = project(K, T, b, s, low, false, K_rho, w, corral, work);
    if (psi <= 0) return true;  // Pareto-stationary: the update is 0 whatever w is
    for (int64_t i = 0; i < T; ++i) best[i] = w[i];
    double best_objective = objective(K, T, b, sqrt_phi, best);
    double rho = low;
    for (int64_t iteration = 0; iteration < max_iters; ++iteration) {
      double roots[2];
      face_roots(K, T, b, s, corral, members, work.factor, w_a, w_b, beta, roots);
      for (int k = 0; k < 2; ++k) {
        if (!face_candidate(T, w_a, w_b, roots[k], candidate)) continue;
        const double value = objective(K, T, b, sqrt_phi, candidate);
        if (value <= best_objective) {
          best_objective = value;
          for (int64_t i = 0; i < T; ++i) best[i] = candidate[i];
        }
      }
      // Next trial: the face's root nearest to the last trial if it is inside the bracket, else the
      // geometric midpoint (the bracket spans up to ~4 decades).
      double trial = std::sqrt(low * high);
      double nearest = cagrad_detail::kInf;
      bool converged = high - low <= tol * high;
      for (int k = 0; k < 2; ++k) {
        converged = converged || std::fabs(roots[k] - rho) <= tol * rho;
        if (roots[k] > low && roots[k] < high && std::fabs(roots[k] - rho) < nearest) {
          nearest = std::fabs(roots[k] - rho);
          trial = roots[k];
        }
      }
      if (converged) break;
      rho = trial;
      psi = project(K, T, b, s, rho, true, K_rho, w, corral, work);
      if (psi > 0) {
        low = rho;
      } else {
        high = rho;
      }
      const double value = objective(K, T, b, sqrt_phi, w);
      if (value <= best_objective) {
        best_objective = value;
        for (int64_t i = 0; i < T; ++i) best[i] = w[i];
      }
    }
    for (int64_t i = 0; i < T; ++i) w[i] = best[i];
    return false;
  }

  // On the affine hull of the corral's gradients the nearest point to -ρ g0 is g_w with w(ρ) =
  // w_a + ρ w_b, so ψ(ρ) = |g_w(ρ)|² - c²|g0|²ρ² is a quadratic A0 + 2 A1 ρ + a ρ²; its two real
  // roots, -1 for one that does not exist (reference: _face_roots). w_a, w_b are scattered to T.
  FASTMTL_HOST_DEVICE void face_roots(const double* K, int64_t T, const double* b, double s, const double* corral,
                                      double* members, double* factor, double* w_a, double* w_b, double* beta,
                                      double* roots) const {
    roots[0] = roots[1] = -1.0;
    for (int64_t i = 0; i < T; ++i) w_a[i] = w_b[i] = 0;
    const int64_t n = cagrad_detail::gather_members(corral, T, members);
    if (!cagrad_detail::factor_corral(K, T, members, n, factor)) {
      for (int64_t i = 0; i < T; ++i) w_a[i] = NAN;  // no candidates
      return;
    }
    // Gathered: alpha = (K_S + 11ᵀ)⁻¹ 1 in w_a[0..n), beta = (K_S + 11ᵀ)⁻¹ b_S.
    for (int64_t r = 0; r < n; ++r) {
      w_a[r] = 1.0;
      beta[r] = b[cagrad_detail::member(members, r)];
    }
    cholesky_solve(factor, n, n, w_a);
    cholesky_solve(factor, n, n, beta);
    double sum_alpha = 0, sum_beta = 0;
    for (int64_t r = 0; r < n; ++r) {
      sum_alpha += w_a[r];
      sum_beta += beta[r];
    }
    for (int64_t r = 0; r < n; ++r) {
      w_b[r] = (sum_beta / sum_alpha) * w_a[r] - beta[r];
      w_a[r] = w_a[r] / sum_alpha;
    }
    const double A0 = cagrad_detail::corral_quadratic_form(K, T, members, n, w_a, w_a);
    const double A1 = cagrad_detail::corral_quadratic_form(K, T, members, n, w_a, w_b);
    const double A2 = cagrad_detail::corral_quadratic_form(K, T, members, n, w_b, w_b);
    for (int64_t r = n - 1; r >= 0; --r) {  // scatter in place: member(r) >= r
      const int64_t i = cagrad_detail::member(members, r);
      const double a_value = w_a[r], b_value = w_b[r];
      w_a[r] = w_b[r] = 0;
      w_a[i] = a_value;
      w_b[i] = b_value;
    }
    const double a = A2 - (c * c) * s;
    const double discriminant = A1 * A1 - A0 * a;
    const double root = std::sqrt(discriminant > 0 ? discriminant : 0.0);
    const double q = -(A1 + (A1 >= 0 ? root : -root));  // roots q / a and A0 / q, without cancellation
    const double candidates[2] = {q / (a != 0 ? a : 1.0), A0 / (q != 0 ? q : 1.0)};
    const bool real[2] = {a != 0, q != 0};
    for (int k = 0; k < 2; ++k) {
      if (real[k] && discriminant >= 0 && is_finite_value(candidates[k])) roots[k] = candidates[k];
    }
  }

  // w(ρ) clipped to the simplex: max(w_a + max(ρ, 0) w_b, 0) / its sum; false when not finite or 0.
  FASTMTL_HOST_DEVICE static bool face_candidate(int64_t T, const double* w_a, const double* w_b, double rho,
                                                 double* v) {
    const double r = rho > 0 ? rho : 0.0;
    double total = 0;
    for (int64_t i = 0; i < T; ++i) {
      const double value = w_a[i] + r * w_b[i];
      v[i] = value > 0 ? value : 0.0;
      total += v[i];
    }
    if (!all_finite_values(v, T) || !(total > 0)) return false;
    for (int64_t i = 0; i < T; ++i) v[i] /= total;
    return true;
  }
};

}  // namespace fastmtl
