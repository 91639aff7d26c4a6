"""The compiled op fastmtl::dual_cone_weights(gram, U, norm_eps, reg_eps) -> V [m, T]
(csrc/include/fastmtl/dual_cone_math.h): its arguments, NaN policy, sizes T = 1..64 against
quadprog and the torch reference, exact scale invariance, and the CUDA kernel against the CPU
one. The QP's degenerate families (exact rational oracle, torchjd) run on the op in
tests/test_dual_cone.py; the bounds are derived there (solve_rtol)."""

import math

import pytest
import torch
from conftest import assert_within
from oracles import random_gradients
from test_dual_cone import (REG, kkt_rtol, low_rank, murty_hard, quadprog_solution, regularised, rows_of, solve_rtol,
                            with_duplicates, with_opposites, with_zero_rows)

import fastmtl
from fastmtl import methods
from fastmtl.methods import dual_cone

pytestmark = [pytest.mark.skipif(not fastmtl.HAS_EXT, reason="fastmtl._C not built"),
              pytest.mark.usefixtures("one_thread", "keep_subnormals")]  # exact scaling and tiny magnitudes need subnormals
cuda = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")]

SIZES = [1, 2, 3, 5, 8, 16, 33, 64]


def op(K, U, norm_eps=REG, reg_eps=REG):
    return torch.ops.fastmtl.dual_cone_weights(K, U, norm_eps, reg_eps)


