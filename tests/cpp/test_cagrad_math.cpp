// Unit tests of csrc/include/fastmtl/cagrad_math.h: CAGrad's exact Gram-space solve (root search
// over ρ with Wolfe's minimum-norm-point projections). Plain C++, no libtorch; run by CTest.
//
// Tolerances. fastmtl's documented accuracy (python/fastmtl/methods/cagrad.py) is: for every
// non-zero output, cert = F(w) - min_i ĝ_iᵀd <= (1 + c)√u (units ‖G‖_F = 1), an upper bound of
// F(w) - F*; Wolfe's projections end at a Frank-Wolfe gap <= 4 (T + 2) u max K_ii. The checks
// evaluate these quantities in float64 here, and add that evaluation's rounding (γ_n per sum of
// n terms, per unit of the terms' magnitudes).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <vector>

#include "fastmtl/cagrad_math.h"

#include "check.h"

namespace {

using Vec = std::vector<double>;
const double kU = std::ldexp(1.0, -53);
const double kNaN = std::numeric_limits<double>::quiet_NaN();

double gamma(int64_t n) { return n * kU / (1 - n * kU); }

// Deterministic normal-ish numbers (sum of 4 uniforms from a 64-bit LCG, centred): no <random>
// distribution, whose output differs between standard libraries.
struct Lcg {
  uint64_t state;
  double uniform() {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return static_cast<double>(state >> 11) * std::ldexp(1.0, -53);
  }
  double normal() { return uniform() + uniform() + uniform() + uniform() - 2.0; }
};

// G [T, P] row-major.
Vec random_gradients(int64_t T, int64_t P, uint64_t seed) {
  Lcg lcg{seed};
  Vec G(T * P);
  for (double& x : G) x = lcg.normal();
  return G;
}

Vec gram(const Vec& G, int64_t T, int64_t P) {
  Vec K(T * T);
  for (int64_t i = 0; i < T; ++i) {
    for (int64_t j = 0; j < T; ++j) {
      double total = 0;
      for (int64_t p = 0; p < P; ++p) total += G[i * P + p] * G[j * P + p];
      K[i * T + j] = total;
    }
  }
  return K;
}

Vec solve(const Vec& K, double c, int64_t rescale = 0, double norm_eps = 1e-4) {
  const int64_t T = static_cast<int64_t>(std::lround(std::sqrt(static_cast<double>(K.size()))));
  const fastmtl::CagradSolver solver{c, rescale, norm_eps, 12, 1e-12};
  Vec scratch(solver.scratch_size(T), kNaN), weights(solver.out_size(T), kNaN);  // garbage: must be overwritten
  solver(K.data(), T, 0, scratch.data(), weights.data());
  return weights;
}

bool all_zero(const Vec& w) {
  for (double x : w) {
    if (x != 0) return false;
  }
  return true;
}

// cert(w) for the output weights v = 1/T + (√φ/|g_w|) w of K (see the header comment); returns
// -1 (never below a bound) when v is not of that form. Slack: K̂ = K / trace carries 2u per entry,
// s = K̂ v and w·s are sums of T terms, all per unit of Σ|v| (1 + Σ|w|) (|K̂_ij| <= 1).
double certificate_excess(const Vec& K, const Vec& v, double c) {
  const int64_t T = static_cast<int64_t>(v.size());
  double trace = 0;
  for (int64_t i = 0; i < T; ++i) trace += K[i * T + i];
  Vec extra(T), s(T, 0.0);
  double ratio = 0, v_mass = 0, w_mass = 0;
  for (int64_t i = 0; i < T; ++i) {
    extra[i] = v[i] - 1.0 / T;
    ratio += extra[i];
    v_mass += std::fabs(v[i]);
  }
  if (!(ratio > 0)) return -1;
  for (int64_t i = 0; i < T; ++i) {
    extra[i] /= ratio;
    w_mass += std::fabs(extra[i]);
    for (int64_t j = 0; j < T; ++j) s[i] += K[i * T + j] / trace * v[j];
  }
  double ws = 0, smallest = s[0];
  for (int64_t i = 0; i < T; ++i) {
    ws += extra[i] * s[i];
    smallest = std::fmin(smallest, s[i]);
  }
  const double slack = 2 * gamma(2 * T + 4) * v_mass * (1 + w_mass);
  return (ws - smallest) - (1 + c) * std::sqrt(kU) - slack;
}

void test_one_task() {
  // T = 1: g0 = g, w = 1, d = g + c|g| g/|g| = (1 + c) g.
  for (double c : {0.0, 0.3, 1.0, 4.0}) {
    const Vec w = solve({2.5}, c);
    EXPECT_NEAR(w[0], 1 + c, 4 * (1 + c) * kU);
  }
}

void test_hand_case() {
  // g_1 = [1, 0], g_2 = [-3, 0]: g0 = [-1, 0], g_w = t e1 (t in [-3, 1]), F = -t + c|t| (after the
  // normalisation by trace = 10). For c < 1 the minimum is at t = 1 (w = e1): d = [c - 1, 0]; for
  // c > 1 at t = 0 (Pareto-stationary): the update is exactly 0.
  const Vec K = {1, -3, -3, 9};
  for (double c : {0.0, 0.25, 0.5, 0.9}) {
    const Vec w = solve(K, c);
    const double d0 = w[0] * 1 + w[1] * -3;
    EXPECT_NEAR(d0, c - 1, 16 * kU);
    EXPECT_NEAR(w[0] * 0 + w[1] * 0, 0.0, 0.0);
  }
  for (double c : {1.5, 2.0, 10.0}) EXPECT(all_zero(solve(K, c)));
}

void test_stationary_and_c_zero() {
  // Opposite tasks (g0 = 0) and three at 120° with equal norms: 0 = g0 is in the hull; every c
  // gives d = g0 = 0, and for c > 0 the verdict is exact (ψ(ρ) = |p|² >= 0 = φρ² fails to be > 0).
  const double h = -0.5;
  const Vec opposite = {1, -1, -1, 1};
  const Vec three = {1, h, h, h, 1, h, h, h, 1};
  for (double c : {0.0, 0.5, 1.0, 2.0}) {
    EXPECT(all_zero(solve(opposite, c)));
    EXPECT(all_zero(solve(three, c)));
  }
  // c = 0 away from stationarity: the mean, weights exactly 1/T; a zero gradient changes nothing.
  const Vec K = gram(random_gradients(5, 9, 3), 5, 9);
  for (double x : solve(K, 0.0)) EXPECT(x == 1.0 / 5);
  // Below norm_eps in trace: K̂ = 0 and the update is 0 (torchjd's rule).
  Vec tiny = K;
  for (double& x : tiny) x *= 1e-12;
  for (double c : {0.0, 0.5, 2.0}) EXPECT(all_zero(solve(tiny, c)));
}

void test_rescale() {
  // rescale 1 and 2 divide the weights by 1 + c² and 1 + c (one rounding each).
  const Vec K = gram(random_gradients(6, 11, 5), 6, 11);
  const double c = 0.7;
  const Vec plain = solve(K, c), by_square = solve(K, c, 1), by_c = solve(K, c, 2);
  for (size_t i = 0; i < plain.size(); ++i) {
    EXPECT_NEAR(by_square[i], plain[i] / (1 + c * c), 2 * kU * std::fabs(plain[i]));
    EXPECT_NEAR(by_c[i], plain[i] / (1 + c), 2 * kU * std::fabs(plain[i]));
  }
}

void test_optimality_certificate() {
  // Random full-rank and rank-deficient (P < T) problems, T up to 64, with a duplicated row, and a
  // zero row (0 in the hull: Pareto-stationary for c >= 1) in the rank-deficient ones: every
  // non-zero output meets the documented accuracy.
  int nonzero = 0;
  for (int64_t T : {2, 3, 5, 8, 16, 33, 64}) {
    for (int64_t P : {T / 2 + 1, 2 * T + 3}) {
      Vec G = random_gradients(T, P, 100 + T * 7 + P);
      if (T >= 3) {
        for (int64_t p = 0; p < P; ++p) {
          if (P < T) G[1 * P + p] = 0;  // a zero gradient
          G[2 * P + p] = G[0 * P + p];  // a duplicated one
        }
      }
      const Vec K = gram(G, T, P);
      for (double c : {0.2, 0.5, 1.0, 2.0, 10.0}) {
        const Vec v = solve(K, c);
        bool finite = true;
        for (double x : v) finite = finite && std::isfinite(x);
        EXPECT(finite);
        if (all_zero(v)) continue;
        ++nonzero;
        const double excess = certificate_excess(K, v, c);
        if (!(excess <= 0)) std::fprintf(stderr, "T=%lld P=%lld c=%g excess %.3g\n", (long long)T, (long long)P, c, excess);
        EXPECT(excess <= 0);
      }
    }
  }
  // P > T Gaussian gradients are linearly independent, so 0 is outside their hull (a duplicated row
  // changes no hull): those 7 x 5 outputs are non-zero, and the check above ran on each of them.
  EXPECT(nonzero >= 35);
}

void test_min_norm_point() {
  // Wolfe's algorithm alone: cold and warm starts end optimal, with |x|² - min|g_w|² <= min(2 gap,
  // |x|²) <= 2 (4 (T + 2) u max K_ii + 2 γ_(T+1) max K_ii) (the stopping rule plus the rounding of
  // K lam and lamᵀ K lam, sums of T + 1 terms), and w on the simplex (its sum within γ_T of 1).
  for (int64_t T : {1, 2, 5, 16, 33}) {
    const int64_t P = T / 2 + 1;
    const Vec K = gram(random_gradients(T, P, 7 + T), T, P);
    double max_diag = 0;
    for (int64_t i = 0; i < T; ++i) max_diag = std::fmax(max_diag, K[i * T + i]);
    Vec lam(T), corral(T), scratch(7 * T + T * T, kNaN);
    const fastmtl::cagrad_detail::WolfeWork work{scratch.data(), scratch.data() + T, scratch.data() + 2 * T,
                                                 scratch.data() + 3 * T, scratch.data() + 4 * T,
                                                 scratch.data() + 5 * T, scratch.data() + 7 * T};
    for (bool warm : {false, true}) {
      if (warm) {  // start at the last vertex
        for (int64_t i = 0; i < T; ++i) lam[i] = corral[i] = (i == T - 1) ? 1.0 : 0.0;
      }
      const bool done = fastmtl::cagrad_detail::min_norm_point(K.data(), T, nullptr, 2 * T + 10, warm, lam.data(),
                                                               corral.data(), work);
      EXPECT(done);
      double sum = 0, x_sq = 0, smallest = 0;
      for (int64_t i = 0; i < T; ++i) {
        EXPECT(lam[i] >= 0);
        sum += lam[i];
        double K_lam = 0;
        for (int64_t j = 0; j < T; ++j) K_lam += K[i * T + j] * lam[j];
        x_sq += lam[i] * K_lam;
        smallest = i == 0 ? K_lam : std::fmin(smallest, K_lam);
      }
      EXPECT_NEAR(sum, 1.0, gamma(T));
      const double bound = 2 * (4 * (T + 2) * 2 * kU + 2 * gamma(T + 1)) * max_diag;
      EXPECT(std::fmin(2 * (x_sq - smallest), x_sq) <= bound);
    }
  }
}

void test_scale() {
  // Gradients scaled by 1e150 (K by 1e300): the same normalised problem up to the rounding of the
  // trace division, so the same verdict and an output meeting the documented accuracy. Gradients
  // scaled by 1e-150 (K by 1e-300, trace below norm_eps): K̂ = 0 and the update is 0 (torchjd's
  // rule; CAGrad is scale-free only above norm_eps).
  const Vec K = gram(random_gradients(8, 20, 11), 8, 20);
  Vec huge = K, tiny = K;
  for (double& x : huge) x *= 1e300;
  for (double& x : tiny) x *= 1e-300;
  for (double c : {0.0, 0.5, 2.0}) {
    const Vec plain = solve(K, c), scaled = solve(huge, c);
    EXPECT(!all_zero(plain) && !all_zero(scaled));
    if (c > 0) EXPECT(certificate_excess(huge, scaled, c) <= 0);
    EXPECT(all_zero(solve(tiny, c)));
  }
}

}  // namespace

int main() {
  test_one_task();
  test_hand_case();
  test_stationary_and_c_zero();
  test_rescale();
  test_optimality_certificate();
  test_min_norm_point();
  test_scale();
  return report("test_cagrad_math");
}
