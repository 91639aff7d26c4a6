// Unit tests of csrc/include/fastmtl/nash_mtl_math.h: Nash-MTL's damped Newton solve of
// K alpha = 1 / alpha and its max_norm cap. Plain C++, no libtorch; run by CTest.
// Tolerances: u = 2^-53; a quantity computed with n roundings has relative error <= gamma_n
// = n u / (1 - n u) (Higham 2002, §3); at the fixed point the solve error is bounded by
// cond(H) times the residual's evaluation error (H the Jacobian of K alpha - 1/alpha).
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "fastmtl/nash_mtl_math.h"

#include "check.h"

namespace {

const double kU = std::ldexp(1.0, -53);
double gamma_n(int n) { return n * kU / (1 - n * kU); }

std::vector<double> solve(const std::vector<double>& K, double max_norm = 0.0, int64_t iterations = 30) {
  const int64_t T = static_cast<int64_t>(std::lround(std::sqrt(static_cast<double>(K.size()))));
  const fastmtl::NashMtlSolver solver{max_norm, iterations};
  std::vector<double> scratch(solver.scratch_size(T), -123.0), alpha(solver.out_size(T), -456.0);
  solver(K.data(), T, 0, scratch.data(), alpha.data());
  return alpha;
}

// T = 1: alpha = 1 / sqrt(k) is the start and the solution; the cap scales it to max_norm.
void one_task() {
  const double k = 9.0;
  const std::vector<double> alpha = solve({k});
  EXPECT_NEAR(alpha[0], 1.0 / 3.0, 4 * kU);
  // |alpha g| = sqrt(k) alpha = 1 > 0.25: scaled to 0.25 (a few roundings: sqrt, divide, multiply).
  EXPECT_NEAR(solve({k}, 0.25)[0], 0.25 / 3.0, gamma_n(8) * (0.25 / 3.0));
  EXPECT_NEAR(solve({k}, 2.0)[0], 1.0 / 3.0, 4 * kU);  // under the cap: unchanged
}

// Symmetric structures with a closed form: K = I + J (J all ones) gives alpha_i = 1 / sqrt(T + 1).
void equal_tasks() {
  for (int64_t T : {2, 3, 5, 8}) {
    std::vector<double> K(T * T, 1.0);
    for (int64_t i = 0; i < T; ++i) K[i * T + i] = 2.0;
    const std::vector<double> alpha = solve(K);
    // H = K + (T + 1) I at the solution: eigenvalues T + 2 and 2T + 2, cond <= 2; the residual
    // is evaluated with T + 2 roundings on terms of size <= 2 sqrt(T + 1).
    const double expected = 1.0 / std::sqrt(static_cast<double>(T + 1));
    for (int64_t i = 0; i < T; ++i) EXPECT_NEAR(alpha[i], expected, 2 * 2 * gamma_n(T + 4) * expected + 2 * kU);
  }
}

// A diagonally dominant K: the Gershgorin discs bound cond(H) at the solution, so the residual
// K alpha - 1/alpha of the result is bounded by cond(H) times its evaluation error.
void diagonally_dominant() {
  const int64_t T = 5;
  std::vector<double> K(T * T);
  for (int64_t i = 0; i < T; ++i) {
    for (int64_t j = 0; j < T; ++j) K[i * T + j] = i == j ? 4.0 + i : ((i + 2 * j) % 3 == 0 ? 0.5 : -0.5);
  }
  for (int64_t i = 0; i < T; ++i) {
    for (int64_t j = 0; j < i; ++j) K[i * T + j] = K[j * T + i];  // symmetric
  }
  const std::vector<double> alpha = solve(K);
  double low = 1e300, high = 0;  // Gershgorin bounds on the spectrum of H = K + diag(1/alpha^2)
  for (int64_t i = 0; i < T; ++i) {
    double radius = 0;
    for (int64_t j = 0; j < T; ++j) radius += j == i ? 0.0 : std::fabs(K[i * T + j]);
    const double diagonal = K[i * T + i] + 1 / (alpha[i] * alpha[i]);
    low = std::fmin(low, diagonal - radius);
    high = std::fmax(high, diagonal + radius);
  }
  EXPECT(low > 0);
  const double cond = high / low;
  for (int64_t i = 0; i < T; ++i) {
    EXPECT(alpha[i] > 0);
    double K_alpha = 0, magnitude = 0;
    for (int64_t j = 0; j < T; ++j) {
      K_alpha += K[i * T + j] * alpha[j];
      magnitude += std::fabs(K[i * T + j] * alpha[j]);
    }
    const double residual = K_alpha - 1 / alpha[i];
    EXPECT_NEAR(residual, 0.0, 4 * cond * gamma_n(T + 2) * (magnitude + 1 / alpha[i]));
  }
}

// A zero gradient (a zero row of K): its alpha starts at 1 and each step adds alpha / (1 + lambda)
// with lambda = 1 exactly (its block is decoupled and the other task is solved at once), so it
// grows by 3/2 per step; the other task keeps 1 / |g|.
void zero_gradient() {
  const std::vector<double> alpha = solve({0.0, 0.0, 0.0, 4.0}, 0.0, 30);
  EXPECT_NEAR(alpha[1], 0.5, 4 * kU);
  const double expected = std::pow(1.5, 30);
  EXPECT_NEAR(alpha[0], expected, 30 * gamma_n(8) * expected);
}

// Opposite tasks: K alpha = 1/alpha has no solution (phi is unbounded below along (1, 1)); both
// weights grow together, by 1 + 1 / (1 + sqrt 2) = sqrt 2 per step (lambda^2 = 2), and stay
// finite. H_k = K + I / x_k^2 has cond 2 x_k^2 + 1: step k's solve has relative error
// <= cond(H_k) gamma_n (backward-stable Cholesky, Higham Thm 10.4), and the errors add up.
void opposite_tasks() {
  const std::vector<double> alpha = solve({1.0, -1.0, -1.0, 1.0}, 1.0, 30);
  const double expected = std::pow(2.0, 15);
  double bound = 0, x = 1;
  for (int k = 0; k < 30; ++k, x *= std::sqrt(2.0)) bound += (2 * x * x + 1) * gamma_n(16);
  EXPECT_NEAR(alpha[0], expected, bound * expected);
  EXPECT_NEAR(alpha[1], expected, bound * expected);
  EXPECT_NEAR(alpha[0], alpha[1], bound * expected);
}

// Scaling K by 4^s scales alpha by 2^-s exactly: every operation of the solve then only shifts
// exponents (no overflow or underflow here), so the bits must agree.
void power_of_two_scale() {
  const std::vector<double> K = {3.0, 1.0, -0.5, 1.0, 2.0, 0.25, -0.5, 0.25, 5.0};
  const std::vector<double> alpha = solve(K, 0.5);
  for (int s : {-500, 500}) {
    std::vector<double> scaled(K);
    for (double& x : scaled) x = std::ldexp(x, 2 * s);
    const std::vector<double> got = solve(scaled, 0.5);
    for (size_t i = 0; i < K.size() / 3; ++i) EXPECT(got[i] == std::ldexp(alpha[i], -s));
  }
}

// Overflow: 1/alpha^2 + K = inf, the factorisation fails, the step is a no-op: alpha stays at
// the start 1 / sqrt(K) (finite), as the reference's failed solve_ex.
void failed_factorisation_keeps_alpha() {
  const double k = 1.5e308;
  const std::vector<double> alpha = solve({k});
  EXPECT(alpha[0] == 1.0 / std::sqrt(k));
}

// The early stop: more iterations after convergence change nothing.
void converged_result_is_stable() {
  const std::vector<double> K = {3.0, 1.0, -0.5, 1.0, 2.0, 0.25, -0.5, 0.25, 5.0};
  const std::vector<double> a = solve(K, 0.0, 30), b = solve(K, 0.0, 1000);
  for (size_t i = 0; i < 3; ++i) EXPECT(a[i] == b[i]);
}

}  // namespace

int main() {
  one_task();
  equal_tasks();
  diagonally_dominant();
  zero_gradient();
  opposite_tasks();
  power_of_two_scale();
  failed_factorisation_keeps_alpha();
  converged_result_is_stable();
  return report("test_nash_mtl_math");
}
