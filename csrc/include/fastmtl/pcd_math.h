#pragma once
// PCD, Priority-Constrained Descent (Varam & AlHajri 2026, "Not All Objectives Are Born Equal:
// Priority-Constrained Descent for Hierarchical Multi-Objective Optimization", TMLR), in Gram space.
// With the normalised gradients g~_i = s_i g_i (the scales s come from the caller's moving average
// of |g_i|^2), task 0 the primary one:
//   d~ = argmin_d 1/2 |d - g~_0|^2  s.t.  g~_j . d >= tau_j |g~_j|^2,  j = 1 .. T-1,
// then d = d~ |g_0| / |d~|. Its dual: d~ = g~_0 + sum_j mu_j g~_j with mu >= 0 minimising
// 1/2 mu^T S mu - b^T mu, S the secondary block of K~ = diag(s) K diag(s) and
// b_j = tau_j S_jj - K~_j0 (b_j > 0: g~_0 violates constraint j). Solved exactly by the dual
// active-set method of Goldfarb & Idnani (1983, "A numerically stable dual method for solving
// strictly convex quadratic programs") with the identity Hessian, where every primal quantity is a
// Gram-space one: the slack of constraint j is (S mu)_j - b_j; adding a violated constraint p
// moves along z = g~_p - sum_{j active} r_j g~_j, with S_AA r = S_Ap, |z|^2 = S_pp - S_pA r; the
// full step -slack_p / |z|^2 makes p hold with equality, the partial step min mu_j / r_j (r_j > 0)
// drops the active constraint whose multiplier reaches 0 first.
//
// Tolerances (torchjd 0.18's, so that both decide alike): a constraint is satisfied when violated
// by at most tol * max_i K~_ii; g~_p counts as dependent on the active gradients when
// |z|^2 <= dependence_tol * S_pp (then no primal step along z exists); at most 10 T add/drop steps
// (only a guard against cycling on rounding errors: the current multipliers are kept). No step
// possible at all (both infinite): the constraints are infeasible, and the result is g_0 itself,
// weights [1, 0, ..., 0]. A zero primary gradient (K_00 <= 0) gives zero weights; so does a
// d~ that vanishes up to the Gram matrix's rounding, |d~|^2 <= precision (sum_i |w_i| |g~_i|)^2.
//
// Differences from torchjd's loop (same maths): the active set is walked in index order, not in
// insertion order (only an exact tie between two ratios mu_j / r_j can tell them apart), and
// S_AA is factorised by Cholesky, not LU; a failed factorisation (S_AA not numerically positive
// definite, which the dependence test rules out up to rounding) stops the loop with the current
// multipliers, as the iteration guard does. The reference: python/fastmtl/methods/pcd_fairgrad.py
// (pcd_weights), which runs the same steps in masked torch ops.
// Solver interface: csrc/cpu/small_solve_cpu.h.
#include <cfloat>
#include <cmath>
#include <cstdint>

#include "fastmtl/dense_math.h"
#include "fastmtl/macros.h"

namespace fastmtl {

struct PcdSolver {
  const double* scales;   // [T] s_i = 1 / sqrt(debiased EMA of |g_i|^2 + eps) (0 for a never-seen gradient)
  const double* taus;     // [T - 1] the progress fraction of each secondary task, in [0, 1]
  double tol;             // constraint satisfaction, relative to max_i K~_ii
  double dependence_tol;  // |z|^2 <= dependence_tol S_pp: g~_p dependent on the active gradients
  double precision;       // relative precision of K: below it d~ counts as zero

  // K~ (T x T), the active block's Cholesky factor ((T-1)^2), then mu, b, slacks, r (T-1 each),
  // the active flags (T-1, 0 or 1) and the QP weights w (T).
  FASTMTL_HOST_DEVICE int64_t scratch_size(int64_t T) const { return T * T + (T - 1) * (T - 1) + 5 * (T - 1) + T; }
  FASTMTL_HOST_DEVICE int64_t out_size(int64_t T) const { return T; }

