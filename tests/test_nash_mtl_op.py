"""The nash_mtl_weights op (csrc/include/fastmtl/nash_mtl_math.h) against the torch reference
(methods/nash_mtl.py, impl="torch") and torchjd, on well-posed, degenerate and badly scaled K.

Tolerance (newton_bound): both paths run the same damped Newton steps in float64; step k solves
H_k D = -r with a backward-stable solve (Cholesky here, LU in the reference: relative error
<= cond(H_k) γ_{T+2}, Higham 2002 Thm 10.4 / 9.5, the residual r being evaluated with T + 2
roundings), and Newton carries an earlier step's error forward without amplifying it (it
contracts towards the solution; along an unbounded direction it only rescales), so after the
steps the relative difference is <= Σ_k cond(H_k) γ_{T+2} per path, doubled for the two paths,
plus γ_{T+4} for the max_norm cap. The op may stop once the Newton decrement is at rounding
level; the reference never does, and the bound covers both.
"""

import math
import warnings

import pytest
import torch
from conftest import assert_close_rel, gamma
from oracles import random_gradients

import fastmtl
from fastmtl import methods
from fastmtl.methods.nash_mtl import nash_mtl_weights

pytestmark = [pytest.mark.skipif(not fastmtl.HAS_EXT, reason="fastmtl._C not built"),
              pytest.mark.usefixtures("keep_subnormals")]  # exact scaling and tiny magnitudes need subnormals

TASKS = [1, 2, 3, 5, 8, 16, 33, 64]


def newton_bound(K: torch.Tensor, iterations: int = 30) -> float:
    """The relative tolerance of the module docstring, from the reference's own iterates."""
    T = K.shape[0]
    norms = K.diagonal().clamp_min(0).sqrt()
    alpha = torch.where(norms > 0, 1 / torch.where(norms > 0, norms, 1.0), torch.ones_like(norms))
    total = 0.0
    for _ in range(iterations):
        hessian = K + torch.diag(1 / alpha**2)
        total += float(torch.linalg.cond(hessian))
        gradient = K @ alpha - 1 / alpha
        step = -torch.linalg.solve(hessian, gradient)
        alpha = alpha + step / (1 + (-(gradient @ step)).clamp_min(0).sqrt())
    return 2 * total * gamma(T + 2, torch.float64) + gamma(T + 4, torch.float64)


def op(K, max_norm=1.0, iterations=30):
    return torch.ops.fastmtl.nash_mtl_weights(K, max_norm, iterations)


def check_against_reference(K, max_norm=1.0, iterations=30, what=""):
    got, expected = op(K, max_norm, iterations), nash_mtl_weights(K, max_norm, iterations)
    assert got.dtype == torch.float64 and got.shape == (K.shape[0],)
    assert torch.isfinite(got).all() and (got > 0).all(), what
    assert_close_rel(got, expected, newton_bound(K, iterations), what)
    return got


@pytest.mark.parametrize("T", TASKS)
@pytest.mark.parametrize("max_norm", [0.0, 1.0, 0.05])
def test_matches_the_reference(T, max_norm):
    for seed in range(3):
        G = random_gradients(T, 2 * T + 10, seed=seed, dtype=torch.float64)
        check_against_reference(G @ G.T, max_norm, what=f"T={T} seed={seed}")


@pytest.mark.parametrize("T", [2, 5, 16, 64])
def test_solves_the_bargaining_equation(T):
    # K α = 1/α at the result: residual <= cond(H) × its evaluation error γ_{T+2} (|K||α| + 1/α).
    G = random_gradients(T, 2 * T + 10, seed=T, dtype=torch.float64)
    K = G @ G.T
    alpha = op(K, 0.0)
    cond = float(torch.linalg.cond(K + torch.diag(1 / alpha**2)))
    residual = K @ alpha - 1 / alpha
    assert (residual.abs() <= 4 * cond * gamma(T + 2, torch.float64) * (K.abs() @ alpha + 1 / alpha)).all()


@pytest.mark.parametrize("T,rank", [(3, 1), (8, 3), (33, 5), (64, 2)])
def test_rank_deficient(T, rank):
    torch.manual_seed(T)
    # Non-negative factors: no non-negative null vector, so a solution exists (φ bounded below).
    G = torch.rand(T, rank, dtype=torch.float64) @ torch.rand(rank, 40, dtype=torch.float64)
    check_against_reference(G @ G.T, 0.0, what="cone without 0")
    # Gaussian factors: 0 is in the cone of the gradients, φ is unbounded, α grows: still the
    # reference's iterates, finite.
    G = torch.randn(T, rank, dtype=torch.float64) @ torch.randn(rank, 40, dtype=torch.float64)
    check_against_reference(G @ G.T, 1.0, what="cone with 0")


def test_zero_duplicated_and_opposite_tasks():
    G = random_gradients(6, 30, seed=1, dtype=torch.float64)
    G[2] = 0  # a zero gradient
    G[4] = G[0]  # a duplicate
    G[5] = -G[1]  # an opposite
    for max_norm in (0.0, 1.0):
        check_against_reference(G @ G.T, max_norm, what=f"max_norm={max_norm}")
    # Every gradient zero: D = α, λ = sqrt(T) = 2, so each step multiplies α by 1 + 1/3 (a few
    # roundings per step, 30 steps).
    zeros = torch.zeros(4, 4, dtype=torch.float64)
    expected = torch.full((4,), (4 / 3) ** 30, dtype=torch.float64)
    assert_close_rel(op(zeros, 1.0), expected, 30 * gamma(16, torch.float64))


