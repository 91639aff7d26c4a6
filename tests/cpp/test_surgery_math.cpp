// Unit tests of csrc/include/fastmtl/surgery_math.h: the PCGrad projection and Gram-space solve,
// and the GradDrop purity / keep factor / sign. Plain C++, no libtorch; run by CTest.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <vector>

#include "fastmtl/surgery_math.h"

#include "check.h"

namespace {

const double kNaN = std::numeric_limits<double>::quiet_NaN();
const double kInf = std::numeric_limits<double>::infinity();

// w for a T x T Gram matrix, index order when order is empty.
std::vector<double> solve(const std::vector<double>& K, const std::vector<int64_t>& order = {}) {
  const int64_t T = static_cast<int64_t>(std::lround(std::sqrt(static_cast<double>(K.size()))));
  std::vector<double> scratch(2 * T, -123.0), w(T, -456.0);  // garbage: the solve must overwrite both
  fastmtl::pcgrad_solve<double, int64_t>(K.data(), T, order.empty() ? nullptr : order.data(), scratch.data(),
                                         w.data());
  return w;
}

// The hand-computed cases use small integers and halves: every operation is exact, so the
// weights must be equal, not close.
void check_weights(const std::vector<double>& w, const std::vector<double>& expected, int line) {
  bool ok = w.size() == expected.size();
  for (size_t k = 0; ok && k < w.size(); ++k) ok = w[k] == expected[k];
  if (!ok) {
    std::fprintf(stderr, "%s:%d: weights differ:", __FILE__, line);
    for (double x : w) std::fprintf(stderr, " %.17g", x);
    std::fprintf(stderr, "  expected:");
    for (double x : expected) std::fprintf(stderr, " %.17g", x);
    std::fprintf(stderr, "\n");
    ++g_failures;
  }
}
#define CHECK_WEIGHTS(w, ...) check_weights((w), std::vector<double>{__VA_ARGS__}, __LINE__)

// PCGrad straight from the paper, on explicit gradient vectors: returns sum_i g_i^PC, where task i
// meets the others in order[i] (entries equal to i skipped).
using Vec = std::vector<double>;
double dot(const Vec& x, const Vec& y) {
  double s = 0;
  for (size_t t = 0; t < x.size(); ++t) s += x[t] * y[t];
  return s;
}
Vec pcgrad_direct(const std::vector<Vec>& g, const std::vector<std::vector<int64_t>>& order) {
  Vec total(g[0].size(), 0.0);
  for (size_t i = 0; i < g.size(); ++i) {
    Vec pc = g[i];
    for (int64_t j : order[i]) {
      if (j == static_cast<int64_t>(i)) continue;
      const double d = dot(pc, g[j]), n = dot(g[j], g[j]);
      if (d < 0 && n > 0) {
        for (size_t t = 0; t < pc.size(); ++t) pc[t] -= d / n * g[j][t];
      }
    }
    for (size_t t = 0; t < pc.size(); ++t) total[t] += pc[t];
  }
  return total;
}
std::vector<double> gram(const std::vector<Vec>& g) {
  std::vector<double> K;
  for (const Vec& x : g) {
    for (const Vec& y : g) K.push_back(dot(x, y));
  }
  return K;
}
Vec weighted_sum(const std::vector<double>& w, const std::vector<Vec>& g) {
  Vec out(g[0].size(), 0.0);
  for (size_t i = 0; i < g.size(); ++i) {
    for (size_t t = 0; t < out.size(); ++t) out[t] += w[i] * g[i][t];
  }
  return out;
}

// How far the Gram-space solve (then w . G) and pcgrad_direct may each lie from exact PCGrad
// in double, summed (tests/conftest.py's pcgrad_error_bound and pcgrad_per_vector_error_bound,
// with each coefficient's contribution |a_k| |g_k| <= |g_i|, so beta_i <= T |g_i|):
//   direct:  (T - 1) (2 gamma_{P+1} + 3u) sum_i |g_i|, then gamma_{T+1} sum_i |g_i| for the sum;
//   solve:   (T - 1) (2 gamma_{P+1} + gamma_{3T+1} + u) T sum_i |g_i|, the weights gamma_T, w . G gamma_{T+1};
// each times 1 + 2 (T - 1) local for second-order terms. gamma_n = n u / (1 - n u), u = 2^-53.
double pcgrad_error_bound(const std::vector<Vec>& g) {
  const double u = std::ldexp(1.0, -53);
  const auto gamma = [u](double n) { return n * u / (1 - n * u); };
  const double T = static_cast<double>(g.size()), P = static_cast<double>(g[0].size());
  double mass = 0;  // sum_i |g_i|, rounded up by its own error bound
  for (const Vec& x : g) mass += std::sqrt(dot(x, x));
  mass *= 1 + gamma(P + T + 2);
  const double direct_local = 2 * gamma(P + 1) + 3 * u;
  const double solve_local = 2 * gamma(P + 1) + gamma(3 * T + 1) + u;
  const double direct = ((T - 1) * direct_local * (1 + 2 * (T - 1) * direct_local) + gamma(T + 1)) * mass;
  const double solve =
      ((T - 1) * solve_local * (1 + 2 * (T - 1) * solve_local) * T + gamma(T) * T + gamma(T + 1) * T) * mass;
  return direct + solve;
}

void test_is_finite_value() {
  EXPECT(fastmtl::is_finite_value(0.0));
  EXPECT(fastmtl::is_finite_value(-1e308));
  EXPECT(fastmtl::is_finite_value(std::numeric_limits<double>::denorm_min()));
  EXPECT(!fastmtl::is_finite_value(kNaN));
  EXPECT(!fastmtl::is_finite_value(kInf));
  EXPECT(!fastmtl::is_finite_value(-kInf));
  EXPECT(!fastmtl::is_finite_value(std::numeric_limits<float>::infinity()));
}

void test_projection_coefficient() {
  // Conflict: g_i . g_j = -3, |g_j|^2 = 4 -> subtract -3/4 of g_j.
  EXPECT(fastmtl::projection_coefficient(-3.0, 4.0) == -0.75);
  EXPECT(fastmtl::projection_coefficient(-1.0f, 2.0f) == -0.5f);
  // No conflict: orthogonal or aligned.
  EXPECT(fastmtl::projection_coefficient(0.0, 4.0) == 0.0);
  EXPECT(fastmtl::projection_coefficient(2.5, 4.0) == 0.0);
  // Zero-norm g_j: 0, never a division by zero (would be -inf / NaN).
  EXPECT(fastmtl::projection_coefficient(-1.0, 0.0) == 0.0);
  EXPECT(fastmtl::projection_coefficient(0.0, 0.0) == 0.0);
  EXPECT(fastmtl::projection_coefficient(-1.0f, 0.0f) == 0.0f);
}

void test_pcgrad_two_tasks() {
  // g1 = (1, 0), g2 = (-1, 1): K = [[1, -1], [-1, 2]].
  // g1PC = g1 - (-1/2) g2 = (0.5, 0.5) -> a1 = (1, 0.5); g2PC = g2 - (-1/1) g1 = (0, 1) -> a2 = (1, 1).
  const std::vector<double> K = {1, -1, -1, 2};
  CHECK_WEIGHTS(solve(K), 2.0, 1.5);
  // The same with an explicit index order, and in float with int32 order.
  CHECK_WEIGHTS(solve(K, {0, 1, 0, 1}), 2.0, 1.5);
  const float Kf[4] = {1, -1, -1, 2};
  const int32_t order32[4] = {1, 0, 0, 1};
  float a[4], w[2];
  fastmtl::pcgrad_solve<float, int32_t>(Kf, 2, order32, a, w);
  EXPECT(w[0] == 2.0f && w[1] == 1.5f);
  fastmtl::pcgrad_solve<float, int32_t>(Kf, 2, nullptr, a, w);
  EXPECT(w[0] == 2.0f && w[1] == 1.5f);
}

void test_pcgrad_no_conflict() {
  // Every entry >= 0: nothing is projected, every a_i stays e_i, w = 1.
  CHECK_WEIGHTS(solve({2, 1, 0, 1, 3, 0.5, 0, 0.5, 1}), 1.0, 1.0, 1.0);
  CHECK_WEIGHTS(solve({4}), 1.0);  // a single task
}

void test_pcgrad_zero_gradient_task() {
  // g1 = (1, 0), g2 = 0, g3 = (-1, 0): task 2's row and column are zero.
  // a1 = e1 + e3 (projected on g3 only), a2 = e2, a3 = e1 + e3 -> w = (2, 1, 2).
  const std::vector<double> w = solve({1, 0, -1, 0, 0, 0, -1, 0, 1});
  for (double x : w) EXPECT(!std::isnan(x) && std::isfinite(x));
  CHECK_WEIGHTS(w, 2.0, 1.0, 2.0);
  // All tasks zero: w = 1, no 0/0.
  CHECK_WEIGHTS(solve({0, 0, 0, 0}), 1.0, 1.0);
  // Not a true Gram matrix (K_11 = 0 with K_01 < 0): task 0 is not projected on the zero-norm
  // task 1 (no division by 0); task 1 is projected on task 0 (dot -1, |g0|^2 1): a1 = (1, 1).
  const std::vector<double> w2 = solve({1, -1, -1, 0});
  CHECK_WEIGHTS(w2, 2.0, 1.0);
}

void test_pcgrad_non_finite() {
  for (double bad : {kNaN, kInf, -kInf}) {
    for (int where = 0; where < 4; ++where) {
      std::vector<double> K = {1, -1, -1, 2};
      K[where] = bad;
      const std::vector<double> w = solve(K);
      EXPECT(w.size() == 2 && std::isnan(w[0]) && std::isnan(w[1]));
    }
  }
  const float Kf[4] = {1, std::numeric_limits<float>::quiet_NaN(), -1, 2};
  float a[4], w[2] = {0, 0};
  fastmtl::pcgrad_solve<float, int64_t>(Kf, 2, nullptr, a, w);
  EXPECT(std::isnan(w[0]) && std::isnan(w[1]));
}

void test_pcgrad_order_skips() {
  const std::vector<double> K = {1, -1, -1, 2};
  // Entries equal to i or outside [0, T) are skipped: these orders reduce to index order.
  CHECK_WEIGHTS(solve(K, {-1, 1, 0, 7}), 2.0, 1.5);
  CHECK_WEIGHTS(solve(K, {0, 1, 1, 0}), 2.0, 1.5);
  // Every entry skipped: no projection at all, w = 1.
  CHECK_WEIGHTS(solve(K, {0, 2, 1, -3}), 1.0, 1.0);
  CHECK_WEIGHTS(solve(K, {0, 0, 1, 1}), 1.0, 1.0);
  // Only task 0 may project (task 1's row is skipped): a0 = (1, 0.5), a1 = (0, 1).
  CHECK_WEIGHTS(solve(K, {1, 0, 9, 1}), 1.0, 1.5);
  // int64 extremes must not wrap into range.
  CHECK_WEIGHTS(solve(K, {INT64_MIN, INT64_MAX, INT64_MAX, INT64_MIN}), 1.0, 1.0);
}

void test_pcgrad_order_matters() {
  // g1 = (1, 0), g2 = (-1, 1), g3 = (0, -1): K = [[1, -1, 0], [-1, 2, -1], [0, -1, 1]].
  const std::vector<Vec> g = {{1, 0}, {-1, 1}, {0, -1}};
  const std::vector<double> K = gram(g);
  CHECK_WEIGHTS(K, 1.0, -1.0, 0.0, -1.0, 2.0, -1.0, 0.0, -1.0, 1.0);

  // Index order (every task meets 0, 1, 2), by hand:
  //   task 0: meets g2 (dot -1, |g2|^2 2): (0.5, 0.5); meets g3 (dot -0.5): (0.5, 0)  a0 = (1, .5, .5)
  //   task 1: meets g1 (dot -1): (0, 1); meets g3 (dot -1): (0, 0)                    a1 = (1, 1, 1)
  //   task 2: meets g1 (dot 0): no; meets g2 (dot -1, /2): (-0.5, -0.5)               a2 = (0, .5, 1)
  //   w = (2, 2, 2.5)
  const std::vector<std::vector<int64_t>> forward = {{0, 1, 2}, {0, 1, 2}, {0, 1, 2}};
  // Reverse order (every task meets 2, 1, 0), by hand:
  //   task 0: meets g3 (dot 0): no; meets g2 (dot -1, /2): (0.5, 0.5)                 a0 = (1, .5, 0)
  //   task 1: meets g3 (dot -1): (-1, 0); meets g1 (dot -1): (0, 0)                   a1 = (1, 1, 1)
  //   task 2: meets g2 (dot -1, /2): (-.5, -.5); meets g1 (dot -.5): (0, -.5)         a2 = (.5, .5, 1)
  //   w = (2.5, 2, 2)
  const std::vector<std::vector<int64_t>> reverse = {{2, 1, 0}, {2, 1, 0}, {2, 1, 0}};

  const std::vector<double> w_forward = solve(K), w_forward_explicit = solve(K, {0, 1, 2, 0, 1, 2, 0, 1, 2});
  const std::vector<double> w_reverse = solve(K, {2, 1, 0, 2, 1, 0, 2, 1, 0});
  CHECK_WEIGHTS(w_forward, 2.0, 2.0, 2.5);
  CHECK_WEIGHTS(w_forward_explicit, 2.0, 2.0, 2.5);
  CHECK_WEIGHTS(w_reverse, 2.5, 2.0, 2.0);
  EXPECT(std::fabs(w_forward[0] - w_reverse[0]) > 0.25);

  // Against the vector-space PCGrad: w . G == sum_i g_i^PC for both orders.
  const Vec direct_forward = pcgrad_direct(g, forward), direct_reverse = pcgrad_direct(g, reverse);
  const Vec solved_forward = weighted_sum(w_forward, g), solved_reverse = weighted_sum(w_reverse, g);
  for (size_t t = 0; t < 2; ++t) {  // exact arithmetic here too
    EXPECT(solved_forward[t] == direct_forward[t]);
    EXPECT(solved_reverse[t] == direct_reverse[t]);
  }
  // By hand: forward (0.5, 0) + (0, 0) + (-0.5, -0.5); reverse (0.5, 0.5) + (0, 0) + (0, -0.5).
  EXPECT(direct_forward[0] == 0.0);
  EXPECT(direct_forward[1] == -0.5);
  EXPECT(direct_reverse[0] == 0.5);
  EXPECT(direct_reverse[1] == 0.0);

  // A mixed per-task order, against the vector-space PCGrad on less tidy gradients.
  const std::vector<Vec> h = {{1.0, 0.2, -0.3}, {-0.7, 1.1, 0.4}, {0.1, -0.9, -0.8}, {-0.5, -0.5, 1.5}};
  const std::vector<std::vector<int64_t>> mixed = {{3, 1, 2, 0}, {0, 2, 3, 1}, {1, 3, 0, 2}, {2, 0, 1, 3}};
  std::vector<int64_t> mixed_flat;
  for (const auto& row : mixed) mixed_flat.insert(mixed_flat.end(), row.begin(), row.end());
  const Vec direct = pcgrad_direct(h, mixed), solved = weighted_sum(solve(gram(h), mixed_flat), h);
  const double bound = pcgrad_error_bound(h);
  for (size_t t = 0; t < 3; ++t) EXPECT_NEAR(solved[t], direct[t], bound);
}

void test_graddrop_purity() {
  using fastmtl::graddrop_purity;
  EXPECT(graddrop_purity(3.0, 3.0) == 1.0);    // all positive
  EXPECT(graddrop_purity(-3.0, 3.0) == 0.0);   // all negative
  EXPECT(graddrop_purity(0.0, 4.0) == 0.5);    // balanced
  EXPECT(graddrop_purity(0.0, 0.0) == 0.5);    // every gradient zero: no 0/0
  EXPECT(graddrop_purity(0.0f, 0.0f) == 0.5f);
  EXPECT(graddrop_purity(1.0, 4.0) == 0.625);
  EXPECT(graddrop_purity(2.0f, 2.0f) == 1.0f);
  EXPECT(graddrop_purity(-2.0f, 2.0f) == 0.0f);
}

void test_graddrop_keep_factor() {
  using fastmtl::graddrop_direction;
  using fastmtl::graddrop_keep_factor;
  // keep(P, U, g) = factor of gradient g (activation sign s) at purity P and uniform U.
  const auto keep = [](double P, double U, double g, double leak, double s = 1.0) {
    return graddrop_keep_factor(g, graddrop_direction(P, U, s), leak);
  };
  const double leak = 0.3;
  // P > U keeps the positive gradients, P < U the negative ones; kept is exactly 1, dropped exactly leak.
  EXPECT(keep(0.8, 0.5, 2.0, leak) == 1.0);
  EXPECT(keep(0.8, 0.5, -2.0, leak) == leak);
  EXPECT(keep(0.2, 0.5, -2.0, leak) == 1.0);
  EXPECT(keep(0.2, 0.5, 2.0, leak) == leak);
  // A zero gradient is never "kept"; neither is any gradient when P == U.
  EXPECT(keep(0.8, 0.5, 0.0, leak) == leak);
  EXPECT(keep(0.2, 0.5, 0.0, leak) == leak);
  EXPECT(keep(0.5, 0.5, 1.0, leak) == leak);
  EXPECT(keep(0.5, 0.5, -1.0, leak) == leak);
  // Feature level: a negative activation flips which raw gradient sign is kept; sign 0 keeps none.
  EXPECT(keep(0.8, 0.5, -2.0, leak, -1.0) == 1.0);
  EXPECT(keep(0.8, 0.5, 2.0, leak, -1.0) == leak);
  EXPECT(keep(0.8, 0.5, 2.0, leak, 0.0) == leak);
  // leak 0 drops to exactly 0, leak 1 keeps everything; float too; tiny products never underflow
  // into a wrong decision because the direction is exactly +-1.
  EXPECT(keep(0.2, 0.5, 2.0, 0.0) == 0.0);
  EXPECT(keep(0.2, 0.5, 2.0, 1.0) == 1.0);
  EXPECT(graddrop_keep_factor(1e-30f, graddrop_direction(1.0f, 0.0f, 1.0f), 0.1f) == 1.0f);
  EXPECT(graddrop_keep_factor(1e-30f, graddrop_direction(0.0f, 0.999f, 1.0f), 0.1f) == 0.1f);
  EXPECT(graddrop_keep_factor(-1.0f, graddrop_direction(0.0f, 0.0f, 1.0f), 0.1f) == 0.1f);  // P = U = 0
  // NaN anywhere gives a finite factor (the caller multiplies, so a NaN gradient still shows).
  EXPECT(keep(kNaN, 0.5, 1.0, leak) == leak);
  EXPECT(keep(0.8, 0.5, kNaN, leak) == leak);
  EXPECT(keep(0.8, 0.5, 1.0, leak, kNaN) == leak);
}

void test_sign_of() {
  using fastmtl::sign_of;
  EXPECT(sign_of(-2.5) == -1.0);
  EXPECT(sign_of(0.0) == 0.0);
  EXPECT(sign_of(-0.0) == 0.0);
  EXPECT(sign_of(3.0) == 1.0);
  EXPECT(sign_of(1e-300) == 1.0);
  EXPECT(sign_of(-kInf) == -1.0);
  EXPECT(sign_of(kInf) == 1.0);
  EXPECT(std::isnan(sign_of(kNaN)));
  EXPECT(sign_of(-7.0f) == -1.0f);
  EXPECT(sign_of(0.0f) == 0.0f);
  EXPECT(sign_of(7.0f) == 1.0f);
  EXPECT(std::isnan(sign_of(std::numeric_limits<float>::quiet_NaN())));
}

}  // namespace

int main() {
  test_is_finite_value();
  test_projection_coefficient();
  test_pcgrad_two_tasks();
  test_pcgrad_no_conflict();
  test_pcgrad_zero_gradient_task();
  test_pcgrad_non_finite();
  test_pcgrad_order_skips();
  test_pcgrad_order_matters();
  test_graddrop_purity();
  test_graddrop_keep_factor();
  test_sign_of();
  return report("test_surgery_math");
}
