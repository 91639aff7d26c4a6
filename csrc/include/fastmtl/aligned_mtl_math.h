#pragma once
// Aligned-MTL (Senushkin et al. 2023, "Independent Component Alignment for Multi-Task Learning",
// CVPR, Alg. 1) in Gram space. With K = V diag(lambda) V^T restricted to its numerical rank
// (lambda_k > T eps lambda_max, as the reference and torchjd), the aligned gradients are
// B^T G with B = sqrt(scale) V diag(lambda^-1/2) V^T: the principal components of the task
// gradients rescaled to a common size sqrt(scale), the smallest ("min"), lower-median ("median",
// torch.median's convention) or mean ("rmse") kept eigenvalue. The weights are B (1/T) (torchjd's
// preference vector: the mean). Nothing kept (K = 0): B = I, the plain mean. The same maths as the
// reference python/fastmtl/methods/gram_space.py (aligned_mtl_weights).
// Solver interface: csrc/cpu/small_solve_cpu.h. Eigen-decomposition: fastmtl/eigen_math.h.
#include <cfloat>
#include <cmath>
#include <cstdint>

#include "fastmtl/dense_math.h"
#include "fastmtl/eigen_math.h"
#include "fastmtl/macros.h"

namespace fastmtl {

enum class AlignedScale : int { kMin = 0, kMedian = 1, kRmse = 2 };

namespace aligned_detail {

// The lower median of the n values (sorted in place by insertion: n is small).
FASTMTL_HOST_DEVICE inline double lower_median(double* values, int64_t n) {
  for (int64_t i = 1; i < n; ++i) {
    const double value = values[i];
    int64_t j = i;
    for (; j > 0 && values[j - 1] > value; --j) values[j] = values[j - 1];
    values[j] = value;
  }
  return values[(n - 1) / 2];
}

}  // namespace aligned_detail

struct AlignedMtlSolver {
  AlignedScale scale_mode;

  // Scratch: K (destroyed by the decomposition), its eigenvectors (and the decomposition's
  // workspace), its eigenvalues, and the kept eigenvalues (for the median).
  FASTMTL_HOST_DEVICE int64_t scratch_size(int64_t T) const { return T * T + symmetric_eigen_scratch(T) + 2 * T; }
  FASTMTL_HOST_DEVICE int64_t out_size(int64_t T) const { return T; }  // w

  FASTMTL_HOST_DEVICE void operator()(const double* K, int64_t T, int64_t /*job*/, double* scratch,
                                      double* w) const {
    double* A = scratch;
    double* Vt = A + T * T;
    double* lambda = Vt + symmetric_eigen_scratch(T);
    double* work = lambda + T;
    for (int64_t e = 0; e < T * T; ++e) A[e] = K[e];
    symmetric_eigen(A, T, Vt, lambda);
    double lambda_max = lambda[0];
    for (int64_t k = 1; k < T; ++k) lambda_max = std::fmax(lambda_max, lambda[k]);
    const double cut = lambda_max * static_cast<double>(T) * DBL_EPSILON;
    const double mean_weight = 1.0 / static_cast<double>(T);
    int64_t kept = 0;
    double smallest = INFINITY, total = 0;
    for (int64_t k = 0; k < T; ++k) {
      if (!(lambda[k] > cut)) continue;
      smallest = std::fmin(smallest, lambda[k]);
      total += lambda[k];
      work[kept++] = lambda[k];
    }
    if (kept == 0) {  // rank 0: the identity, i.e. the plain mean
      for (int64_t i = 0; i < T; ++i) w[i] = mean_weight;
      return;
    }
    double scale = smallest;
    if (scale_mode == AlignedScale::kMedian) scale = aligned_detail::lower_median(work, kept);
    if (scale_mode == AlignedScale::kRmse) scale = total / static_cast<double>(kept);
    const double root_scale = std::sqrt(std::fmax(scale, 0.0));
    // w = sqrt(scale) sum over kept k of lambda_k^-1/2 (V_k . 1/T) V_k.
    for (int64_t i = 0; i < T; ++i) w[i] = 0;
    for (int64_t k = 0; k < T; ++k) {
      if (!(lambda[k] > cut)) continue;
      double projection = 0;
      for (int64_t i = 0; i < T; ++i) projection += Vt[k * T + i];
      const double coefficient = root_scale * (projection * mean_weight) / std::sqrt(lambda[k]);
      for (int64_t i = 0; i < T; ++i) w[i] += coefficient * Vt[k * T + i];
    }
  }
};

}  // namespace fastmtl
