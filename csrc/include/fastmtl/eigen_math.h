#pragma once
// Symmetric eigen-decomposition K = V diag(lambda) V^T of a small T x T float64 matrix, for the
// spectral Gram-space solvers (IMTL-G's pseudo-inverse, Aligned-MTL's whitening). Plain C++ shared
// by the CPU kernels and the CUDA kernels (one thread runs one decomposition): no libtorch, no
// allocation, no recursion, and no error to report, so nothing has to go back to the host (torch's
// eigh / pinv check LAPACK's info on the host).
//
// Algorithm (Golub & Van Loan, "Matrix Computations", 4th ed., §8.3):
//   1. Rows and columns whose off-diagonal entries are all exactly zero (a zero gradient, or a task
//      orthogonal to all the others) are eigenvectors already: they are set aside and the rest is
//      packed into an m x m matrix, so such a row keeps its eigenvalue exactly (0 for a zero task)
//      and a diagonal K is returned exactly.
//   2. Householder tridiagonalisation A = Q T Q^T (§8.3.1, Alg. 8.3.1), Q^T accumulated backwards.
//   3. The implicit symmetric QR algorithm with Wilkinson shifts on T (§8.3.3-8.3.5, Alg. 8.3.2-
//      8.3.3): bulge-chasing Givens rotations, each also applied to the rows of V^T.
// Every step is an orthogonal similarity computed backward stably: the computed eigenpairs are
// exact for K + E with ||E||_F = O(T u ||K||_F) (§8.3.6), plus the dropped subdiagonal entries,
// each below max(u (|d_i| + |d_i+1|), u ||K||_F / T). So each eigenvalue is within O(T u) ||K|| of
// the exact one (Weyl's theorem), which is what the rank cuts of the solvers (T eps lambda_max)
// assume.
//
// Cost: ~2 m^3 flops to tridiagonalise (both triangles updated, so that every loop walks a
// contiguous row), ~4/3 m^3 to form Q, ~6 m^3 for the QR steps with the eigenvectors (about 2 steps
// per eigenvalue, 1.5 on rank-deficient K: cubic convergence), against ~6 T^3 per sweep over 5-9 sweeps for the cyclic
// Jacobi method this replaced. One CPU thread, random Gram matrices: ~0.6 us at T = 4, ~10 us at
// T = 16, ~250 us at T = 64 (Jacobi: 0.8, 30, 1270 us), about a fifth of it tridiagonalising, a
// sixth forming Q, the rest in the QR steps (mostly rotating the rows of V^T).
#include <cfloat>
#include <cmath>
#include <cstdint>

#include "fastmtl/macros.h"

