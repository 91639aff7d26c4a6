#pragma once
// MGDA (Désidéri 2012; Sener & Koltun 2018, Alg. 2) in Gram space: the minimum-norm point of the
// convex hull of the task gradients, min_a a^T K a over the simplex, by Frank-Wolfe from the
// uniform point with the exact line search. The same steps as the reference
// python/fastmtl/methods/gram_space.py (mgda_weights): it stops after the first step whose gamma
// falls below epsilon (a kernel may branch on its own data: no host is involved).
// Solver interface: csrc/cpu/small_solve_cpu.h.
#include <cstdint>

#include "fastmtl/dense_math.h"
#include "fastmtl/macros.h"

namespace fastmtl {

struct MgdaSolver {
  int64_t max_iters;
  double epsilon;

  FASTMTL_HOST_DEVICE int64_t scratch_size(int64_t T) const { return T; }  // K alpha
  FASTMTL_HOST_DEVICE int64_t out_size(int64_t T) const { return T; }      // alpha

  FASTMTL_HOST_DEVICE void operator()(const double* K, int64_t T, int64_t /*job*/, double* K_alpha,
                                      double* alpha) const {
    for (int64_t k = 0; k < T; ++k) alpha[k] = 1.0 / static_cast<double>(T);
    for (int64_t iteration = 0; iteration < max_iters; ++iteration) {
      // K alpha afresh each step (not updated: rounding does not accumulate over the steps).
      matvec(K, T, T, alpha, K_alpha);
      int64_t t = 0;  // the vertex with the smallest g_t . g_alpha; ties to the lowest index
      for (int64_t k = 1; k < T; ++k) t = K_alpha[k] < K_alpha[t] ? k : t;
      const double a = K_alpha[t];            // alpha^T K e_t
      const double b = dot(alpha, K_alpha, T);  // alpha^T K alpha
      const double c = K[t * T + t];          // e_t^T K e_t
      // Exact line search on the segment [alpha, e_t], clipped to [0, 1].
      const double curvature = b + c - 2 * a;
      const double gamma = c <= a ? 1.0 : (b <= a ? 0.0 : (b - a) / (curvature > 0 ? curvature : 1.0));
      for (int64_t k = 0; k < T; ++k) alpha[k] = (1 - gamma) * alpha[k] + (k == t ? gamma : 0.0);
      if (gamma < epsilon) break;
    }
  }
};

}  // namespace fastmtl