def jacobian(family: str, T: int, seed: int) -> torch.Tensor:
    return {"random": lambda: random_gradients(T, 3 * T + 2, seed=seed, dtype=torch.float64),
            "rank-deficient": lambda: low_rank(T, 2 * T, max(1, T // 3), seed),  # more tasks than rank
            "zero rows": lambda: with_zero_rows(T, seed), "duplicates": lambda: with_duplicates(T, seed),
            "opposites": lambda: with_opposites(T, seed), "murty": lambda: murty_hard(T, seed)}[family]()


FAMILIES = ["random", "rank-deficient", "zero rows", "duplicates", "opposites", "murty"]


def row_sets(T: int):
    """UPGrad's rows, DualProj's row, and random non-negative rows (solve_rtol assumes u >= 0)."""
    yield "upgrad", rows_of("upgrad", T)
    yield "dualproj", rows_of("dualproj", T)
    yield "random", torch.rand(3, T, generator=torch.Generator().manual_seed(T), dtype=torch.float64)


# ----- the QP --------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("T", SIZES)
def test_matches_quadprog_and_the_reference(T, family):
    K = (G := jacobian(family, T, 200 + T)) @ G.T
    A = regularised(K)
    for kind, U in row_sets(T):
        V = op(K, U)
        assert V.shape == U.shape and V.dtype == torch.float64
        assert (V >= U).all(), f"{family}, T={T}, {kind}: v >= u must hold exactly (clamped)"
        # quadprog and the reference each lie within solve_rtol of the exact solution, as the op.
        for v, e, r in zip(V, quadprog_solution(A, U), dual_cone.dual_cone_projection_weights(
                K, U, norm_eps=REG, reg_eps=REG)):
            assert_within(v, e, 2 * solve_rtol(T) * float(e.abs().max()), f"{family}, T={T}, {kind}: quadprog")
            assert_within(v, r, 2 * solve_rtol(T) * float(r.abs().max()), f"{family}, T={T}, {kind}: reference")
        # KKT, restated (test_dual_cone.test_the_op_passes_the_kkt_check): A v >= -residual.
        residual = 5 * kkt_rtol(T) * float(A.abs().sum(1).max()) * V.abs().amax(1, keepdim=True)
        assert (V @ A >= -residual).all(), f"{family}, T={T}, {kind}"


@pytest.mark.parametrize("T", [3, 16, 64])
def test_power_of_two_scales_give_identical_weights(T):
    # G -> 2^±k G scales K by 2^±2k exactly (no overflow or underflow here: K stays within
    # [1e-300, 1e305]), so K / trace K is the same float64 matrix and V must be bitwise the same.
    G = low_rank(T, 2 * T, max(1, T // 2), T)
    U = rows_of("upgrad", T)
    V = op(G @ G.T, U)
    for k in (250, 498):
        big = (2.0**k) * G
        assert torch.equal(op(big @ big.T, U), V), f"2^{k}"
    small = 2.0**-100 * G  # trace ~1e-60 < norm_eps: K counts as 0
    assert torch.equal(op(small @ small.T, U), U)


@pytest.mark.parametrize("T", [3, 16, 64])
def test_huge_and_tiny_gradients(T):
    # 1e150 G: K ~ 1e300 (trace-normalised, so scale-free up to the rounding of K itself): the op
    # solves the QP of that K's A within solve_rtol. 1e-150 G: trace(K) ~ 1e-300 < norm_eps, so
    # A = reg I and V = U exactly (torchjd's convention).
    G = low_rank(T, 2 * T, max(1, T // 2), T)
    U = rows_of("upgrad", T)
    huge = 1e150 * G
    K = huge @ huge.T
    assert torch.isfinite(K).all()
    for v, e in zip(op(K, U), quadprog_solution(regularised(K), U)):
        assert_within(v, e, 2 * solve_rtol(T) * float(e.abs().max()), "1e150")
    tiny = 1e-150 * G
    assert torch.equal(op(tiny @ tiny.T, U), U)


def test_rows_are_independent_and_the_thread_count_does_not_matter():
    # Each row is its own job: a row's result does not depend on the other rows, nor on how the
    # rows are split over threads (T >= 16 runs them in parallel).
    T = 33
    K = (G := jacobian("rank-deficient", T, 5)) @ G.T
    U = rows_of("upgrad", T)
    V = op(K, U)
    assert torch.equal(op(K, U[7:8]), V[7:8])
    assert torch.equal(op(K, U.flip(0)), V.flip(0))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert torch.equal(op(K, U), V)
    finally:
        torch.set_num_threads(threads)


def test_layouts_and_dtypes_of_the_inputs():
    T = 8
    K = (G := jacobian("random", T, 1)) @ G.T
    U = torch.rand(T, 3, dtype=torch.float64).T  # a non-contiguous [3, T] view
    assert torch.equal(op(K, U), op(K, U.contiguous()))
    assert torch.equal(op(K.float(), U), op(K.float().double(), U))  # K is read in float64
    assert op(K, torch.empty(0, T, dtype=torch.float64)).shape == (0, T)


# ----- NaN policy and arguments -------------------------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("where", [(0, 0), (1, 2)])
def test_non_finite_gram_gives_all_nan(bad, where):
    K = (G := jacobian("random", 4, 3)) @ G.T
    K[where] = bad
    for _, U in row_sets(4):
        V = op(K, U)
        assert V.shape == U.shape and torch.isnan(V).all()


def test_a_non_finite_row_of_U_gives_a_nan_row_only():
    K = (G := jacobian("random", 5, 4)) @ G.T
    U = rows_of("upgrad", 5)
    bad = U.clone()
    bad[1, 3] = math.nan
    bad[3, 0] = math.inf
    V, expected = op(K, bad), op(K, U)
    assert torch.isnan(V[[1, 3]]).all()
    assert torch.equal(V[[0, 2, 4]], expected[[0, 2, 4]])


@pytest.mark.parametrize("args,match", [
    ((torch.eye(3), torch.eye(3)[0].double()), "U must be \\[m, T\\]"),
    ((torch.eye(3), torch.eye(4).double()), "U must be \\[m, T\\]"),
    ((torch.eye(3), torch.eye(3)), "U must be float64"),
    ((torch.eye(3).long(), torch.eye(3).double()), "gram must be floating-point"),
    ((torch.ones(3, 4), torch.ones(3, 4).double()), "gram must be a non-empty square"),
    ((torch.ones(2, 3, 3), torch.eye(3).double()), "gram must be a non-empty square"),
    ((torch.ones(0, 0), torch.ones(0, 0).double()), "gram must be a non-empty square"),
])
def test_bad_tensors_raise(args, match):
    with pytest.raises(RuntimeError, match=match):
        op(*args)


@pytest.mark.parametrize("norm_eps,reg_eps,match", [
    (0.0, REG, "norm_eps"), (-1.0, REG, "norm_eps"), (math.nan, REG, "norm_eps"), (math.inf, REG, "norm_eps"),
    (REG, 0.0, "reg_eps"), (REG, -1e-4, "reg_eps"), (REG, math.nan, "reg_eps"), (REG, math.inf, "reg_eps"),
])
def test_bad_options_raise(norm_eps, reg_eps, match):
    with pytest.raises(RuntimeError, match=match):
        op(torch.eye(3), rows_of("upgrad", 3), norm_eps, reg_eps)


# ----- the methods --------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["upgrad", "dualproj"])
@pytest.mark.parametrize("T", SIZES)
def test_methods_cpp_match_torch(method, T):
    # UPGrad sums T rows v_r >= u_r >= 0, each within solve_rtol ‖v_r‖∞ <= solve_rtol ‖w‖∞ of the exact
    # one, on both paths.
    rows = T if method == "upgrad" else 1
    for family in ("random", "rank-deficient", "opposites"):
        K = (G := jacobian(family, T, 300 + T)) @ G.T
        cpp = methods.create(method, impl="cpp").weights(K)
        ref = methods.create(method, impl="torch").weights(K)
        assert_within(cpp, ref, 2 * rows * solve_rtol(T) * float(ref.abs().max()), f"{method}, {family}, T={T}")


# ----- CUDA ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("T", SIZES)
@pytest.mark.parametrize("device", [pytest.param("cuda", marks=cuda)])
def test_cuda_matches_cpu(T, family, device):
    # Both kernels run the same float64 steps; only the compiler's rounding choices (FMA) differ,
    # so both pass the KKT check and lie within solve_rtol of the exact solution.
    K = (G := jacobian(family, T, 400 + T)) @ G.T
    for kind, U in row_sets(T):
        V = op(K.to(device), U.to(device))
        assert V.device.type == "cuda"
        for v, e in zip(V.cpu(), op(K, U)):
            assert_within(v, e, 2 * solve_rtol(T) * float(e.abs().max()), f"{family}, T={T}, {kind}")


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=cuda)])
def test_cuda_nan_policy_and_arguments(device):
    K = (G := jacobian("random", 4, 6)) @ G.T
    U = rows_of("upgrad", 4)
    bad = K.clone()
    bad[0, 1] = math.nan
    assert torch.isnan(op(bad.to(device), U.to(device))).all()
    assert op(K.to(device), torch.empty(0, 4, dtype=torch.float64, device=device)).shape == (0, 4)
    with pytest.raises(RuntimeError, match="U is on"):
        op(K.to(device), U)
    for method in ("upgrad", "dualproj"):
        w = methods.create(method, impl="cuda").weights(K.to(device))
        ref = methods.create(method, impl="torch").weights(K)
        rows = 4 if method == "upgrad" else 1
        assert_within(w.cpu(), ref, 2 * rows * solve_rtol(4) * float(ref.abs().max()), method)