namespace fastmtl {

// The float64 values of scratch symmetric_eigen needs beyond A and lambda: V^T (T x T) first,
// then 2 T values of workspace.
FASTMTL_HOST_DEVICE inline int64_t symmetric_eigen_scratch(int64_t T) { return T * T + 2 * T; }

// Upper bound on the QR steps, per row of the packed matrix: about 2 steps per eigenvalue are
// needed (cubic convergence with the Wilkinson shift); the bound only guarantees termination.
constexpr int64_t kQrMaxStepsPerRow = 30;

namespace eigen_detail {

// A column of the (scaled, max |a_ij| in [0.5, 1)) matrix whose entries under the subdiagonal are
// all at most 2^-500 counts as reduced (they are dropped): a perturbation far below u ||A|| >=
// 2^-54, and a reflector is only formed when its largest square is a normal number (>= 2^-1000),
// the smaller squares' underflow then costing less than u relative. Without it, a rank-deficient
// K, whose trailing block shrinks geometrically from step to step (~u, ~u^2, ...), reaches squares
// that all underflow to 0 and a reflector scaled by 2 / 0.
constexpr double kNegligibleEntry = 0x1p-500;

// Largest |a_ij| of the lower triangle (the part that is read).
FASTMTL_HOST_DEVICE inline double max_abs_lower(const double* A, int64_t T) {
  double largest = 0;
  for (int64_t i = 0; i < T; ++i) {
    for (int64_t j = 0; j <= i; ++j) largest = std::fmax(largest, std::fabs(A[i * T + j]));
  }
  return largest;
}

// Householder tridiagonalisation (Golub & Van Loan Alg. 8.3.1) of the symmetric n x n matrix A
// (row-major, leading dimension n, both triangles stored): A = Q T Q^T with Q = H_0 ... H_{n-3}.
// On return the diagonal of T is the diagonal of A and its subdiagonal is A[k+1][k]; row k of A,
// columns k+1..n-1, holds u_k with H_k = I - u_k u_k^T (|u_k|^2 = 2, or u_k = 0 for H_k = I),
// acting on the indices k+1..n-1. p: n values of workspace.
FASTMTL_HOST_DEVICE inline void tridiagonalise(double* A, int64_t n, double* p) {
  for (int64_t k = 0; k + 2 < n; ++k) {
    // x = column k below the diagonal = row k right of it (symmetry; contiguous). u overwrites x.
    double* u = A + k * n + k + 1;
    const int64_t m = n - k - 1;
    double tail = 0, tail_max = 0;  // |x_1..|^2, max |x_1..|
    for (int64_t i = 1; i < m; ++i) {
      tail += u[i] * u[i];
      tail_max = std::fmax(tail_max, std::fabs(u[i]));
    }
    const double alpha = u[0];
    if (tail_max <= kNegligibleEntry) {  // tridiagonal in this column: H_k = I, the subdiagonal is alpha
      for (int64_t i = 0; i < m; ++i) u[i] = 0;
      continue;
    }
    // H x = -sign(alpha) |x| e_1 with v = x + sign(alpha) |x| e_1 (no cancellation in v_0),
    // H = I - 2 v v^T / |v|^2 = I - u u^T, u = v sqrt(2 / |v|^2), |v|^2 = v_0^2 + tail.
    const double norm = std::sqrt(alpha * alpha + tail);
    const double v0 = alpha + std::copysign(norm, alpha);
    const double scale = std::sqrt(2 / (v0 * v0 + tail));
    u[0] = v0 * scale;
    for (int64_t i = 1; i < m; ++i) u[i] *= scale;
    A[(k + 1) * n + k] = -std::copysign(norm, alpha);
    // B <- H B H = B - u w^T - w u^T for the trailing block B (rows/columns k+1..n-1), with
    // p = B u and w = p - (u.p / 2) u.
    double* B = A + (k + 1) * n + (k + 1);
    double up = 0;
    for (int64_t i = 0; i < m; ++i) {
      const double* row = B + i * n;
      double total = 0;
      for (int64_t j = 0; j < m; ++j) total += row[j] * u[j];
      p[i] = total;
      up += u[i] * total;
    }
    const double half = up / 2;
    for (int64_t i = 0; i < m; ++i) p[i] -= half * u[i];  // p is now w
    for (int64_t i = 0; i < m; ++i) {
      double* row = B + i * n;
      const double ui = u[i], wi = p[i];
      for (int64_t j = 0; j < m; ++j) row[j] -= ui * p[j] + wi * u[j];
    }
  }
}

// Vt <- Q^T = H_{n-3} ... H_0 (row-major n x n) from the vectors tridiagonalise left in A, by
// backward accumulation (Golub & Van Loan §5.1.6): Q = H_0 (H_1 (... H_{n-3})), whose columns,
// the rows of Vt, are contiguous, and each H_k only touches indices k+1..n-1.
FASTMTL_HOST_DEVICE inline void accumulate_q(const double* A, int64_t n, double* Vt) {
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) Vt[i * n + j] = i == j ? 1.0 : 0.0;
  }
  for (int64_t k = n - 3; k >= 0; --k) {
    const double* u = A + k * n + k + 1;
    const int64_t m = n - k - 1;
    if (u[0] == 0) continue;  // H_k = I (u_0 >= |v_0| sqrt(2/|v|^2) > 0 otherwise)
    for (int64_t c = k + 1; c < n; ++c) {
      double* column = Vt + c * n + k + 1;  // column c of Q, rows k+1..n-1
      double projection = 0;
      for (int64_t i = 0; i < m; ++i) projection += u[i] * column[i];
      for (int64_t i = 0; i < m; ++i) column[i] -= projection * u[i];
    }
  }
}

