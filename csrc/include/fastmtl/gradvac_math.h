#pragma once
// GradVac (Wang et al. 2021, "Gradient Vaccine", Alg. 1) in Gram space, exact: task i keeps
// g_i^PC = sum_k c_k g_k (c starts at e_i) and v = c K (v_j = g_i^PC . g_j). For each j != i in
// task i's order, with phi = cos(g_i^PC, g_j) = v_j / (|g_i^PC| |g_j| + eps) and the target
// phi_hat = targets[i][j] (an EMA of the cosines seen):
//   if phi < phi_hat:  c_j += |g_i^PC| (phi_hat sqrt(1-phi^2) - phi sqrt(1-phi_hat^2))
//                             / (|g_j| sqrt(1-phi_hat^2) + eps),   v += that * K_j
//   targets[i][j] = (1 - beta) phi_hat + beta phi.
// The same steps as the reference python/fastmtl/methods/gradvac.py (gradvac_step), where every
// task advances together; the tasks are independent, so here one job is one task (its
// coefficient row and its targets row). The weights, w = sum_i c_i (the update sum_i g_i^PC =
// w . G), are summed by the caller over the [T, T] coefficient block, so no job writes another's
// output: on the CPU in task index order (the bits do not depend on the thread count), on the
// GPU by a torch sum (deterministic, but its own summation order).
// Order entries equal to i or outside [0, T) are skipped, as in PCGrad (surgery_math.h): a raw
// op call with a bad order can never read out of bounds, and no device value is checked on the
// host.
// Solver interface: csrc/cpu/small_solve_cpu.h.
#include <cmath>
#include <cstdint>

#include "fastmtl/dense_math.h"
#include "fastmtl/macros.h"

namespace fastmtl {

struct GradVacSolver {
  const double* targets;  // [T, T] row-major, the EMA of the pair cosines before this step
  const int64_t* order;   // [T, T] row-major, row i = task i's order; nullptr: index order
  double beta;            // EMA rate of the targets, in [0, 1]
  double eps;             // > 0, keeps the cosine and the step finite for zero gradients

  FASTMTL_HOST_DEVICE int64_t scratch_size(int64_t T) const { return T; }  // v = c K
  // out = [updated targets, row i of job i: T x T | coefficients c_i, row i of job i: T x T]
  // (the targets first: the op returns them as a view at storage offset 0, as its fake kernel).
  FASTMTL_HOST_DEVICE int64_t out_size(int64_t T) const { return 2 * T * T; }

  FASTMTL_HOST_DEVICE void operator()(const double* K, int64_t T, int64_t i, double* v, double* out) const {
    double* target_row = out + i * T;
    double* c = out + T * T + i * T;
    for (int64_t k = 0; k < T; ++k) {
      c[k] = k == i ? 1.0 : 0.0;
      v[k] = K[i * T + k];
      target_row[k] = targets[i * T + k];
    }
    const int64_t* order_row = order ? order + i * T : nullptr;
    for (int64_t step = 0; step < T; ++step) {
      const int64_t j = order_row ? order_row[step] : step;
      if (j == i || j < 0 || j >= T) continue;
      const double norm_i_squared = dot(v, c, T);  // |g_i^PC|^2 = c K c
      const double norm_i = std::sqrt(norm_i_squared > 0 ? norm_i_squared : 0.0);
      const double norm_j = std::sqrt(K[j * T + j] > 0 ? K[j * T + j] : 0.0);
      const double cosine = v[j] / (norm_i * norm_j + eps);
      const double target = target_row[j];
      if (cosine < target) {
        const double root_cosine = std::sqrt(clamp_non_negative(1 - cosine * cosine));
        const double root_target = std::sqrt(clamp_non_negative(1 - target * target));
        const double w = norm_i * (target * root_cosine - cosine * root_target) / (norm_j * root_target + eps);
        c[j] += w;
        for (int64_t k = 0; k < T; ++k) v[k] += w * K[j * T + k];
      }
      target_row[j] = (1 - beta) * target + beta * cosine;
    }
  }

  FASTMTL_HOST_DEVICE static double clamp_non_negative(double x) { return x > 0 ? x : 0.0; }
};

}  // namespace fastmtl
