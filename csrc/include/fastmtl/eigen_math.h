#pragma once
// Symmetric eigen-decomposition K = V diag(lambda) V^T of a small T x T float64 matrix, for the
// spectral Gram-space solvers (IMTL-G's pseudo-inverse, Aligned-MTL's whitening). Plain C++ shared
// by the CPU kernels and the CUDA kernels (one thread runs one decomposition): no libtorch, no
// allocation, no recursion, and no error to report, so nothing has to go back to the host (torch's
// eigh / pinv check LAPACK's info on the host).
//
// Algorithm: the cyclic Jacobi method (Jacobi 1846; Golub & Van Loan, "Matrix Computations",
// 4th ed., §8.5.2-8.5.3), with the rotations in Rutishauser's form (Rutishauser 1971, Handbook
// for Automatic Computation II/1): t = tan(angle) is the smaller root of t^2 + 2 theta t - 1 = 0,
// so |angle| <= pi/4 and the updates a' = a - s (b + tau a) add a small correction to each entry
// instead of recombining two large ones. Jacobi is backward stable: each rotation perturbs A by
// O(u) ||A||, a sweep by O(T u) ||A||, and the sweeps stop once every off-diagonal entry is below
// u ||A||_F / T, so each eigenvalue is within O(T u) ||K||_2 of the exact one (Weyl's theorem),
// which is what the rank cuts of the solvers (T eps lambda_max) assume. Zero entries are never
// rotated: an exactly zero row of K (a zero gradient) keeps an eigenvalue exactly 0.
//
// Cost: ~6 T^3 flops per sweep, quadratic convergence once the off-diagonal part is small (about
// 5-8 sweeps for random Gram matrices, fewer for nearly diagonal ones).
#include <cmath>
#include <cstdint>

#include "fastmtl/macros.h"

namespace fastmtl {

// Upper bound on the sweeps: convergence is quadratic (Schönhage 1961, van Kempen 1966), and
// ~10 sweeps suffice in double precision for any T met here; the bound only guarantees
// termination (e.g. if rounding stalled an entry just above the threshold).
constexpr int kJacobiMaxSweeps = 50;

// The float64 values of scratch symmetric_eigen needs beyond A: V.
FASTMTL_HOST_DEVICE inline int64_t symmetric_eigen_scratch(int64_t T) { return T * T; }

namespace eigen_detail {

// Largest |a_ij| of the lower triangle (the part that is read).
FASTMTL_HOST_DEVICE inline double max_abs_lower(const double* A, int64_t T) {
  double largest = 0;
  for (int64_t i = 0; i < T; ++i) {
    for (int64_t j = 0; j <= i; ++j) largest = std::fmax(largest, std::fabs(A[i * T + j]));
  }
  return largest;
}

// (x, y) <- (c x - s y, s x + c y) in Rutishauser's form (c = 1 - s tau): a small correction to
// each entry rather than a recombination of two large ones.
FASTMTL_HOST_DEVICE inline void rotate_rows(double* x, double* y, int64_t n, double s, double tau) {
  for (int64_t k = 0; k < n; ++k) {
    const double a = x[k], b = y[k];
    x[k] = a - s * (b + tau * a);
    y[k] = b + s * (a - tau * b);
  }
}

// A <- J^T A J, V <- V J for the rotation J in the (p, q) plane that zeroes a_pq (p < q).
// A is kept full (both triangles); V is stored transposed (row k = eigenvector k) so that its
// update walks two contiguous rows.
FASTMTL_HOST_DEVICE inline void jacobi_rotate(double* A, double* Vt, int64_t T, int64_t p, int64_t q) {
  const double apq = A[p * T + q];
  const double theta = (A[q * T + q] - A[p * T + p]) / (2 * apq);
  // sqrt(1 + theta^2) without overflow: theta can reach ~1/u^2 when a_pq is barely above the
  // threshold, where 1 + theta^2 == theta^2.
  const double abs_theta = std::fabs(theta);
  const double root = abs_theta < 1e150 ? std::sqrt(1 + theta * theta) : abs_theta;
  const double t = (theta >= 0 ? 1.0 : -1.0) / (abs_theta + root);
  const double c = 1 / std::sqrt(1 + t * t);
  const double s = t * c;
  const double tau = s / (1 + c);
  const double app = A[p * T + p] - t * apq, aqq = A[q * T + q] + t * apq;
  // Columns p and q of J^T A J equal its rows p and q (symmetry): rotate the two contiguous rows
  // (one vectorisable loop), then mirror them into the columns and set the 2 x 2 block exactly.
  rotate_rows(A + p * T, A + q * T, T, s, tau);
  for (int64_t k = 0; k < T; ++k) {
    A[k * T + p] = A[p * T + k];
    A[k * T + q] = A[q * T + k];
  }
  A[p * T + p] = app;
  A[q * T + q] = aqq;
  A[p * T + q] = 0;
  A[q * T + p] = 0;
  rotate_rows(Vt + p * T, Vt + q * T, T, s, tau);
}

}  // namespace eigen_detail

// Eigen-decomposition of the symmetric T x T matrix in A (row-major, leading dimension T; only
// its lower triangle is read, as torch.linalg.eigh does): on return lambda[k] is the k-th
// eigenvalue (in no particular order) and row k of Vt (T x T) its unit eigenvector. A is
// overwritten (it ends nearly diagonal). A must be finite (the callers' runner checks K first).
FASTMTL_HOST_DEVICE inline void symmetric_eigen(double* A, int64_t T, double* Vt, double* lambda) {
  for (int64_t i = 0; i < T; ++i) {
    for (int64_t j = 0; j < T; ++j) Vt[i * T + j] = i == j ? 1.0 : 0.0;
  }
  // Scale by a power of two so that max |a_ij| is in [0.5, 1): exact (no rounding), and ||A||_F^2
  // can neither overflow (gradients ~1e150 give K ~1e300) nor underflow (~1e-150 give ~1e-300).
  const double largest = eigen_detail::max_abs_lower(A, T);
  if (largest == 0) {  // the zero matrix: every eigenvalue 0, any basis (the identity)
    for (int64_t k = 0; k < T; ++k) lambda[k] = 0;
    return;
  }
  int exponent = 0;
  std::frexp(largest, &exponent);
  double frobenius_squared = 0;
  for (int64_t i = 0; i < T; ++i) {
    for (int64_t j = 0; j <= i; ++j) {
      const double value = std::ldexp(A[i * T + j], -exponent);
      A[i * T + j] = value;
      A[j * T + i] = value;
      frobenius_squared += (i == j ? 1.0 : 2.0) * value * value;
    }
  }
  // Off-diagonal entries below u ||A||_F / T are left alone: all of them together then perturb
  // the eigenvalues by at most ||off(A)||_F <= u ||A||_F (Weyl). Rotations preserve ||A||_F.
  const double threshold = std::sqrt(frobenius_squared) * (0x1p-53 / static_cast<double>(T));
  for (int sweep = 0; sweep < kJacobiMaxSweeps; ++sweep) {
    bool rotated = false;
    for (int64_t p = 0; p + 1 < T; ++p) {
      for (int64_t q = p + 1; q < T; ++q) {
        if (std::fabs(A[p * T + q]) > threshold) {
          eigen_detail::jacobi_rotate(A, Vt, T, p, q);
          rotated = true;
        }
      }
    }
    if (!rotated) break;
  }
  for (int64_t k = 0; k < T; ++k) lambda[k] = std::ldexp(A[k * T + k], exponent);
}

}  // namespace fastmtl
