// Unit tests of csrc/include/fastmtl/gradvac_math.h: GradVac's Gram-space pair updates, against
// hand-computed cases and against the paper's update on explicit gradient vectors. Plain C++,
// no libtorch; run by CTest. u = 2^-53, gamma_n = n u / (1 - n u) (Higham 2002, §3).
#include <cmath>
#include <cstdint>
#include <vector>

#include "fastmtl/gradvac_math.h"

#include "check.h"

namespace {

const double kU = std::ldexp(1.0, -53);
double gamma_n(int n) { return n * kU / (1 - n * kU); }

struct Result {
  std::vector<double> weights, targets;
};

Result solve(const std::vector<double>& K, const std::vector<double>& targets, const std::vector<int64_t>& order = {},
             double beta = 0.5, double eps = 1e-300) {
  const int64_t T = static_cast<int64_t>(std::lround(std::sqrt(static_cast<double>(K.size()))));
  const fastmtl::GradVacSolver solver{targets.data(), order.empty() ? nullptr : order.data(), beta, eps};
  std::vector<double> out(solver.out_size(T), -456.0);  // garbage: the jobs must overwrite it
  for (int64_t i = 0; i < T; ++i) {
    std::vector<double> scratch(solver.scratch_size(T), -123.0);
    solver(K.data(), T, i, scratch.data(), out.data());
  }
  Result result{std::vector<double>(T, 0.0), std::vector<double>(out.begin(), out.begin() + T * T)};
  for (int64_t i = 0; i < T; ++i) {
    for (int64_t k = 0; k < T; ++k) result.weights[k] += out[T * T + i * T + k];
  }
  return result;
}

// G = [[1, 0], [-1, 1]], zero targets, beta = 1/2: task 0 meets task 1 at cos = -1/sqrt 2, is moved
// to orthogonal: c_0 = (1, 1/2); task 1 meets task 0 at the same cosine: c_1 = (1, 1). Targets
// become -1/(2 sqrt 2). At most ~10 roundings per quantity (eps = 1e-300 is below them).
void hand_case() {
  const Result r = solve({1.0, -1.0, -1.0, 2.0}, {0.0, 0.0, 0.0, 0.0});
  EXPECT_NEAR(r.weights[0], 2.0, 2 * gamma_n(16));
  EXPECT_NEAR(r.weights[1], 1.5, 2 * gamma_n(16));
  const double target = -0.5 / std::sqrt(2.0);
  EXPECT_NEAR(r.targets[1], target, gamma_n(16));
  EXPECT_NEAR(r.targets[2], target, gamma_n(16));
  EXPECT(r.targets[0] == 0.0 && r.targets[3] == 0.0);  // the diagonal is never touched
}

// A cosine above its target: no change to the gradients (weights 1, 1), targets still move.
void no_conflict() {
  const Result r = solve({1.0, 0.5, 0.5, 1.0}, {0.0, -0.2, 0.4, 0.0}, {}, 0.25);
  EXPECT(r.weights[0] == 1.0 && r.weights[1] == 1.0);
  EXPECT_NEAR(r.targets[1], 0.75 * -0.2 + 0.25 * 0.5, gamma_n(8));
  EXPECT_NEAR(r.targets[2], 0.75 * 0.4 + 0.25 * 0.5, gamma_n(8));
}

// Order entries equal to the task itself, or outside [0, T), are skipped: the result equals the
// index order's, bit for bit.
void order_skips_bad_entries() {
  const std::vector<double> K = {2.0, -1.0, 0.5, -1.0, 3.0, -2.0, 0.5, -2.0, 4.0};
  const std::vector<double> targets = {0.0, 0.1, -0.1, 0.2, 0.0, 0.05, 0.0, -0.3, 0.0};
  const Result expected = solve(K, targets, {0, 1, 2, 0, 1, 2, 0, 1, 2});
  const Result got = solve(K, targets, {-7, 1, 2, 0, 99, 2, 0, 1, 3});
  for (int k = 0; k < 3; ++k) EXPECT(got.weights[k] == expected.weights[k]);
  for (int k = 0; k < 9; ++k) EXPECT(got.targets[k] == expected.targets[k]);
  const Result index = solve(K, targets);
  for (int k = 0; k < 3; ++k) EXPECT(index.weights[k] == expected.weights[k]);
}

// Opposite tasks g, -g with zero targets: each is moved onto the orthogonal point, g + (-g) = 0,
// so c_i = (1, 1) and the update is zero.
void opposite_tasks() {
  const Result r = solve({4.0, -4.0, -4.0, 4.0}, {0.0, 0.0, 0.0, 0.0}, {}, 0.5, 1e-8);
  EXPECT_NEAR(r.weights[0], 2.0, 1e-8);  // eps / |g|^2 = 2.5e-9 enters each step's cosine and w
  EXPECT_NEAR(r.weights[1], 2.0, 1e-8);
  EXPECT_NEAR(r.targets[1], -0.5, 1e-8);
}

// The paper's update (Wang et al. 2021, Alg. 1) on explicit vectors in long double, T = 5, P = 7.
// The Gram-space solve differs by rounding only: every step's cosine and norms have relative error
// <= gamma_{2P+T} (K's products, the c K c form), w is Lipschitz in them with the factor
// 1 / (root_cos root_target) (max over the steps, computed below), and T steps add up.
void explicit_vectors() {
  const int T = 5, P = 7;
  std::vector<long double> G(T * P);
  for (int i = 0; i < T * P; ++i) G[i] = std::sin(1.7L * i + 0.3L) * (1 + (i % 3));  // fixed pseudo-random
  std::vector<double> K(T * T), targets(T * T);
  for (int i = 0; i < T; ++i) {
    for (int j = 0; j < T; ++j) {
      long double s = 0;
      for (int p = 0; p < P; ++p) s += G[i * P + p] * G[j * P + p];
      K[i * T + j] = static_cast<double>(s);
      targets[i * T + j] = i == j ? 0.0 : 0.4 * std::cos(2.3 * (i * T + j));
    }
  }
  const double beta = 0.3, eps = 1e-8;
  const Result got = solve(K, targets, {}, beta, static_cast<double>(eps));
  std::vector<long double> total(P, 0.0L);
  long double condition = 1, mass = 0;
  for (int i = 0; i < T; ++i) {
    std::vector<long double> g(G.begin() + i * P, G.begin() + (i + 1) * P);
    for (int j = 0; j < T; ++j) {
      if (j == i) continue;
      long double gg = 0, gj = 0, jj = 0;
      for (int p = 0; p < P; ++p) {
        gg += g[p] * g[p];
        gj += g[p] * G[j * P + p];
        jj += G[j * P + p] * G[j * P + p];
      }
      const long double cosine = gj / (std::sqrt(gg) * std::sqrt(jj) + eps), target = targets[i * T + j];
      const long double root_cosine = std::sqrt(1 - cosine * cosine), root_target = std::sqrt(1 - target * target);
      if (cosine < target) {
        const long double w = std::sqrt(gg) * (target * root_cosine - cosine * root_target) /
                              (std::sqrt(jj) * root_target + eps);
        for (int p = 0; p < P; ++p) g[p] += w * G[j * P + p];
        condition = std::fmax(condition, 1 / (root_cosine * root_target));
      }
      EXPECT_NEAR(got.targets[i * T + j], (1 - beta) * target + beta * cosine,
                  4 * condition * gamma_n(2 * P + T) * T);
    }
    for (int p = 0; p < P; ++p) total[p] += g[p];
    for (int p = 0; p < P; ++p) mass += std::fabs(g[p]);
  }
  for (int p = 0; p < P; ++p) {
    long double update = 0, magnitude = 0;
    for (int k = 0; k < T; ++k) {
      update += got.weights[k] * G[k * P + p];
      magnitude += std::fabs(got.weights[k] * G[k * P + p]);
    }
    EXPECT_NEAR(update, total[p], 4 * T * condition * gamma_n(2 * P + T) * (magnitude + mass));
  }
}

}  // namespace

int main() {
  hand_case();
  no_conflict();
  order_skips_bad_entries();
  opposite_tasks();
  explicit_vectors();
  return report("test_gradvac_math");
}
