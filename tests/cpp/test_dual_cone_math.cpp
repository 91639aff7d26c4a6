// Unit tests of csrc/include/fastmtl/dual_cone_math.h: UPGrad / DualProj's QP min v^T A v s.t.
// v >= u, A = K / trace K + reg I. Hand-computed exact cases, a brute-force oracle (every free set,
// in long double) for small T, and a Murty-hard input that needs the interior-point fallback.
// Plain C++, no libtorch; run by CTest.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <vector>

#include "fastmtl/dual_cone_math.h"

#include "check.h"

namespace {

using fastmtl::DualConeSolver;
namespace dc = fastmtl::dual_cone;

const double kReg = 1e-4;
const double kUnitRoundoff = std::ldexp(1.0, -53);

// V [m, T] for the rows U [m, T]; scratch and output start as garbage: the solver must overwrite.
std::vector<double> solve(const std::vector<double>& K, int64_t T, const std::vector<double>& U, double reg = kReg,
                          double norm_eps = 1e-4) {
  const int64_t m = static_cast<int64_t>(U.size()) / T;
  const DualConeSolver solver{U.data(), norm_eps, reg, m};
  std::vector<double> scratch(solver.scratch_size(T), -123.0), V(solver.out_size(T), -456.0);
  for (int64_t job = 0; job < m; ++job) solver(K.data(), T, job, scratch.data(), V.data());
  return V;
}

// The tests' bound (tests/test_dual_cone.py, solve_rtol): ‖v − v*‖∞ <= this × ‖v*‖∞ for a v that
// passed the KKT check, from the natural-residual error bound of a strongly monotone LCP.
double solve_rtol(int64_t T, double reg = kReg) {
  return 5.0 * T * (1 + reg) * (2 + reg) / reg * (4.0 * (2 * T + 2) * kUnitRoundoff);
}

// Gram matrix of T random gradients of length P (a small LCG: no <random> differences between
// standard libraries), rows scaled by `scale[i]`.
std::vector<double> random_gram(int64_t T, int64_t P, uint64_t seed, int64_t rank = -1) {
  uint64_t state = seed * 6364136223846793005ULL + 1442695040888963407ULL;
  auto next = [&state]() {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return static_cast<double>(state >> 11) / 9007199254740992.0 * 2 - 1;
  };
  const int64_t r = rank < 0 ? T : rank;
  std::vector<double> basis(r * P), G(T * P), K(T * T);
  for (double& x : basis) x = next();
  for (int64_t i = 0; i < T; ++i) {
    for (int64_t k = 0; k < r; ++k) {
      const double c = next();
      for (int64_t p = 0; p < P; ++p) G[i * P + p] += c * basis[k * P + p];
    }
  }
  for (int64_t i = 0; i < T; ++i) {
    for (int64_t j = 0; j < T; ++j) K[i * T + j] = fastmtl::dot(&G[i * P], &G[j * P], P);
  }
  return K;
}

// The exact KKT point, by brute force over the 2^T free sets in long double: the unique F whose
// solution of A_FF s_F = −q_F has s_F >= 0 and w = A s + q >= 0 off F (to long double rounding).
std::vector<double> brute_force(const std::vector<double>& A, int64_t T, const double* u) {
  std::vector<long double> q(T), s(T), M(T * T), b(T);
  for (int64_t i = 0; i < T; ++i) {
    q[i] = 0;
    for (int64_t j = 0; j < T; ++j) q[i] += static_cast<long double>(A[i * T + j]) * u[j];
  }
  long double best_violation = INFINITY;
  std::vector<double> best(T);
  for (uint64_t mask = 0; mask < (uint64_t{1} << T); ++mask) {
    std::vector<int64_t> F;
    for (int64_t i = 0; i < T; ++i) {
      if (mask >> i & 1) F.push_back(i);
    }
    const int64_t n = static_cast<int64_t>(F.size());
    for (int64_t a = 0; a < n; ++a) {  // Gaussian elimination (A_FF is positive definite)
      for (int64_t c = 0; c < n; ++c) M[a * n + c] = A[F[a] * T + F[c]];
      b[a] = -q[F[a]];
    }
    for (int64_t k = 0; k < n; ++k) {
      for (int64_t i = k + 1; i < n; ++i) {
        const long double f = M[i * n + k] / M[k * n + k];
        for (int64_t c = k; c < n; ++c) M[i * n + c] -= f * M[k * n + c];
        b[i] -= f * b[k];
      }
    }
    for (int64_t i = n - 1; i >= 0; --i) {
      long double total = b[i];
      for (int64_t c = i + 1; c < n; ++c) total -= M[i * n + c] * b[c];
      b[i] = total / M[i * n + i];
    }
    for (int64_t i = 0; i < T; ++i) s[i] = 0;
    for (int64_t a = 0; a < n; ++a) s[F[a]] = b[a];
    long double violation = 0;
    for (int64_t i = 0; i < T; ++i) {
      long double w = q[i];
      for (int64_t j = 0; j < T; ++j) w += static_cast<long double>(A[i * T + j]) * s[j];
      const long double bad = (mask >> i & 1) ? -s[i] : -w;
      violation = bad > violation ? bad : violation;
    }
    if (violation < best_violation) {
      best_violation = violation;
      for (int64_t i = 0; i < T; ++i) best[i] = static_cast<double>(u[i] + s[i]);
    }
  }
  return best;
}

std::vector<double> regularised(const std::vector<double>& K, int64_t T, double reg = kReg) {
  std::vector<double> A(T * T);
  dc::regularised_gram(K.data(), T, 1e-4, reg, A.data());
  return A;
}

double max_abs(const double* x, int64_t n) {
  double m = 0;
  for (int64_t i = 0; i < n; ++i) m = std::fabs(x[i]) > m ? std::fabs(x[i]) : m;
  return m;
}

void test_regularised_gram() {
  const std::vector<double> K{2, -1, -1, 2};  // trace 4: A = K / 4 + reg I, exactly
  const auto A = regularised(K, 2, 0.5);
  EXPECT(A[0] == 1.0 && A[1] == -0.25 && A[2] == -0.25 && A[3] == 1.0);
  const std::vector<double> small{1e-5, 0, 0, 1e-5};  // trace below norm_eps: K counts as 0
  const auto B = regularised(small, 2, 0.5);
  EXPECT(B[0] == 0.5 && B[1] == 0.0 && B[2] == 0.0 && B[3] == 0.5);
  EXPECT(dc::kkt_tolerance(3) == 4.0 * 8 * kUnitRoundoff);
}

void test_hand_computed() {
  // One task: A = 1 + reg > 0, q = A u > 0, so F = {} and v = u.
  EXPECT(solve({4.0}, 1, {1.0})[0] == 1.0);
  // Opposite tasks, reg = 1/2: A = [[1, -1/2], [-1/2, 1]]; u = (1/2, 0): q = (1/2, -1/4), F = {1},
  // s_1 = 1/4; w_0 = 1/2 - 1/8 > 0. Every step is exact in binary.
  const auto v = solve({1, -1, -1, 1}, 2, {0.5, 0.0}, 0.5);
  EXPECT(v[0] == 0.5 && v[1] == 0.25);
  // UPGrad's rows on the same K (both rows symmetric).
  const auto V = solve({1, -1, -1, 1}, 2, {0.5, 0.0, 0.0, 0.5}, 0.5);
  EXPECT(V[0] == 0.5 && V[1] == 0.25 && V[2] == 0.25 && V[3] == 0.5);
  // K = 0: A = reg I, q = reg u >= 0, v = u.
  const auto Z = solve(std::vector<double>(9, 0.0), 3, {0.2, 0.0, 0.7});
  EXPECT(Z[0] == 0.2 && Z[1] == 0.0 && Z[2] == 0.7);
}

void test_non_finite_row() {
  const std::vector<double> K{2, 1, 1, 2};
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const auto V = solve(K, 2, {nan, 0.5, 0.5, 0.5});
  EXPECT(std::isnan(V[0]) && std::isnan(V[1]));
  EXPECT(V[2] == 0.5 && V[3] == 0.5);  // q > 0: F = {}, v = u
}

void test_against_brute_force() {
  int checked = 0;
  for (int64_t T : {2, 3, 5, 8}) {
    for (uint64_t seed = 0; seed < 6; ++seed) {
      const int64_t rank = seed % 2 ? (T + 1) / 2 : -1;  // rank-deficient half of the time
      const auto K = random_gram(T, 3, seed * 31 + T, rank);
      const auto A = regularised(K, T);
      std::vector<double> U(T * T, 0.0);  // UPGrad's rows e_i / T
      for (int64_t i = 0; i < T; ++i) U[i * T + i] = 1.0 / T;
      const auto V = solve(K, T, U);
      for (int64_t r = 0; r < T; ++r) {
        const auto exact = brute_force(A, T, &U[r * T]);
        const double bound = solve_rtol(T) * max_abs(exact.data(), T);
        for (int64_t i = 0; i < T; ++i) {
          EXPECT_NEAR(V[r * T + i], exact[i], bound);
          EXPECT(V[r * T + i] >= U[r * T + i]);
        }
        ++checked;
      }
    }
  }
  EXPECT(checked == 6 * (2 + 3 + 5 + 8));
}

// Fathi's (1979) matrix L (1 on the diagonal, 2 below) with row signs flipped by `signs`: K = L L^T
// up to signs, on which single pivots take exponentially many steps (tests/test_dual_cone.py).
std::vector<double> murty_hard(int64_t T, uint64_t signs) {
  std::vector<double> L(T * T, 0.0), K(T * T);
  for (int64_t i = 0; i < T; ++i) {
    const double sign = (signs >> (i % 64) & 1) ? -1.0 : 1.0;
    for (int64_t j = 0; j < i; ++j) L[i * T + j] = 2 * sign;
    L[i * T + i] = sign;
  }
  for (int64_t i = 0; i < T; ++i) {
    for (int64_t j = 0; j < T; ++j) K[i * T + j] = fastmtl::dot(&L[i * T], &L[j * T], T);
  }
  return K;
}

// The fallback (interior-point start + further pivoting) on rows that the first 32 pivoting steps
// do not solve: found among a few sign patterns, then checked to pass the KKT check.
void test_interior_point_fallback() {
  const int64_t T = 24;
  int fallbacks = 0;
  for (uint64_t pattern = 0; pattern < 8; ++pattern) {
    const auto K = murty_hard(T, 0x9E3779B97F4A7C15ULL * (pattern + 1));
    const auto A = regularised(K, T);
    std::vector<double> scratch(dc::RowScratch::size(T)), u(T), v(T);
    for (int64_t row = 0; row < T; ++row) {
      for (int64_t i = 0; i < T; ++i) u[i] = i == row ? 1.0 / T : 0.0;
      // The first phase alone, as solve_row runs it.
      const dc::RowScratch r(scratch.data(), T);
      for (int64_t i = 0; i < T; ++i) {
        r.q[i] = dc::dot_chains(&A[i * T], u.data(), T);
        r.u_scale[i] = dc::abs_dot_chains(&A[i * T], u.data(), T);
        r.free[i] = r.q[i] < 0 ? 1.0 : 0.0;
        r.best_s[i] = 0;
      }
      double first = INFINITY;
      if (dc::pivot(A.data(), T, u.data(), r, dc::kFirstPivots, dc::kkt_tolerance(T), first)) continue;
      ++fallbacks;
      const double violation = dc::solve_row(A.data(), T, u.data(), scratch.data(), v.data());
      EXPECT(violation <= dc::kkt_tolerance(T));
      // KKT of the result in long double: v >= u, A v >= -residual (solve_rtol's residual).
      const double residual = 5 * 4.0 * (2 * T + 2) * kUnitRoundoff * (1 + kReg) * std::sqrt(T) * max_abs(v.data(), T);
      for (int64_t i = 0; i < T; ++i) {
        long double Av = 0;
        for (int64_t j = 0; j < T; ++j) Av += static_cast<long double>(A[i * T + j]) * v[j];
        EXPECT(v[i] >= u[i]);
        EXPECT(Av >= -residual);
      }
    }
  }
  EXPECT(fallbacks > 0);  // otherwise this test checks nothing
  std::printf("interior-point fallback rows checked: %d\n", fallbacks);
}

}  // namespace

int main() {
  test_regularised_gram();
  test_hand_computed();
  test_non_finite_row();
  test_against_brute_force();
  test_interior_point_fallback();
  return report("test_dual_cone_math");
}