// (x, y) <- (c x + s y, c y - s x): rows k and k+1 of Vt under a rotation of the tridiagonal.
FASTMTL_HOST_DEVICE inline void rotate_rows(double* x, double* y, int64_t n, double c, double s) {
  for (int64_t j = 0; j < n; ++j) {
    const double a = x[j], b = y[j];
    x[j] = c * a + s * b;
    y[j] = c * b - s * a;
  }
}

// (c, s, r) with c x + s z = r, c z - s x = 0, c^2 + s^2 = 1; scaled so that neither squaring
// can underflow or overflow. x = z = 0 gives the identity.
FASTMTL_HOST_DEVICE inline void givens(double x, double z, double& c, double& s, double& r) {
  const double big = std::fmax(std::fabs(x), std::fabs(z));
  if (big == 0) {
    c = 1;
    s = 0;
    r = 0;
    return;
  }
  const double xs = x / big, zs = z / big;
  const double root = std::sqrt(xs * xs + zs * zs);
  c = xs / root;
  s = zs / root;
  r = big * root;
}

// One implicit symmetric QR step with the Wilkinson shift (Golub & Van Loan Alg. 8.3.2) on the
// unreduced block lo..hi of the tridiagonal (d, e), e[k] = T[k+1][k]: T <- R T R^T for the
// product R of the bulge-chasing rotations, and Vt <- R Vt (ld n).
FASTMTL_HOST_DEVICE inline void qr_step(double* d, double* e, int64_t lo, int64_t hi, double* Vt, int64_t n) {
  // The eigenvalue of the trailing 2 x 2 block nearer d[hi], in the cancellation-free form.
  const double half_gap = (d[hi - 1] - d[hi]) / 2, f = e[hi - 1];
  const double big = std::fmax(std::fabs(half_gap), std::fabs(f));
  const double hypotenuse = big * std::sqrt((half_gap / big) * (half_gap / big) + (f / big) * (f / big));
  const double shift = d[hi] - f * (f / (half_gap + std::copysign(hypotenuse, half_gap)));
  double x = d[lo] - shift, z = e[lo];
  for (int64_t k = lo; k < hi; ++k) {
    double c, s, r;
    givens(x, z, c, s, r);
    if (k > lo) e[k - 1] = r;  // the bulge z at (k+1, k-1) is rotated into (k, k-1)
    const double a = d[k], b = d[k + 1], g = e[k];
    const double cs2g = 2 * c * s * g;
    d[k] = c * c * a + s * s * b + cs2g;
    d[k + 1] = s * s * a + c * c * b - cs2g;
    e[k] = c * s * (b - a) + (c * c - s * s) * g;
    if (k + 1 < hi) {  // row k+2 meets the rotation in column k: the new bulge
      x = e[k];
      z = s * e[k + 1];
      e[k + 1] *= c;
    }
    rotate_rows(Vt + k * n, Vt + (k + 1) * n, n, c, s);
  }
}

// Eigenvalues d and eigenvector rows Vt (entering as Q^T) of the n x n tridiagonal (d, e) by the
// shifted QR algorithm (Golub & Van Loan Alg. 8.3.3). A subdiagonal entry is dropped once it is
// below u (|d_k| + |d_k+1|) (the textbook's test) or below `absolute_floor` (an absolute u ||A||_F / n:
// all of them together then perturb the eigenvalues by at most u ||A||_F).
FASTMTL_HOST_DEVICE inline void tridiagonal_qr(double* d, double* e, int64_t n, double* Vt, double absolute_floor) {
  int64_t hi = n - 1;
  int64_t steps = 0;
  const auto negligible = [&](int64_t k) {  // e[k], between d[k] and d[k+1]
    const double size = std::fabs(e[k]);
    return size <= absolute_floor || size <= (DBL_EPSILON / 2) * (std::fabs(d[k]) + std::fabs(d[k + 1]));
  };
  while (hi > 0) {
    if (negligible(hi - 1)) {  // d[hi] has converged
      e[hi - 1] = 0;
      --hi;
      continue;
    }
    int64_t lo = hi - 1;  // the unreduced block lo..hi ending at hi
    while (lo > 0 && !negligible(lo - 1)) --lo;
    if (lo > 0) e[lo - 1] = 0;
    if (steps++ >= kQrMaxStepsPerRow * n) break;
    qr_step(d, e, lo, hi, Vt, n);
  }
}

}  // namespace eigen_detail