@pytest.mark.parametrize("T", [1, 3, 8, 33])
def test_scale_inverse(T):
    # Gradients × s make K × s² and α / s (Nash-MTL's d = Σ α_i g_i is scale-free; the cap too).
    G = random_gradients(T, 2 * T + 10, seed=3, dtype=torch.float64)
    K = G @ G.T
    alpha = op(K)
    for s in (2.0**500, 2.0**-500):  # exponent shifts only: bit for bit
        assert torch.equal(op(K * (s * s)), alpha / s)
    for s in (1e150, 1e-150):  # rounding of sG and its Gram matrix: a backward error within the bound
        scaled = s * G
        assert_close_rel(op(scaled @ scaled.T) * s, alpha, newton_bound(K) + gamma(G.shape[1] + 2, torch.float64),
                         f"s={s}")


def test_non_finite_gram_gives_nan():
    K = torch.eye(3, dtype=torch.float64)
    for bad in (math.nan, math.inf, -math.inf):
        broken = K.clone()
        broken[1, 2] = bad
        assert torch.isnan(op(broken)).all()
        for impl in ("cpp", "torch"):
            assert torch.isnan(methods.create("nash_mtl", impl=impl).weights(broken)).all()


def test_any_float_dtype_and_layout():
    G = random_gradients(5, 20, seed=4, dtype=torch.float64)
    K = G @ G.T
    expected = op(K)
    assert torch.equal(op(K.float()), op(K.float().double()))  # read in float64
    assert torch.equal(op(K.T.contiguous().T), expected)  # a non-contiguous view
    assert torch.equal(op(K.t()), op(K.t().contiguous()))


@pytest.mark.parametrize("args,match", [
    ((torch.ones(2, 3, dtype=torch.float64), 1.0, 30), "square"),
    ((torch.ones(0, 0, dtype=torch.float64), 1.0, 30), "non-empty"),
    ((torch.ones(3, dtype=torch.float64), 1.0, 30), "square"),
    ((torch.ones(2, 2, dtype=torch.int64), 1.0, 30), "floating"),
    ((torch.eye(2, dtype=torch.float64), -1.0, 30), "max_norm"),
    ((torch.eye(2, dtype=torch.float64), math.nan, 30), "max_norm"),
    ((torch.eye(2, dtype=torch.float64), math.inf, 30), "max_norm"),
    ((torch.eye(2, dtype=torch.float64), 1.0, 0), "iterations"),
    ((torch.eye(2, dtype=torch.float64), 1.0, -3), "iterations"),
])
def test_bad_arguments_raise(args, match):
    with pytest.raises(RuntimeError, match=match):
        torch.ops.fastmtl.nash_mtl_weights(*args)


@pytest.mark.parametrize("T", [2, 5, 16])
def test_method_cpp_matches_torch(T):
    for seed in range(3):
        G = random_gradients(T, 3 * T, seed=seed, dtype=torch.float64)
        K = G @ G.T
        for options in ({}, {"max_norm": 0.0}, {"max_norm": 0.3, "iterations": 5}):
            cpp = methods.create("nash_mtl", impl="cpp", **options)
            ref = methods.create("nash_mtl", impl="torch", **options)
            bound = newton_bound(K, options.get("iterations", 30))
            assert_close_rel(cpp.weights(K), ref.weights(K), bound, f"{options}")
            # The update w·G: T products more, γ_{T} on Σ|w_i g_i| (scale: the mass).
            w = cpp.weights(K)
            assert_close_rel(cpp(G), ref(G), bound + gamma(T + 1, torch.float64),
                             scale=float((w.abs() @ G.abs()).max()))


@pytest.mark.parametrize("T", [2, 3, 5])
def test_matches_torchjd(T):
    torchjd = pytest.importorskip("torchjd.aggregation")
    pytest.importorskip("cvxpy")
    pytest.importorskip("ecos")
    for seed in range(2):
        G = random_gradients(T, 300, seed=seed, dtype=torch.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # cvxpy's "not DPP" notice inside torchjd
            expected = torchjd.NashMTL(n_tasks=T)(G)
        # torchjd stops its convex programs at ECOS's default tolerances (1e-8 relative gap):
        # the tolerance is theirs, not ours.
        assert_close_rel(fastmtl.aggregate(G, "nash_mtl", impl="cpp"), expected, 1e-6)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
@pytest.mark.parametrize("T", TASKS)
def test_cuda_matches_cpu(T):
    G = random_gradients(T, 2 * T + 10, seed=5, dtype=torch.float64)
    G[0] = 0
    K = G @ G.T
    for max_norm in (0.0, 1.0):
        got = op(K.cuda(), max_norm)
        assert got.device.type == "cuda"
        # Two float64 evaluations of the same steps (the GPU may fuse multiply-adds): the bound.
        assert_close_rel(got, op(K, max_norm), newton_bound(K))
    broken = K.clone().cuda()
    broken[0, 0] = math.nan
    assert torch.isnan(op(broken)).all()
    assert torch.isnan(methods.create("nash_mtl", impl="cuda").weights(broken)).all()
    assert_close_rel(methods.create("nash_mtl", impl="cuda").weights(K.cuda()),
                     methods.create("nash_mtl", impl="torch").weights(K), newton_bound(K))
