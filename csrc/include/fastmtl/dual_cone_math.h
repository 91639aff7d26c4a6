#pragma once
// UPGrad / DualProj's dual-cone QP (Quinton & Rey 2024, Proposition 1), exact, one row u per job:
//     min_v v^T A v  subject to  v >= u,     A = K / trace(K) + reg I
// (K counted as 0 when its trace is below norm_eps: torchjd's projector, fastmtl._numerics
// .trace_normalised). A is positive definite, so v = u + s where s solves the LCP
//     s >= 0,  w = A s + q >= 0 (q = A u),  s_i w_i = 0,
// and a free set F = {i : s_i > 0} fixes the candidate A_FF s_F = -q_F, s = 0 off F.
//
// The same scheme as the CPU path of the torch reference python/fastmtl/methods/dual_cone.py
// (its module docstring has the algorithm, the budget and the measured step counts):
//  1. block principal pivoting (Judice & Pires 1994) from F = {q < 0}, with Murty's (1974)
//     single pivot on the largest violating index after kBackup block steps that do not lower
//     the number of KKT violations; it stops as soon as the row passes the KKT check (violations
//     relative to their rounding scale, within kkt_tolerance(T)); at most kFirstPivots steps;
//  2. if still unsolved: kInteriorPointIterations Mehrotra predictor-corrector steps on the LCP
//     (Cholesky of A + diag(w / s)), F = {s > w} from the last iterate, then cleanup_pivots(T)
//     further pivoting steps with the same check;
//  3. the candidate with the smallest violation is kept; the row returns u + max(s, 0).
// A row whose q = A u >= 0 passes at F = {} on the first step: no factorisation at all.
//
// Plain float64 C++ for the CPU and CUDA kernels (csrc/cpu/dual_cone_cpu.cpp,
// csrc/cuda/dual_cone_cuda.cu); solver interface: csrc/cpu/small_solve_cpu.h.
#include <cfloat>
#include <cmath>
#include <cstdint>

#include "fastmtl/dense_math.h"
#include "fastmtl/macros.h"