// Eigen-decomposition of the symmetric T x T matrix in A (row-major, leading dimension T; only
// its lower triangle is read, as torch.linalg.eigh does): on return lambda[k] is the k-th
// eigenvalue (in no particular order, except that a row with no nonzero off-diagonal entry keeps
// its index: lambda[i] = a_ii, eigenvector e_i) and row k of Vt its unit eigenvector. Vt has room
// for symmetric_eigen_scratch(T) values (V^T, then workspace). A is overwritten. A must be finite
// (the callers' runner checks K first).
FASTMTL_HOST_DEVICE inline void symmetric_eigen(double* A, int64_t T, double* Vt, double* lambda) {
  double* active = Vt + T * T;  // 1 for the rows that take part, 0 for the ones set aside
  double* work = active + T;
  // Scale by a power of two so that max |a_ij| is in [0.5, 1): exact except for entries that
  // become subnormal (below 2^-1022 max|A|, far under the rounding of the result), and ||A||_F^2
  // can neither overflow (gradients ~1e150 give K ~1e300) nor underflow (~1e-150 give ~1e-300).
  int exponent = 0;
  std::frexp(eigen_detail::max_abs_lower(A, T), &exponent);  // 0 for the zero matrix
  double frobenius_squared = 0;
  for (int64_t i = 0; i < T; ++i) {
    for (int64_t j = 0; j <= i; ++j) {
      const double value = std::ldexp(A[i * T + j], -exponent);
      A[i * T + j] = value;
      A[j * T + i] = value;
      frobenius_squared += (i == j ? 1.0 : 2.0) * value * value;
    }
  }
  // Rows with no nonzero off-diagonal entry are eigenvectors: eigenvalue a_ii, exactly.
  int64_t m = 0;
  for (int64_t i = 0; i < T; ++i) {
    bool isolated = true;
    for (int64_t j = 0; j < T; ++j) isolated = isolated && (j == i || A[i * T + j] == 0);
    active[i] = isolated ? 0.0 : 1.0;
    if (isolated) lambda[i] = std::ldexp(A[i * T + i], exponent);
    m += isolated ? 0 : 1;
  }
  // Pack the other rows and columns into the leading m x m block (leading dimension m), in place:
  // in row-major order every entry moves to a position at or before its own, never onto one not
  // yet read.
  if (m < T) {
    int64_t packed = 0;
    for (int64_t i = 0; i < T; ++i) {
      if (active[i] == 0) continue;
      for (int64_t j = 0; j < T; ++j) {
        if (active[j] != 0) A[packed++] = A[i * T + j];
      }
    }
  }
  if (m > 0) {
    eigen_detail::tridiagonalise(A, m, work);
    eigen_detail::accumulate_q(A, m, Vt);
    // d into work, e into A[0..m-2] (A's entries are no longer needed; e[k] = A[k+1][k] lies at
    // or after position k).
    for (int64_t k = 0; k < m; ++k) work[k] = A[k * m + k];
    for (int64_t k = 0; k + 1 < m; ++k) A[k] = A[(k + 1) * m + k];
    const double absolute_floor = std::sqrt(frobenius_squared) * ((DBL_EPSILON / 2) / static_cast<double>(m));
    eigen_detail::tridiagonal_qr(work, A, m, Vt, absolute_floor);
  }
  if (m == T) {
    for (int64_t k = 0; k < T; ++k) lambda[k] = std::ldexp(work[k], exponent);
    return;
  }
  // Unpack: the packed eigenpair j goes to the j-th active index r, its vector's entries to the
  // active columns. Backwards, in place: every write lands at or after the entry being read and
  // after every entry still to be read.
  int64_t j = m - 1;
  for (int64_t r = T - 1; r >= 0; --r) {
    double* row = Vt + r * T;
    if (active[r] == 0) {
      for (int64_t c = 0; c < T; ++c) row[c] = c == r ? 1.0 : 0.0;
      continue;
    }
    lambda[r] = std::ldexp(work[j], exponent);
    int64_t i = m - 1;
    for (int64_t c = T - 1; c >= 0; --c) row[c] = active[c] != 0 ? Vt[j * m + i--] : 0.0;
    --j;
  }
}

}  // namespace fastmtl
