// Unit tests of csrc/include/fastmtl/dense_math.h (Cholesky, the small helpers) and of csrc/include/fastmtl/mgda_math.h. Plain C++, no libtorch; run by CTest.
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "fastmtl/dense_math.h"
#include "fastmtl/mgda_math.h"

#include "check.h"

namespace {

const double kEps = std::numeric_limits<double>::epsilon();

// A = [[4, 2], [2, 3]] = L L^T with L = [[2, 0], [1, sqrt 2]]; A x = (2, 1) has x = (1/2, 0).
void test_cholesky_hand_case() {
  double A[4] = {4, 2, 2, 3};
  EXPECT(fastmtl::cholesky_factor(A, 2, 2));
  EXPECT(A[0] == 2 && A[2] == 1);
  EXPECT_NEAR(A[3], std::sqrt(2.0), kEps);
  EXPECT(A[1] == 2);  // the strict upper triangle is left alone
  double b[2] = {2, 1};
  fastmtl::cholesky_solve(A, 2, 2, b);
  EXPECT_NEAR(b[0], 0.5, 4 * kEps);
  EXPECT_NEAR(b[1], 0.0, 4 * kEps);
}

// Not positive definite (a zero, a negative and a NaN pivot): reported, never divided by.
void test_cholesky_refuses() {
  double singular[4] = {1, 1, 1, 1};
  EXPECT(!fastmtl::cholesky_factor(singular, 2, 2));
  double indefinite[4] = {1, 2, 2, 1};
  EXPECT(!fastmtl::cholesky_factor(indefinite, 2, 2));
  double nan[4] = {std::nan(""), 0, 0, 1};
  EXPECT(!fastmtl::cholesky_factor(nan, 2, 2));
}

// A leading dimension larger than n: a 2 x 2 block inside a 3 x 3 array.
void test_leading_dimension() {
  double A[9] = {4, 2, 99, 2, 3, 99, 99, 99, 99};
  EXPECT(fastmtl::cholesky_factor(A, 2, 3));
  double b[2] = {8, 7};  // x = (5/4, 3/2): 4*5/4 + 2*3/2 = 8, 2*5/4 + 3*3/2 = 7
  fastmtl::cholesky_solve(A, 2, 3, b);
  EXPECT_NEAR(b[0], 1.25, 8 * kEps);
  EXPECT_NEAR(b[1], 1.5, 8 * kEps);
  EXPECT(A[2] == 99 && A[8] == 99);
}

// Random SPD systems of size 1..40: the residual of the computed x within Cholesky's backward
// error (Higham, Thm 10.4: (A + dA) x = b, |dA| <= g |L||L^T|, g = (3n+1)u / (1 - (3n+1)u)), with
// || |L||L^T| ||_inf <= n ||A||_2 <= n^2 max|A|: |A x - b|_i <= g n^2 max|A| ||x||_1.
void test_random_spd_residuals() {
  uint64_t state = 12345;
  auto uniform = [&state]() {  // a small LCG: reproducible without <random>'s distributions
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return static_cast<double>(state >> 11) / 9007199254740992.0 - 0.5;
  };
  for (int64_t n = 1; n <= 40; n += 3) {
    std::vector<double> B(n * n), A(n * n), factor(n * n), x(n), b(n), residual(n);
    for (auto& value : B) value = uniform();
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j) A[i * n + j] = fastmtl::dot(&B[i * n], &B[j * n], n) + (i == j ? 1.0 : 0.0);
    for (auto& value : x) value = uniform();
    fastmtl::matvec(A.data(), n, n, x.data(), b.data());
    std::vector<double> solution = b;
    factor = A;
    EXPECT(fastmtl::cholesky_factor(factor.data(), n, n));
    fastmtl::cholesky_solve(factor.data(), n, n, solution.data());
    fastmtl::matvec(A.data(), n, n, solution.data(), residual.data());
    double max_A = 0, x_norm = 0;
    for (double value : A) max_A = std::fmax(max_A, std::fabs(value));
    for (double value : solution) x_norm += std::fabs(value);
    const double g = (3 * n + 1) * kEps / 2 / (1 - (3 * n + 1) * kEps / 2);
    // plus the rounding of the residual's own matvec (n terms)
    const double bound = (g * n * n + 2 * n * kEps) * max_A * x_norm;
    for (int64_t i = 0; i < n; ++i) EXPECT(std::fabs(residual[i] - b[i]) <= bound);
  }
}

// MGDA: K = diag(1, 4) reaches the exact minimiser (4/5, 1/5) in one step (see tests/test_mgda_op.py).
void test_mgda_hand_case() {
  const double K[4] = {1, 0, 0, 4};
  double scratch[2], alpha[2];
  fastmtl::MgdaSolver{100, 1e-3}(K, 2, 0, scratch, alpha);
  EXPECT_NEAR(alpha[0], 0.8, 4 * kEps);
  EXPECT_NEAR(alpha[1], 0.2, 4 * kEps);
  const double one[1] = {7};
  fastmtl::MgdaSolver{100, 1e-3}(one, 1, 0, scratch, alpha);
  EXPECT(alpha[0] == 1);
}

}  // namespace

int main() {
  test_cholesky_hand_case();
  test_cholesky_refuses();
  test_leading_dimension();
  test_random_spd_residuals();
  test_mgda_hand_case();
  return report("test_dense_math");
}