namespace fastmtl {
namespace dual_cone {

constexpr int64_t kBackup = 3;                    // block steps without fewer violations before Murty pivots
constexpr int64_t kFirstPivots = 32;              // pivoting steps from F = {q < 0}
constexpr int64_t kInteriorPointIterations = 30;  // Mehrotra steps of the fallback start
constexpr double kStepFraction = 0.99;            // of the step to the boundary of s, w > 0

// Pivoting steps after the interior-point start (reference: _cleanup_pivots).
FASTMTL_HOST_DEVICE inline int64_t cleanup_pivots(int64_t T) { return T + 8; }

// A KKT violation rounding alone explains, relative to its scale (reference: _kkt_tolerance): a
// component of w = A s + A u sums 2T products, off by at most gamma_2T (|A|(|s| + |u|))_i (Higham
// §3.1); four times that, with two more terms of slack.
FASTMTL_HOST_DEVICE inline double kkt_tolerance(int64_t T) {
  return 4.0 * static_cast<double>(2 * T + 2) * (DBL_EPSILON / 2);
}

// A = K / trace(K) + reg I, row-major T x T; zeros plus reg I when trace(K) < norm_eps. Multiplies
// by 1 / trace (within an ulp of the division, much cheaper) unless that reciprocal is subnormal.
FASTMTL_HOST_DEVICE inline void regularised_gram(const double* K, int64_t T, double norm_eps, double reg_eps,
                                                 double* A) {
  double trace = 0;
  for (int64_t i = 0; i < T; ++i) trace += K[i * T + i];
  const bool zero = trace < norm_eps;
  const double inverse = 1.0 / trace;
  const bool multiply = inverse >= DBL_MIN;
  for (int64_t e = 0; e < T * T; ++e) A[e] = zero ? 0.0 : (multiply ? K[e] * inverse : K[e] / trace);
  for (int64_t i = 0; i < T; ++i) A[i * T + i] += reg_eps;
}

// The dot products of the pivoting loop (candidate checks, free-set factorisations) in eight
// interleaved partial sums: the same error bound as dense_math.h's ordered dot (gamma_n |x|.|y|,
// Higham §3.1, for any summation order), but eight independent addition chains instead of one,
// which is what bounds a T = 64 solve on a CPU (without -ffast-math a compiler keeps one chain).
FASTMTL_HOST_DEVICE inline double dot_chains(const double* x, const double* y, int64_t n) {
  double a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  const int64_t blocks = n - n % 8;
  for (int64_t k = 0; k < blocks; k += 8) {
    for (int c = 0; c < 8; ++c) a[c] += x[k + c] * y[k + c];
  }
  for (int64_t k = blocks; k < n; ++k) a[0] += x[k] * y[k];
  return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

// sum_k |x_k| |y_k|: the rounding scale of x . y (eight chains, as dot_chains).
FASTMTL_HOST_DEVICE inline double abs_dot_chains(const double* x, const double* y, int64_t n) {
  double a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  const int64_t blocks = n - n % 8;
  for (int64_t k = 0; k < blocks; k += 8) {
    for (int c = 0; c < 8; ++c) a[c] += std::fabs(x[k + c]) * std::fabs(y[k + c]);
  }
  for (int64_t k = blocks; k < n; ++k) a[0] += std::fabs(x[k]) * std::fabs(y[k]);
  return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

// dot_chains as the inner product of dense_math.h's cholesky_factor.
struct ChainedDot {
  FASTMTL_HOST_DEVICE double operator()(const double* x, const double* y, int64_t n) const {
    return dot_chains(x, y, n);
  }
};

// dense_math.h's cholesky_solve with dot_chains (backward stable whatever the order of its inner
// sums, Higham Thm 8.5); the backward substitution runs by rows of L (contiguous, no addition
// chain) rather than by its columns.
FASTMTL_HOST_DEVICE inline void cholesky_solve_chains(const double* L, int64_t n, int64_t lda, double* b) {
  for (int64_t i = 0; i < n; ++i) b[i] = (b[i] - dot_chains(L + i * lda, b, i)) / L[i * lda + i];
  for (int64_t i = n - 1; i >= 0; --i) {
    const double* row_i = L + i * lda;
    b[i] /= row_i[i];
    for (int64_t k = 0; k < i; ++k) b[k] -= row_i[k] * b[i];
  }
}

// The largest alpha <= 1 with x + alpha dx >= 0 (reference: _step_to_boundary).
FASTMTL_HOST_DEVICE inline double step_to_boundary(const double* x, const double* dx, int64_t n) {
  double step = 1.0;
  for (int64_t i = 0; i < n; ++i) {
    if (dx[i] < 0) {
      const double ratio = -x[i] / dx[i];
      step = ratio < step ? ratio : step;
    }
  }
  return step;
}

// One row's working memory, carved from the job's float64 scratch (Solver::scratch_size).
struct RowScratch {
  double* factor;     // T x T: the Cholesky factor of A_FF (leading dimension |F|) or A + diag(w/s)
  double* q;          // A u
  double* u_scale;    // (|A| |u|)_i: the part of w's rounding scale that does not change
  double* free;       // 1 on the free set F, 0 off it (flags kept as float64: the scratch is float64)
  double* index;      // the indices of F in increasing order (as float64, exact: T < 2^53)
  double* s;          // the current candidate (0 off F)
  double* violation;  // per coordinate, relative to its rounding scale
  double* best_s;     // the candidate with the smallest violation so far
  double* work;       // |F| right-hand side / solution; the interior point's Newton right-hand side
  double* ipm_s;      // interior-point iterate s > 0
  double* ipm_w;      // interior-point iterate w > 0
  double* residual;   // A s + q - w
  double* ds;         // Newton direction
  double* dw;

  static constexpr int64_t kVectors = 13;
  FASTMTL_HOST_DEVICE static int64_t size(int64_t T) { return T * T + kVectors * T; }

  FASTMTL_HOST_DEVICE RowScratch(double* base, int64_t T)
      : factor(base),
        q(base + T * T),
        u_scale(q + T),
        free(u_scale + T),
        index(free + T),
        s(index + T),
        violation(s + T),
        best_s(violation + T),
        work(best_s + T),
        ipm_s(work + T),
        ipm_w(ipm_s + T),
        residual(ipm_w + T),
        ds(residual + T),
        dw(ds + T) {}
};

// The free-set candidate: s_F = -A_FF^{-1} q_F by Cholesky (A_FF is a principal submatrix of the
// positive definite A), s = 0 off F. Its KKT violation per coordinate, relative to the rounding
// scale of that quantity (reference: _kkt_violation): s_i < 0 on F against max(|s|, |u|), w_i < 0
// off F against (|A|(|s| + |u|))_i. Returns the largest; a failed factorisation or a non-finite
// candidate gives +inf everywhere (every coordinate then counts as violated).
FASTMTL_HOST_DEVICE inline double candidate_violation(const double* A, int64_t T, const double* u,
                                                      const RowScratch& r) {
  int64_t n = 0;
  for (int64_t i = 0; i < T; ++i) {
    if (r.free[i] != 0) r.index[n++] = static_cast<double>(i);
  }
  bool ok = true;
  if (n > 0) {  // gather the lower triangle of A_FF through the index list (no branch per entry)
    for (int64_t a = 0; a < n; ++a) {
      const double* row = A + static_cast<int64_t>(r.index[a]) * T;
      for (int64_t b = 0; b <= a; ++b) r.factor[a * n + b] = row[static_cast<int64_t>(r.index[b])];
      r.work[a] = -r.q[static_cast<int64_t>(r.index[a])];
    }
    ok = cholesky_factor(r.factor, n, n, ChainedDot{});
    if (ok) cholesky_solve_chains(r.factor, n, n, r.work);
  }
  double s_scale = 0;
  for (int64_t i = 0, a = 0; i < T; ++i) {
    r.s[i] = r.free[i] != 0 ? r.work[a++] : 0.0;
    ok = ok && is_finite_value(r.s[i]);
    const double size = std::fabs(r.s[i]) > std::fabs(u[i]) ? std::fabs(r.s[i]) : std::fabs(u[i]);
    s_scale = size > s_scale ? size : s_scale;
  }
  if (!ok) {
    for (int64_t i = 0; i < T; ++i) r.violation[i] = INFINITY;
    return INFINITY;
  }
  s_scale = s_scale > DBL_MIN ? s_scale : DBL_MIN;
  double worst = 0;
  for (int64_t i = 0; i < T; ++i) {
    double v;
    if (r.free[i] != 0) {
      v = (r.s[i] < 0 ? -r.s[i] : 0.0) / s_scale;
    } else {  // w_i = (A s)_i + q_i: only the free columns of s are non-zero
      const double* row = A + i * T;  // s is exactly 0 off F: the dense products add exact zeros
      const double w = dot_chains(row, r.s, T) + r.q[i];
      double scale = r.u_scale[i] + abs_dot_chains(row, r.s, T);
      scale = scale > DBL_MIN ? scale : DBL_MIN;
      v = (w < 0 ? -w : 0.0) / scale;
    }
    v = v == v ? v : INFINITY;
    r.violation[i] = v;
    worst = v > worst ? v : worst;
  }
  return worst;
}

// Block principal pivoting with Murty's single-pivot fallback (reference: _pivot) for up to
// `steps` free sets from r.free; keeps the candidate with the smallest violation in r.best_s /
// best_violation; stops once it passes `tolerance`. True when the row is solved.
FASTMTL_HOST_DEVICE inline bool pivot(const double* A, int64_t T, const double* u, const RowScratch& r,
                                      int64_t steps, double tolerance, double& best_violation) {
  int64_t fewest = T + 1;  // fewest violations so far
  int64_t backup = kBackup;
  for (int64_t step = 0; step < steps; ++step) {
    const double violation = candidate_violation(A, T, u, r);
    if (violation < best_violation) {
      best_violation = violation;
      for (int64_t i = 0; i < T; ++i) r.best_s[i] = r.s[i];
    }
    if (best_violation <= tolerance) return true;
    int64_t count = 0, last = -1;
    for (int64_t i = 0; i < T; ++i) {
      if (r.violation[i] > tolerance) {
        ++count;
        last = i;
      }
    }
    const bool fewer = count < fewest;
    fewest = fewer ? count : fewest;
    const bool block = fewer || backup > 0;
    backup = fewer ? kBackup : (backup > 0 ? backup - 1 : 0);
    for (int64_t i = 0; i < T; ++i) {
      const bool flip = block ? r.violation[i] > tolerance : i == last;  // Murty: the largest violating index
      if (flip) r.free[i] = r.free[i] != 0 ? 0.0 : 1.0;
    }
  }
  return best_violation <= tolerance;
}

// (ds, dw) of the Newton system A ds - dw = -residual, W ds + S dw = S (rhs + residual): ds solves
// (A + S^-1 W) ds = rhs with the factor in r.factor, dw = A ds + residual. rhs is r.work
// (overwritten with ds, then copied to r.ds).
FASTMTL_HOST_DEVICE inline void newton_direction(const double* A, int64_t T, const RowScratch& r) {
  cholesky_solve_chains(r.factor, T, T, r.work);
  for (int64_t i = 0; i < T; ++i) r.ds[i] = r.work[i];
  for (int64_t i = 0; i < T; ++i) r.dw[i] = dot_chains(A + i * T, r.ds, T) + r.residual[i];
}

FASTMTL_HOST_DEVICE inline double mean_product(const double* x, const double* y, int64_t T) {
  return dot_chains(x, y, T) / static_cast<double>(T);
}

// The free-set guess {s > w} from kInteriorPointIterations Mehrotra predictor-corrector steps on
// w = A s + q, s, w > 0, s o w -> 0 from an infeasible start (reference: _interior_point_start).
// A step that fails (a failed factorisation, a non-finite or non-positive iterate) keeps the
// previous iterate; a failed factorisation would fail again on it, so the iterations end there.
FASTMTL_HOST_DEVICE inline void interior_point_start(const double* A, int64_t T, const RowScratch& r) {
  double size = 0;
  for (int64_t i = 0; i < T; ++i) size = std::fabs(r.q[i]) > size ? std::fabs(r.q[i]) : size;
  size = size > 0 ? size : 1.0;
  double mean_diagonal = 0;
  for (int64_t i = 0; i < T; ++i) mean_diagonal += A[i * T + i];
  mean_diagonal /= static_cast<double>(T);
  double* s = r.ipm_s;
  double* w = r.ipm_w;
  for (int64_t i = 0; i < T; ++i) s[i] = size;
  for (int64_t i = 0; i < T; ++i) {
    const double Asq = dot_chains(A + i * T, s, T) + r.q[i];
    w[i] = (Asq > 0 ? Asq : 0.0) + size * mean_diagonal;
  }
  for (int64_t iteration = 0; iteration < kInteriorPointIterations; ++iteration) {
    for (int64_t i = 0; i < T; ++i) r.residual[i] = dot_chains(A + i * T, s, T) + r.q[i] - w[i];
    const double mu = mean_product(s, w, T);
    for (int64_t e = 0; e < T * T; ++e) r.factor[e] = A[e];
    for (int64_t i = 0; i < T; ++i) r.factor[i * T + i] += w[i] / s[i];
    if (!cholesky_factor(r.factor, T, T, ChainedDot{})) break;
    // Predictor (affine scaling): rhs = -w - residual.
    for (int64_t i = 0; i < T; ++i) r.work[i] = -w[i] - r.residual[i];
    newton_direction(A, T, r);
    double step = step_to_boundary(s, r.ds, T);
    const double step_w = step_to_boundary(w, r.dw, T);
    step = step_w < step ? step_w : step;
    double mu_affine = 0;
    for (int64_t i = 0; i < T; ++i) mu_affine += (s[i] + step * r.ds[i]) * (w[i] + step * r.dw[i]);
    mu_affine /= static_cast<double>(T);
    const double ratio = mu_affine / mu;
    const double clamped = ratio < 0 ? 0.0 : (ratio > 1 ? 1.0 : ratio);  // NaN stays NaN, as torch.clamp
    const double sigma = clamped * clamped * clamped;
    // Corrector: rhs = (sigma mu - s w - ds dw) / s - residual, with the predictor's (ds, dw).
    for (int64_t i = 0; i < T; ++i) {
      r.work[i] = (sigma * mu - s[i] * w[i] - r.ds[i] * r.dw[i]) / s[i] - r.residual[i];
    }
    newton_direction(A, T, r);
    step = step_to_boundary(s, r.ds, T);
    const double corrected_w = step_to_boundary(w, r.dw, T);
    step = kStepFraction * (corrected_w < step ? corrected_w : step);
    bool ok = true;
    for (int64_t i = 0; i < T; ++i) {
      const double s_next = s[i] + step * r.ds[i], w_next = w[i] + step * r.dw[i];
      ok = ok && is_finite_value(s_next) && is_finite_value(w_next) && s_next > 0 && w_next > 0;
    }
    if (!ok) continue;
    for (int64_t i = 0; i < T; ++i) {
      s[i] += step * r.ds[i];
      w[i] += step * r.dw[i];
    }
  }
  for (int64_t i = 0; i < T; ++i) r.free[i] = s[i] > w[i] ? 1.0 : 0.0;
}

// One QP, min v^T A v s.t. v >= u, written to v; returns the smallest KKT violation reached
// (<= kkt_tolerance(T) when solved). A: T x T positive definite; scratch: RowScratch::size(T).
FASTMTL_HOST_DEVICE inline double solve_row(const double* A, int64_t T, const double* u, double* scratch, double* v) {
  const RowScratch r(scratch, T);
  const double tolerance = kkt_tolerance(T);
  for (int64_t i = 0; i < T; ++i) {
    const double* row = A + i * T;
    r.q[i] = dot_chains(row, u, T);
    r.u_scale[i] = abs_dot_chains(row, u, T);
    r.free[i] = r.q[i] < 0 ? 1.0 : 0.0;  // the tasks that conflict with u
    r.best_s[i] = 0;
  }
  double best_violation = INFINITY;
  if (!pivot(A, T, u, r, kFirstPivots, tolerance, best_violation)) {
    interior_point_start(A, T, r);
    pivot(A, T, u, r, cleanup_pivots(T), tolerance, best_violation);
  }
  // best_s is finite (a non-finite candidate is never kept); the clamp puts v exactly onto v >= u.
  for (int64_t i = 0; i < T; ++i) v[i] = u[i] + (r.best_s[i] > 0 ? r.best_s[i] : 0.0);
  return best_violation;
}

}  // namespace dual_cone

// The solver of the op fastmtl::dual_cone_weights(gram, U, norm_eps, reg_eps) -> V [m, T]: job r
// solves row r of U (row-major [m, T], float64). Each job builds its own A (T^2, as cheap as one
// matrix-vector product; jobs stay independent, as the runners need). A row u with a non-finite
// entry gives a NaN row.
struct DualConeSolver {
  const double* U;
  double norm_eps;
  double reg_eps;
  int64_t rows;

  FASTMTL_HOST_DEVICE int64_t scratch_size(int64_t T) const { return T * T + dual_cone::RowScratch::size(T); }
  FASTMTL_HOST_DEVICE int64_t out_size(int64_t T) const { return rows * T; }

  FASTMTL_HOST_DEVICE void operator()(const double* K, int64_t T, int64_t job, double* scratch, double* out) const {
    const double* u = U + job * T;
    double* v = out + job * T;
    if (!all_finite_values(u, T)) {
      for (int64_t i = 0; i < T; ++i) v[i] = NAN;
      return;
    }
    double* A = scratch;
    dual_cone::regularised_gram(K, T, norm_eps, reg_eps, A);
    dual_cone::solve_row(A, T, u, scratch + T * T, v);
  }
};

}  // namespace fastmtl
