// Unit tests of csrc/include/fastmtl/pcd_math.h (PCD's active-set QP) and fairgrad_math.h
// (FairGrad's damped Newton solve of K x = x^(-1/alpha)). Plain C++, no libtorch; run by CTest.
// Tolerances: u = 2^-53; a quantity computed with n roundings has relative error <= gamma_n
// = n u / (1 - n u) (Higham 2002, §3). The hand cases have closed forms on small exact inputs.
#include <cmath>
#include <cstdint>
#include <vector>

#include "fastmtl/fairgrad_math.h"
#include "fastmtl/pcd_math.h"

#include "check.h"

namespace {

const double kU = std::ldexp(1.0, -53);
double gamma_n(int n) { return n * kU / (1 - n * kU); }

int64_t tasks_of(const std::vector<double>& K) {
  return static_cast<int64_t>(std::lround(std::sqrt(static_cast<double>(K.size()))));
}

// PCD with unit scales (a fresh EMA of unit gradients) and one tau for every secondary task.
std::vector<double> pcd(const std::vector<double>& K, double tau, std::vector<double> scales = {}) {
  const int64_t T = tasks_of(K);
  if (scales.empty()) scales.assign(T, 1.0);
  const std::vector<double> taus(T > 1 ? T - 1 : 1, tau);
  const fastmtl::PcdSolver solver{scales.data(), taus.data(), 1e-9, 1e-9, 10 * 2 * kU};
  std::vector<double> scratch(solver.scratch_size(T), -123.0), w(solver.out_size(T), -456.0);
  solver(K.data(), T, 0, scratch.data(), w.data());
  return w;
}

std::vector<double> fairgrad(const std::vector<double>& K, double alpha, int64_t max_iters = 100) {
  const int64_t T = tasks_of(K);
  const fastmtl::FairGradSolver solver{alpha, max_iters};
  std::vector<double> scratch(solver.scratch_size(T), -123.0), x(solver.out_size(T), -456.0);
  solver(K.data(), T, 0, scratch.data(), x.data());
  return x;
}

// No violated constraint (g_0 already gives each secondary task tau of its progress): d = g_0.
void pcd_no_violation() {
  // g_0 = (1, 0), g_1 = (1, 1): g_1 . g_0 = 1 >= 0.3 |g_1|^2 = 0.6.
  const std::vector<double> w = pcd({1, 1, 1, 2}, 0.3);
  EXPECT_NEAR(w[0], 1.0, 4 * kU);
  EXPECT(w[1] == 0.0);
}

// One violated constraint, by hand: g_0 = (1, 0), g_1 = (0, 1) (orthogonal), tau = 0.5: the
// projection of g_0 onto {d : g_1 . d >= 0.5} is d~ = (1, 0.5) = g_0 + 0.5 g_1, |d~| = sqrt(1.25),
// rescaled to |g_0| = 1: w = (1, 0.5) / sqrt(1.25).
void pcd_one_active_constraint() {
  const std::vector<double> w = pcd({1, 0, 0, 1}, 0.5);
  const double norm = std::sqrt(1.25);
  EXPECT_NEAR(w[0], 1.0 / norm, gamma_n(8));
  EXPECT_NEAR(w[1], 0.5 / norm, gamma_n(8));
}

// Infeasible: two anti-parallel secondaries with tau > 0 (g_1 . d >= tau and -g_1 . d >= tau):
// weights [1, 0, 0].
void pcd_infeasible() {
  // g_0 = (1, 0), g_1 = (0, 1), g_2 = (0, -1).
  const std::vector<double> w = pcd({1, 0, 0, 0, 1, -1, 0, -1, 1}, 0.1);
  EXPECT_NEAR(w[0], 1.0, 4 * kU);
  EXPECT(w[1] == 0.0 && w[2] == 0.0);
}

// A zero primary gradient gives zero weights; one task gives weight 1 (d = g_0).
void pcd_zero_primary_and_one_task() {
  const std::vector<double> w = pcd({0, 0, 0, 1}, 0.5);
  EXPECT(w[0] == 0.0 && w[1] == 0.0);
  EXPECT_NEAR(pcd({4.0}, 0.5, {0.5})[0], 1.0, gamma_n(4));
}

// Constraint drop: the KKT conditions at the result (feasibility within tol, mu >= 0,
// complementary slackness), on a case whose active set changes along the way.
void pcd_kkt() {
  // g_0 = (1, 0, 0), g_1 = (-1, 1, 0), g_2 = (-1, -0.5, 1), g_3 = (0.2, -1, -1): K = G G^T.
  const double G[4][3] = {{1, 0, 0}, {-1, 1, 0}, {-1, -0.5, 1}, {0.2, -1, -1}};
  std::vector<double> K(16);
  for (int i = 0; i < 4; ++i) {
    for (int j = 0; j < 4; ++j) K[i * 4 + j] = G[i][0] * G[j][0] + G[i][1] * G[j][1] + G[i][2] * G[j][2];
  }
  const double tau = 0.2;
  const std::vector<double> w = pcd(K, tau);
  // w is d~ rescaled to |g_0| = 1 (positive factor): recover mu = w_j / w_0.
  EXPECT(w[0] > 0);
  for (int j = 1; j < 4; ++j) EXPECT(w[j] >= 0);
  for (int j = 1; j < 4; ++j) {
    double projection = 0;  // g_j . d~ with d~ = sum_i (w_i / w_0) g_i
    for (int i = 0; i < 4; ++i) projection += K[j * 4 + i] * w[i] / w[0];
    const double slack = projection - tau * K[j * 4 + j];
    EXPECT(slack >= -1e-9 * 3.0 - 1e-12);                            // feasible (tol on max K_ii = 3)
    if (w[j] > 0) EXPECT_NEAR(slack, 0.0, 1e-12);                    // active: holds with equality
  }
}

// FairGrad alpha = 1 on a diagonal K: x_i = K_ii^(-1/2) (the start is the solution).
void fairgrad_diagonal() {
  const std::vector<double> x = fairgrad({4, 0, 0, 0, 9, 0, 0, 0, 0.25}, 1.0);
  EXPECT_NEAR(x[0], 0.5, gamma_n(8) * 0.5);
  EXPECT_NEAR(x[1], 1.0 / 3.0, gamma_n(8) / 3.0);
  EXPECT_NEAR(x[2], 2.0, gamma_n(8) * 2.0);
  // alpha = 2 (p = 1/2): k x = x^-1/2 gives x = k^(-2/3).
  const std::vector<double> y = fairgrad({8, 0, 0, 27}, 2.0);
  EXPECT_NEAR(y[0], 0.25, gamma_n(16) * 0.25);
  EXPECT_NEAR(y[1], 1.0 / 9.0, gamma_n(16) / 9.0);
}

// Equal tasks: K = I + J (T x T) with alpha = 1 gives x_i = 1 / sqrt(T + 1) (as Nash-MTL).
void fairgrad_equal_tasks() {
  for (int64_t T : {2, 3, 5, 8}) {
    std::vector<double> K(T * T, 1.0);
    for (int64_t i = 0; i < T; ++i) K[i * T + i] = 2.0;
    const std::vector<double> x = fairgrad(K, 1.0);
    const double expected = 1.0 / std::sqrt(static_cast<double>(T + 1));
    // H has cond <= 2 at the solution; the residual has T + 2 roundings.
    for (int64_t i = 0; i < T; ++i) EXPECT_NEAR(x[i], expected, 4 * gamma_n(T + 4) * expected);
  }
}

// The residual K x - x^(-1/alpha) of a general K, for several alpha: within cond(H) times its
// evaluation error (Gershgorin bounds cond(H) on this diagonally dominant K).
void fairgrad_residual() {
  const int64_t T = 4;
  const std::vector<double> K = {4, 1, -0.5, 0.25, 1, 3, 0.5, -1, -0.5, 0.5, 5, 1, 0.25, -1, 1, 2.5};
  for (double alpha : {0.25, 0.5, 1.0, 2.0, 5.0}) {
    const std::vector<double> x = fairgrad(K, alpha);
    const double p = 1 / alpha;
    double low = 1e300, high = 0;
    for (int64_t i = 0; i < T; ++i) {
      double radius = 0;
      for (int64_t j = 0; j < T; ++j) radius += j == i ? 0.0 : std::fabs(K[i * T + j]);
      const double diagonal = K[i * T + i] + p * std::pow(x[i], -p - 1);
      low = std::fmin(low, diagonal - radius);
      high = std::fmax(high, diagonal + radius);
    }
    EXPECT(low > 0);
    for (int64_t i = 0; i < T; ++i) {
      EXPECT(x[i] > 0);
      double Kx = 0, magnitude = 0;
      for (int64_t j = 0; j < T; ++j) {
        Kx += K[i * T + j] * x[j];
        magnitude += std::fabs(K[i * T + j] * x[j]);
      }
      const double target = std::pow(x[i], -p);
      EXPECT_NEAR(Kx - target, 0.0, 8 * (high / low) * gamma_n(T + 8) * (magnitude + target));
    }
  }
}

// alpha = 0: uniform 1/T; a zero gradient: weight 0, the others solved alone; all zero: zeros.
void fairgrad_special_cases() {
  const std::vector<double> u = fairgrad({1, 2, 2, 9}, 0.0);
  EXPECT(u[0] == 0.5 && u[1] == 0.5);
  const std::vector<double> x = fairgrad({0, 0, 0, 4}, 1.0);
  EXPECT(x[0] == 0.0);
  EXPECT_NEAR(x[1], 0.5, gamma_n(8) * 0.5);
  const std::vector<double> z = fairgrad({0, 0, 0, 0}, 1.0);
  EXPECT(z[0] == 0.0 && z[1] == 0.0);
}

// Opposite gradients: no root (phi unbounded below along (1, 1)); the iterate stays finite and
// positive and symmetric, and grows.
void fairgrad_no_root() {
  const std::vector<double> x = fairgrad({1, -1, -1, 1}, 1.0, 50);
  EXPECT(std::isfinite(x[0]) && x[0] > 1 && x[1] > 1);
  EXPECT_NEAR(x[0], x[1], 1e-12 * x[0]);
}

// Scaling K by 4^s scales x by 2^(-2 s alpha / (1 + alpha)) = 2^-s for alpha = 1, bit for bit
// (exponent shifts only: the normalisation by max K_ii removes the scale exactly).
void fairgrad_power_of_two_scale() {
  const std::vector<double> K = {3.0, 1.0, -0.5, 1.0, 2.0, 0.25, -0.5, 0.25, 5.0};
  const std::vector<double> x = fairgrad(K, 1.0);
  for (int s : {-200, 200}) {
    std::vector<double> scaled(K);
    for (double& v : scaled) v = std::ldexp(v, 2 * s);
    const std::vector<double> got = fairgrad(scaled, 1.0);
    for (size_t i = 0; i < 3; ++i) EXPECT_NEAR(got[i], std::ldexp(x[i], -s), gamma_n(4) * std::ldexp(x[i], -s));
  }
}

}  // namespace

int main() {
  pcd_no_violation();
  pcd_one_active_constraint();
  pcd_infeasible();
  pcd_zero_primary_and_one_task();
  pcd_kkt();
  fairgrad_diagonal();
  fairgrad_equal_tasks();
  fairgrad_residual();
  fairgrad_special_cases();
  fairgrad_no_root();
  fairgrad_power_of_two_scale();
  return report("test_pcd_fairgrad_math");
}