  FASTMTL_HOST_DEVICE void operator()(const double* K, int64_t T, int64_t /*job*/, double* scratch,
                                      double* out) const {
    const int64_t n = T - 1;
    double* Kn = scratch;
    double* w = Kn + T * T + n * n + 5 * n;
    for (int64_t i = 0; i < T; ++i) {
      out[i] = 0;
      for (int64_t j = 0; j < T; ++j) Kn[i * T + j] = K[i * T + j] * (scales[i] * scales[j]);
    }
    if (!(K[0] > 0)) return;  // zero primary gradient: zero update
    solve_qp(Kn, T, Kn + T * T, w);
    // Rescale d~ = sum_i w_i g~_i to |g_0|, unless it is zero up to the rounding of K~.
    const double squared_norm = quadratic_form(Kn, T, T, w);
    double magnitude = 0;
    for (int64_t i = 0; i < T; ++i) magnitude += std::fabs(w[i]) * std::sqrt(std::fmax(Kn[i * T + i], 0.0));
    if (!(squared_norm > precision * (magnitude * magnitude))) return;
    const double factor = std::sqrt(K[0] / squared_norm);
    for (int64_t i = 0; i < T; ++i) out[i] = w[i] * scales[i] * factor;
  }

  // w = [1, mu] from the active-set solve of the dual (see the header comment); [1, 0, ..., 0]
  // when the constraints are infeasible.
  FASTMTL_HOST_DEVICE void solve_qp(const double* Kn, int64_t T, double* work, double* w) const {
    const int64_t n = T - 1;
    for (int64_t i = 0; i < T; ++i) w[i] = i == 0 ? 1.0 : 0.0;
    if (n == 0) return;
    double* L = work;
    double* mu = L + n * n;
    double* b = mu + n;
    double* slack = b + n;
    double* r = slack + n;
    double* active = r + n;
    const double* S = Kn + T + 1;  // S_jk = S[j * T + k]: the secondary block of K~
    double max_diagonal = 0;
    for (int64_t i = 0; i < T; ++i) max_diagonal = std::fmax(max_diagonal, Kn[i * T + i]);
    const double atol = tol * std::fmax(max_diagonal, DBL_MIN);
    for (int64_t j = 0; j < n; ++j) {
      b[j] = taus[j] * S[j * T + j] - Kn[(j + 1) * T];
      mu[j] = 0;
      active[j] = 0;
    }
    const int64_t max_iters = 10 * T;
    bool adding = false;  // a violated constraint p is being added
    int64_t p = 0;
    double slack_p = 0;
    for (int64_t iteration = 0; iteration < max_iters;) {
      if (!adding) {
        // The most violated constraint (active ones hold with equality: slack 0).
        for (int64_t j = 0; j < n; ++j) slack[j] = active[j] != 0 ? 0.0 : dot(S + j * T, mu, n) - b[j];
        p = 0;
        for (int64_t j = 1; j < n; ++j) p = slack[j] < slack[p] ? j : p;
        if (slack[p] >= -atol) break;  // every constraint holds: optimal
        slack_p = slack[p];
        adding = true;
      }
      ++iteration;
      // r on the active set (index order): S_AA r = S_Ap; |z|^2 = S_pp - S_pA r.
      int64_t k = 0;
      for (int64_t j = 0; j < n; ++j) {
        if (active[j] == 0) continue;
        int64_t c = 0;
        for (int64_t i = 0; i <= j; ++i) {
          if (active[i] != 0) L[k * n + c++] = S[j * T + i];
        }
        r[k++] = S[j * T + p];
      }
      double z_squared = S[p * T + p];
      double partial = INFINITY;
      int64_t drop = -1;
      if (k > 0) {
        if (!cholesky_factor(L, k, n)) break;  // S_AA not numerically positive definite: keep mu
        cholesky_solve(L, k, n, r);
        int64_t c = 0;
        for (int64_t j = 0; j < n; ++j) {
          if (active[j] == 0) continue;
          z_squared -= S[p * T + j] * r[c];
          if (r[c] > 0) {
            const double ratio = mu[j] / r[c];
            if (ratio < partial) {
              partial = ratio;
              drop = j;
            }
          }
          ++c;
        }
      }
      const double full = z_squared > dependence_tol * S[p * T + p] ? -slack_p / z_squared : INFINITY;
      const double step = full <= partial ? full : partial;
      if (!(step < INFINITY)) return;  // no dual step bounded: infeasible constraints, w = e_0
      int64_t c = 0;
      for (int64_t j = 0; j < n; ++j) {
        if (active[j] != 0) mu[j] -= step * r[c++];
      }
      mu[p] += step;
      if (full <= partial) {
        active[p] = 1;
        adding = false;
        continue;
      }
      mu[drop] = 0;  // its multiplier reached zero: drop it, then try adding p again
      active[drop] = 0;
      slack_p = dot(S + p * T, mu, n) - b[p];
    }
    for (int64_t j = 0; j < n; ++j) w[j + 1] = mu[j] > 0 ? mu[j] : 0.0;
  }
};

}  // namespace fastmtl
