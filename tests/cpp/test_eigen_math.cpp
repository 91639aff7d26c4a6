// Unit tests of csrc/include/fastmtl/eigen_math.h (Householder tridiagonalisation + implicit
// shifted QR), imtl_g_math.h and aligned_mtl_math.h: hand-computed cases, exact structure (zero
// and isolated rows, power-of-two scaling), and the backward-error bound of the decomposition on
// random and rank-deficient Gram matrices.
// Plain C++, no libtorch; run by CTest.
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "fastmtl/aligned_mtl_math.h"
#include "fastmtl/eigen_math.h"
#include "fastmtl/imtl_g_math.h"

#include "check.h"

namespace {

using Matrix = std::vector<double>;
constexpr double kU = DBL_EPSILON / 2;  // unit roundoff

struct Eigen {
  Matrix Vt;
  std::vector<double> lambda;
};

Eigen decompose(Matrix A, int64_t T) {
  // Garbage everywhere: must be overwritten. Vt holds V^T then the workspace, dropped on return.
  Eigen e{Matrix(fastmtl::symmetric_eigen_scratch(T), -7.0), std::vector<double>(T, -7.0)};
  fastmtl::symmetric_eigen(A.data(), T, e.Vt.data(), e.lambda.data());
  e.Vt.resize(T * T);
  return e;
}

double frobenius(const Matrix& A) {
  double total = 0;
  for (double x : A) total += x * x;
  return std::sqrt(total);
}

// K = G G^T for integer entries of G in [-3, 3] (every product and sum exact in float64, so K is
// the exact Gram matrix) with rows beyond `rank` integer combinations of the first ones: the
// null eigenvalues of K are exactly 0.
Matrix integer_gram(int64_t T, int64_t rank, int64_t P, unsigned seed) {
  std::mt19937 generator(seed);
  std::uniform_int_distribution<int> entry(-3, 3);
  Matrix G(T * P);
  for (int64_t i = 0; i < T; ++i) {
    for (int64_t k = 0; k < P; ++k) {
      if (i < rank) {
        G[i * P + k] = entry(generator);
      } else {
        G[i * P + k] = 0;
        for (int64_t j = 0; j < rank; ++j) G[i * P + k] += ((i + j) % 3 - 1) * G[j * P + k];
      }
    }
  }
  Matrix K(T * T);
  for (int64_t i = 0; i < T; ++i) {
    for (int64_t j = 0; j < T; ++j) {
      double total = 0;
      for (int64_t k = 0; k < P; ++k) total += G[i * P + k] * G[j * P + k];
      K[i * T + j] = total;
    }
  }
  return K;
}

// Backward error of the decomposition: ||K - V diag(lambda) V^T||_F and ||V V^T - I||_F. The
// bound of Householder tridiagonalisation + symmetric QR (Golub & Van Loan §8.3.6): each of the
// T - 2 reflections and of the O(T) QR steps is an orthogonal similarity with an O(u) error, plus
// the dropped subdiagonal entries (<= u ||K||_F together): allow 64 T u ||K||_F, far above the
// rounding of a correct implementation (~T u; measured <= 5 T u) and far below any real defect
// (a wrong rotation or reflection is O(||K||)).
void check_decomposition(const Matrix& K, int64_t T, int line) {
  const Eigen e = decompose(K, T);
  Matrix residual(T * T), gram(T * T);
  for (int64_t i = 0; i < T; ++i) {
    for (int64_t j = 0; j < T; ++j) {
      double rebuilt = 0, inner = 0;
      for (int64_t k = 0; k < T; ++k) {
        rebuilt += e.Vt[k * T + i] * e.lambda[k] * e.Vt[k * T + j];
        inner += e.Vt[i * T + k] * e.Vt[j * T + k];
      }
      residual[i * T + j] = rebuilt - K[i * T + j];
      gram[i * T + j] = inner - (i == j ? 1.0 : 0.0);
    }
  }
  const double bound = 64 * T * kU;
  if (!(frobenius(residual) <= bound * frobenius(K)) || !(frobenius(gram) <= bound)) {
    std::fprintf(stderr, "%s:%d: T=%lld residual %.3g (|K| %.3g), orthogonality %.3g, bound %.3g\n", __FILE__, line,
                 static_cast<long long>(T), frobenius(residual), frobenius(K), frobenius(gram), bound);
    ++g_failures;
  }
}

std::vector<double> imtl_g(const Matrix& K, int64_t T) {
  const fastmtl::ImtlGSolver solver{};
  std::vector<double> scratch(solver.scratch_size(T), -7.0), w(T, -7.0);
  solver(K.data(), T, 0, scratch.data(), w.data());
  return w;
}

std::vector<double> aligned(const Matrix& K, int64_t T, fastmtl::AlignedScale mode) {
  const fastmtl::AlignedMtlSolver solver{mode};
  std::vector<double> scratch(solver.scratch_size(T), -7.0), w(T, -7.0);
  solver(K.data(), T, 0, scratch.data(), w.data());
  return w;
}

void test_hand_decompositions() {
  // T = 1 and the zero matrix: no rotation, exact.
  Eigen e = decompose({5.0}, 1);
  EXPECT(e.lambda[0] == 5.0 && e.Vt[0] == 1.0);
  e = decompose(Matrix(9, 0.0), 3);
  for (int k = 0; k < 3; ++k) EXPECT(e.lambda[k] == 0.0);
  // [[2, 1], [1, 2]]: eigenvalues 1 and 3 (one rotation by pi/4, a few ulps).
  e = decompose({2.0, 1.0, 1.0, 2.0}, 2);
  EXPECT_NEAR(std::fmin(e.lambda[0], e.lambda[1]), 1.0, 8 * kU * 3);
  EXPECT_NEAR(std::fmax(e.lambda[0], e.lambda[1]), 3.0, 8 * kU * 3);
  // Only the lower triangle is read (as torch.linalg.eigh).
  e = decompose({2.0, 99.0, 1.0, 2.0}, 2);
  EXPECT_NEAR(std::fmin(e.lambda[0], e.lambda[1]), 1.0, 8 * kU * 3);
  // A diagonal matrix is already diagonal: exact eigenvalues, identity eigenvectors.
  e = decompose({3.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.5}, 3);
  EXPECT(e.lambda[0] == 3.0 && e.lambda[1] == -1.0 && e.lambda[2] == 0.5);
}

void test_zero_rows_keep_exact_zero_eigenvalues() {
  // A zero gradient gives a zero row and column of K; such rows are set aside before the
  // reduction, so the eigenvalue stays exactly 0 (no cut can be crossed by rounding).
  for (int64_t T : {3, 8, 16}) {
    Matrix K = integer_gram(T, T, 2 * T, 11);
    for (int64_t k = 0; k < T; ++k) K[1 * T + k] = K[k * T + 1] = 0;
    const Eigen e = decompose(K, T);
    int zeros = 0;
    for (int64_t k = 0; k < T; ++k) zeros += e.lambda[k] == 0.0;
    EXPECT(zeros >= 1);
    check_decomposition(K, T, __LINE__);
  }
}

void test_isolated_rows_are_set_aside_exactly() {
  // Rows with no nonzero off-diagonal entry (a zero task, or a task orthogonal to all others) at
  // the first, a middle and the last index: each keeps its index, its eigenvalue a_ii exactly and
  // the unit vector e_i exactly; the others are packed, decomposed and unpacked around them.
  for (int64_t T : {4, 9, 33, 64}) {
    Matrix K = integer_gram(T, T - 1, T + 3, 7);
    const int64_t isolated[] = {0, T / 2, T - 1};
    const double diagonal[] = {0.0, 5.0, 0.75};
    for (int n = 0; n < 3; ++n) {
      const int64_t i = isolated[n];
      for (int64_t k = 0; k < T; ++k) K[i * T + k] = K[k * T + i] = 0;
      K[i * T + i] = diagonal[n];
    }
    const Eigen e = decompose(K, T);
    for (int n = 0; n < 3; ++n) {
      const int64_t i = isolated[n];
      EXPECT(e.lambda[i] == diagonal[n]);
      for (int64_t k = 0; k < T; ++k) {
        EXPECT(e.Vt[i * T + k] == (k == i ? 1.0 : 0.0));  // e_i
        EXPECT(k == i || e.Vt[k * T + i] == 0.0);         // no other eigenvector touches index i
      }
    }
    check_decomposition(K, T, __LINE__);
  }
}

void test_power_of_two_scaling_is_exact() {
  // The internal scaling is by a power of two, so K * 2^±900 (gradients ~1e±135) decomposes to
  // exactly the same eigenvectors and exactly scaled eigenvalues: no overflow, no underflow.
  const int64_t T = 8;
  const Matrix K = integer_gram(T, 5, 12, 3);
  const Eigen reference = decompose(K, T);
  for (int exponent : {900, -900}) {
    Matrix scaled(K);
    for (double& x : scaled) x = std::ldexp(x, exponent);
    const Eigen e = decompose(scaled, T);
    for (int64_t k = 0; k < T; ++k) EXPECT(e.lambda[k] == std::ldexp(reference.lambda[k], exponent));
    for (int64_t k = 0; k < T * T; ++k) EXPECT(e.Vt[k] == reference.Vt[k]);
  }
}

void test_backward_error() {
  for (int64_t T : {1, 2, 3, 5, 8, 16, 33, 64}) {
    for (unsigned seed = 0; seed < 3; ++seed) {
      check_decomposition(integer_gram(T, T, T + 3, seed), T, __LINE__);          // full rank
      // rank T/2: the trailing block of the tridiagonalisation shrinks geometrically (~u, u^2,
      // ...) past the squares' underflow at T = 64 (the kNegligibleEntry cut)
      check_decomposition(integer_gram(T, (T + 1) / 2, T + 3, seed), T, __LINE__);
      check_decomposition(integer_gram(T, 1, 4, seed), T, __LINE__);               // rank 1
      // Rank deficiency: every exact-zero eigenvalue comes out within the bound, i.e. below the
      // rank cut T eps lambda_max = 2 T u lambda_max of the solvers when the bound is met.
      const Matrix K = integer_gram(T, (T + 1) / 2, T + 3, seed);
      const Eigen e = decompose(K, T);
      int64_t above = 0;
      double lambda_max = 0;
      for (double l : e.lambda) lambda_max = std::fmax(lambda_max, l);
      for (double l : e.lambda) above += l > T * DBL_EPSILON * lambda_max;
      EXPECT(above <= (T + 1) / 2);
    }
  }
}

void test_imtl_g_hand_cases() {
  // G = diag(1, 2): K = diag(1, 4), K' = diag(0.2, 0.8), v = (1/sqrt(0.2), 1/sqrt(0.8)),
  // w = (2/3, 1/3) (d = (2/3, 2/3): equal projections). A few roundings: 16 u.
  std::vector<double> w = imtl_g({1.0, 0.0, 0.0, 4.0}, 2);
  EXPECT_NEAR(w[0], 2.0 / 3.0, 16 * kU);
  EXPECT_NEAR(w[1], 1.0 / 3.0, 16 * kU);
  // Duplicated tasks: K = [[1, 1], [1, 1]] (rank 1), pinv(K') = K'/1, w = (1/2, 1/2).
  w = imtl_g({1.0, 1.0, 1.0, 1.0}, 2);
  EXPECT_NEAR(w[0], 0.5, 16 * kU);
  EXPECT_NEAR(w[1], 0.5, 16 * kU);
  // Opposite tasks: v = pinv(K') s is orthogonal to (1, 1), its sum ~u < 1e-12: all zero.
  w = imtl_g({1.0, -1.0, -1.0, 1.0}, 2);
  EXPECT(w[0] == 0.0 && w[1] == 0.0);
  // Zero K: pinv(0) = 0, all zero. T = 1: w = 1.
  w = imtl_g(Matrix(9, 0.0), 3);
  for (double x : w) EXPECT(x == 0.0);
  w = imtl_g({4.0}, 1);
  EXPECT_NEAR(w[0], 1.0, 4 * kU);
}

void test_aligned_mtl_hand_cases() {
  using fastmtl::AlignedScale;
  // K = diag(1, 4): B = sqrt(scale) diag(1, 1/2), w = B (1/2, 1/2).
  std::vector<double> w = aligned({1.0, 0.0, 0.0, 4.0}, 2, AlignedScale::kMin);  // scale 1
  EXPECT(w[0] == 0.5 && w[1] == 0.25);
  w = aligned({1.0, 0.0, 0.0, 4.0}, 2, AlignedScale::kMedian);  // lower median of {1, 4}: 1
  EXPECT(w[0] == 0.5 && w[1] == 0.25);
  w = aligned({1.0, 0.0, 0.0, 4.0}, 2, AlignedScale::kRmse);  // mean 2.5
  EXPECT_NEAR(w[0], std::sqrt(2.5) / 2, 8 * kU);
  EXPECT_NEAR(w[1], std::sqrt(2.5) / 4, 8 * kU);
  // diag(9, 1, 4, 16): kept {1, 4, 9, 16}, lower median 4: w_i = 2 / sqrt(lambda_i) / 4.
  const Matrix D{9, 0, 0, 0, 0, 1, 0, 0, 0, 0, 4, 0, 0, 0, 0, 16};
  w = aligned(D, 4, AlignedScale::kMedian);
  EXPECT(w[0] == 2.0 / 3.0 / 4.0 && w[1] == 0.5 && w[2] == 0.25 && w[3] == 0.125);
  // Zero K: nothing kept, the identity: the mean.
  w = aligned(Matrix(9, 0.0), 3, AlignedScale::kMin);
  for (double x : w) EXPECT(x == 1.0 / 3.0);
  // Duplicated tasks K = [[1, 1], [1, 1]]: kept {2}, B = v v^T, w = (1/2, 1/2).
  w = aligned({1.0, 1.0, 1.0, 1.0}, 2, AlignedScale::kMin);
  EXPECT_NEAR(w[0], 0.5, 16 * kU);
  EXPECT_NEAR(w[1], 0.5, 16 * kU);
  // A zero task (zero row): its eigenvalue is exactly 0, not kept; diag(4, 0): w = (1/2, 0).
  w = aligned({4.0, 0.0, 0.0, 0.0}, 2, AlignedScale::kMin);
  EXPECT(w[0] == 0.5 && w[1] == 0.0);
}

}  // namespace

int main() {
  test_hand_decompositions();
  test_zero_rows_keep_exact_zero_eigenvalues();
  test_isolated_rows_are_set_aside_exactly();
  test_power_of_two_scaling_is_exact();
  test_backward_error();
  test_imtl_g_hand_cases();
  test_aligned_mtl_hand_cases();
  return report("test_eigen_math");
}
