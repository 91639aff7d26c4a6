#pragma once
// Small dense float64 linear algebra for the T x T solvers (T up to a few hundred): Cholesky on
// row-major matrices with a leading dimension, products, the finiteness of a vector. Plain C++ shared by
// the CPU kernels and the CUDA kernels (one thread runs one solve), no libtorch, so CTest checks
// it alone. Every routine reports failure (a non-positive or zero pivot, or a non-finite one)
// instead of dividing by it: the solvers then keep their previous iterate.
#include <cmath>
#include <cstdint>

#include "fastmtl/finite.h"
#include "fastmtl/macros.h"

namespace fastmtl {

// Sum of x_k y_k, k < n, in index order (strides in elements).
FASTMTL_HOST_DEVICE inline double dot(const double* x, const double* y, int64_t n, int64_t x_stride = 1,
                                      int64_t y_stride = 1) {
  double total = 0;
  for (int64_t k = 0; k < n; ++k) total += x[k * x_stride] * y[k * y_stride];
  return total;
}

// y = A x for the n x n row-major A (leading dimension lda).
FASTMTL_HOST_DEVICE inline void matvec(const double* A, int64_t n, int64_t lda, const double* x, double* y) {
  for (int64_t i = 0; i < n; ++i) y[i] = dot(A + i * lda, x, n);
}

// x^T A x.
FASTMTL_HOST_DEVICE inline double quadratic_form(const double* A, int64_t n, int64_t lda, const double* x) {
  double total = 0;
  for (int64_t i = 0; i < n; ++i) total += x[i] * dot(A + i * lda, x, n);
  return total;
}

// dot in index order, as a function object: the default inner product of cholesky_factor.
struct OrderedDot {
  FASTMTL_HOST_DEVICE double operator()(const double* x, const double* y, int64_t n) const { return dot(x, y, n); }
};

// In-place Cholesky A = L L^T of the symmetric n x n A (lower triangle read and overwritten with
// L; the strict upper triangle is left alone). False when a pivot is not positive and finite
// (A not numerically positive definite): A is then partly overwritten. ``inner`` computes the
// inner products (any summation order keeps the factorisation backward stable, Higham Thm 10.3;
// dual_cone_math.h passes one with eight addition chains).
template <typename Dot = OrderedDot>
FASTMTL_HOST_DEVICE inline bool cholesky_factor(double* A, int64_t n, int64_t lda, Dot inner = Dot()) {
  for (int64_t j = 0; j < n; ++j) {
    double* row_j = A + j * lda;
    const double pivot = row_j[j] - inner(row_j, row_j, j);
    if (!(pivot > 0) || !(pivot - pivot == 0)) return false;  // also NaN / Inf
    const double root = std::sqrt(pivot);
    row_j[j] = root;
    for (int64_t i = j + 1; i < n; ++i) {
      double* row_i = A + i * lda;
      row_i[j] = (row_i[j] - inner(row_i, row_j, j)) / root;
    }
  }
  return true;
}

// Solve L L^T x = b in place (b becomes x) with the factor from cholesky_factor.
FASTMTL_HOST_DEVICE inline void cholesky_solve(const double* L, int64_t n, int64_t lda, double* b) {
  for (int64_t i = 0; i < n; ++i) b[i] = (b[i] - dot(L + i * lda, b, i)) / L[i * lda + i];
  for (int64_t i = n - 1; i >= 0; --i) {
    double total = b[i];
    for (int64_t k = i + 1; k < n; ++k) total -= L[k * lda + i] * b[k];
    b[i] = total / L[i * lda + i];
  }
}

// True when every one of the n values is finite.
FASTMTL_HOST_DEVICE inline bool all_finite_values(const double* x, int64_t n) {
  bool finite = true;
  for (int64_t k = 0; k < n; ++k) finite = finite && is_finite_value(x[k]);
  return finite;
}

}  // namespace fastmtl
