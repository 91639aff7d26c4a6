"""Shared fixtures: which implementations and devices exist here, and dtype tolerances."""

import math

import pytest
import torch

import fastmtl

# The compiled paths are tested against impl="torch" (the reference), which is itself tested
# against independent oracles (tests/oracles.py, torchjd, scipy, hand-computed cases).
COMPILED_IMPLS = [
    pytest.param("cpp", marks=pytest.mark.skipif(not fastmtl.HAS_EXT, reason="fastmtl._C not built")),
]
ALL_IMPLS = [*COMPILED_IMPLS, "torch"]
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")]),
]
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]

# Relative error allowed on outputs stored in each dtype: a few units in the last place.
OUTPUT_RTOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rtol: float, what: str = "", scale=None) -> None:
    """max |actual - expected| <= rtol * scale, scale = max |expected| unless given (e.g. the
    input's magnitude, where the expected output cancels to ~0)."""
    actual, expected = actual.double().cpu(), expected.double().cpu()
    scale = expected.abs().max().clamp_min(1e-30) if scale is None else float(scale)
    error = (actual - expected).abs().max()
    assert error <= rtol * scale, f"{what}: max error {float(error):.3g} > {rtol:.3g} x scale {float(scale):.3g}"



# Error bounds of floating-point arithmetic, from which the tests derive their tolerances (never
# from one machine's run: BLAS libraries and CPUs sum in different orders, with or without FMA).
# Higham, "Accuracy and Stability of Numerical Algorithms" (2002), §2-3: with u the unit roundoff
# of the dtype the arithmetic runs in, a dot product or sum of n terms, in ANY order and with or
# without FMA, satisfies |fl(Σ_k a_k b_k) - Σ_k a_k b_k| <= γ_n Σ_k |a_k b_k|, γ_n = n u / (1 - n u);
# one more rounding (e.g. storing the result in another dtype) counts as one more term.
UNIT_ROUNDOFF = {torch.float64: 2.0**-53, torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


def gamma(n: int, dtype: torch.dtype) -> float:
    """γ_n = n u / (1 - n u) for the unit roundoff u of ``dtype``."""
    nu = n * UNIT_ROUNDOFF[dtype]
    assert nu < 1, f"n = {n} roundings of {dtype} have no error bound"
    return nu / (1 - nu)


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype fastmtl accumulates a dtype in (the tests restate it rather than import it)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def abs_product(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """|A| |B| in float64, rounded upwards by its own relative error bound γ_n(float64), so that it
    is never below the exact value it stands for."""
    n = A.shape[-1]
    return (A.double().abs() @ B.double().abs()) * (1 + gamma(n + 1, torch.float64))


def gram_error_bound(G: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Elementwise bound [T, T] on |K - G Gᵀ| for a Gram matrix accumulated in ``dtype`` (default:
    G's accumulation dtype) and stored in it: P products, P - 1 additions and the final rounding
    into the stored dtype, so γ_{P+1} (|G| |G|ᵀ)_ij. Input conversion to the accumulation dtype is
    exact (float16/bfloat16 values are float32 values)."""
    dtype = accumulate_dtype(G.dtype) if dtype is None else dtype
    return gamma(G.shape[1] + 1, dtype) * abs_product(G, G.T)


def weighted_sum_error_bound(G: torch.Tensor, weights=None, *, acc_dtype=None, out_dtype=None) -> torch.Tensor:
    """Elementwise bound [P] on |out_p - Σ_i w_i g_ip| for out accumulated in ``acc_dtype`` and
    stored in ``out_dtype`` (defaults: G's accumulation dtype and G's dtype), with |w_i| <= 1 when
    ``weights`` is None (GradDrop's factors, a plain sum). T products, T - 1 additions and the
    rounding of w into acc_dtype: γ_{T+1} Σ_i |w_i g_ip|; storing into out_dtype adds u_out |out_p|,
    and |out_p| <= (1 + γ_{T+1}) Σ_i |w_i g_ip|."""
    acc_dtype = accumulate_dtype(G.dtype) if acc_dtype is None else acc_dtype
    out_dtype = G.dtype if out_dtype is None else out_dtype
    w = torch.ones(G.shape[0], dtype=torch.float64) if weights is None else weights.double().cpu()
    mass = abs_product(w[None, :], G.cpu())[0]
    accumulate = gamma(G.shape[0] + 1, acc_dtype)
    return (accumulate + UNIT_ROUNDOFF[out_dtype] * (1 + accumulate)) * mass


def assert_within(actual: torch.Tensor, expected: torch.Tensor, bound, what: str = "") -> None:
    """|actual - expected| <= bound elementwise (bound: a tensor broadcastable to them, or a number)."""
    actual, expected = actual.double().cpu(), expected.double().cpu()
    bound = torch.as_tensor(bound, dtype=torch.float64).cpu()
    excess = (actual - expected).abs() - bound
    worst = int(excess.flatten().argmax())
    assert bool((excess <= 0).all()), (
        f"{what}: error {float((actual - expected).abs().flatten()[worst]):.3g} exceeds its bound "
        f"{float(bound.expand_as(excess).flatten()[worst]):.3g} at flat index {worst}"
    )


def pcgrad_coefficients(K: torch.Tensor, orders=None) -> torch.Tensor:
    """A [T, T] with g_iᴾᶜ = Σ_k A_ik g_k, by the plain Gram-space algorithm: all tasks advance
    together and every dot product g_iᴾᶜ · g_j = Σ_k A_ik K_kj is recomputed in full (O(T³)), in
    float64 on the CPU. The direct implementation the fast solves are checked against, and the
    source of the β_i of pcgrad_error_bound."""
    K = K.double().cpu()
    T = K.shape[0]
    order = torch.arange(T).expand(T, T) if orders is None else torch.as_tensor(orders).cpu()
    rows = torch.arange(T)
    A = torch.eye(T, dtype=torch.float64)
    for step in range(T):
        j = order[:, step]
        valid = (j != rows) & (j >= 0) & (j < T)
        j = j.clamp(0, T - 1)
        dot = (A * K[:, j].T).sum(1)
        norm_sq = K.diagonal()[j]
        conflict = valid & (dot < 0) & (norm_sq > 0)
        A[rows, j] -= torch.where(conflict, dot / torch.where(norm_sq > 0, norm_sq, 1.0), 0.0)
    return A


def pcgrad_error_bound(G: torch.Tensor, A: torch.Tensor, *, gram_dtype=None, exact_gram: bool = False,
                       combine_dtype=None, out_dtype=None, reduction: str = "sum") -> torch.Tensor:
    """Elementwise bound [P] on |r̂ - r|, r̂ fastmtl's PCGrad result on G (Gram-space solve in
    float64, then w · G) and r = Σ_i g_iᴾᶜ in exact arithmetic. A: the coefficients
    (pcgrad_coefficients), giving β_i = Σ_k |A_ik| |g_k| >= |g_iᴾᶜ| at every step (each task meets
    each other task once, so no coefficient is ever larger than its final value).

    * K̂ = K + E with |E_kj| <= ε_K |g_k| |g_j|, ε_K = γ_{P+1} of the Gram's dtype (Cauchy-Schwarz
      on Σ_p |g_kp g_jp|), or 0 for an ``exact_gram`` (small integers: every partial sum exact).
    * A step of task i against g_j forms d = (A K)_ij in float64 from at most 3T + 1 rounded terms
      (recomputed, incremental or blocked): |d̂ - d| <= (ε_K + γ_{3T+1}) β_i |g_j|; the coefficient
      d̂ / K̂_jj adds a relative ε_K + u. So the step moves the gradient by at most
      (2 ε_K + γ_{3T+1} + u) β_i from the exact step taken from the same point, also when the
      conflict test flips (|d| <= |d̂ - d| then, and the exact coefficient is at most that / |g_j|²).
    * An exact step g -> g - min(0, g · ĝ_j) ĝ_j is 1-Lipschitz, so the T - 1 local errors of a task
      add up without growing; a factor 1 + 2 (T - 1) local covers their second-order effect on β.
    * w = Σ_i A_i in float64: γ_T Σ_i β_i; mean: w / T, one more u.
    * w · G accumulated in ``combine_dtype``, stored in ``out_dtype``: weighted_sum_error_bound.
    The solve terms bound a 2-norm, hence every element."""
    T, P = G.shape
    f64 = torch.float64
    gram_dtype = accumulate_dtype(G.dtype) if gram_dtype is None else gram_dtype
    norms = G.double().cpu().norm(dim=1) * (1 + gamma(P + 1, f64))
    beta = abs_product(A, norms[:, None])[:, 0]
    eps_K = 0.0 if exact_gram else gamma(P + 1, gram_dtype)
    local = 2 * eps_K + gamma(3 * T + 1, f64) + UNIT_ROUNDOFF[f64]
    solve = ((T - 1) * local * (1 + 2 * (T - 1) * local) + gamma(T, f64)) * float(beta.sum())
    w = A.sum(0) / (T if reduction == "mean" else 1)
    combine = weighted_sum_error_bound(G, w, acc_dtype=combine_dtype, out_dtype=out_dtype)
    if reduction == "mean":
        combine = combine + UNIT_ROUNDOFF[f64] * abs_product(w[None, :], G.cpu())[0]
    return solve + combine


def pcgrad_per_vector_error_bound(G: torch.Tensor, reduction: str = "sum") -> float:
    """Bound on |oracle - r| for tests/oracles.py's pcgrad_per_vector (float64 vectors), r exact:
    in each of task i's T - 1 steps the dot and the norm are within γ_P |g_iᴾᶜ| |g_j| and γ_P |g_j|²,
    the division and the update g - c g_j add u each: the step errs by <= (2 γ_{P+1} + 3u) |g_i|
    from the exact step (a flipped conflict test included), and exact steps are 1-Lipschitz; the
    sum over tasks adds γ_T Σ_i |g_i|, the mean one more u."""
    T, P = G.shape
    f64 = torch.float64
    mass = float(G.double().cpu().norm(dim=1).sum()) * (1 + gamma(P + 1, f64))
    local = 2 * gamma(P + 1, f64) + 3 * UNIT_ROUNDOFF[f64]
    return ((T - 1) * local * (1 + 2 * (T - 1) * local) + gamma(T + 1, f64)) * mass


@pytest.fixture
def one_thread():
    """One torch thread for the test: small models, where threads only add overhead (and
    contention on a busy machine). Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def keep_subnormals():
    """Subnormal arithmetic for the test. The training test modules call
    torch.set_flush_denormal(True) when they are imported (collection imports every module), which
    then zeroes subnormal results in every later test, compiled kernels included: tests of exact
    scaling or of tiny magnitudes turn it off for their duration."""
    # A subnormal made at run time (a literal would be parsed while flushing may be on).
    flushing = float(torch.tensor([math.ldexp(1.0, -1060)], dtype=torch.float64) * 1.0) == 0.0
    torch.set_flush_denormal(False)
    yield
    torch.set_flush_denormal(flushing)
