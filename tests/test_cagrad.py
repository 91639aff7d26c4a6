"""CAGrad where the convex hull H of the task gradients contains 0, exactly or nearly (the
Pareto-stationary case), and around it: torchjd's cvxpy solve as the oracle, plus the
optimality conditions of the paper's problem and torchjd's properties.

Notation (units where ‖G‖_F = 1, the problem torchjd and fastmtl solve): ĝ_i the normalised
gradients, g0 their mean, √φ = c|g0|, F(w) = g_wᵀg0 + √φ|g_w| on the simplex, F* its minimum,
d = g0 + √φ g_w/|g_w| the update for w (weights v = 1/T + (√φ/|g_w|) w).

The tolerances come from one inequality. For any w, d(w) lies in the ball |d - g0| <= √φ over which
d* maximises min_i ĝ_iᵀd, with value F* (minimax), so min_i ĝ_iᵀd(w) <= F*, and

    cert(w) = F(w) - min_i ĝ_iᵀd(w) = Σ_j w_j s_j - min_i s_i  (s = ĝ·d = K̂ v)   >=   F(w) - F*.

With u = g_w/|g_w| and u* = g*/|g*|: F(w) - F* >= √φ|g_w|(1 - uᵀu*) (because g_wᵀd* >= F* on H),
so |d(w) - d*|² = φ|u - u*|² <= 2 √φ cert(w) / |g_w|: any output whose certificate is known is
within that distance of the exact CAGrad update. fastmtl's documented accuracy is cert <= (1 + c)√u
(module docstring: exact face solves, whose worst part is a quadratic's double root, computed to
√u), checked by test_the_solution_is_exact; the other comparisons use it, and torchjd's Clarabel
stopping rule (see ``torchjd_gap``), for their tolerances. Every test that calls the method runs
for each implementation (``impl``): the compiled op (csrc/include/fastmtl/cagrad_math.h) is held
to the same documented accuracy as the torch reference; tests/test_cagrad_op.py checks the raw op.
"""

import math
import warnings

import numpy as np
import pytest
import torch
from conftest import ALL_IMPLS, UNIT_ROUNDOFF, gamma

import fastmtl
from fastmtl import methods

torchjd = pytest.importorskip("torchjd.aggregation")
pytest.importorskip("cvxpy")
pytestmark = pytest.mark.usefixtures("keep_subnormals")  # exact scaling and tiny magnitudes need subnormals

F64 = torch.float64
U64 = UNIT_ROUNDOFF[F64]
NORM_EPS = 1e-4  # the default of both libraries


# ----- inputs ---------------------------------------------------------------------------------------


def stationary(T: int, P: int, rank: int, seed: int, interior: bool = True) -> torch.Tensor:
    """T gradients in R^P of the given rank (<= T - 1) with vᵀG = 0 for a v >= 0: 0 is a convex
    combination of them, in the relative interior of H when v > 0 (``interior``), else on one of
    its faces (v has zeros). In float64, vᵀG is 0 up to rounding (~1e-16 ‖G‖)."""
    gen = torch.Generator().manual_seed(seed)
    v = torch.rand(T, generator=gen, dtype=F64) + 0.1
    if not interior:
        v[torch.randperm(T, generator=gen)[: max(1, T // 3)]] = 0
    v = v / v.norm()
    A = torch.randn(T, T, generator=gen, dtype=F64)
    U = torch.linalg.svd(A - v[:, None] * (v @ A)[None, :]).U[:, :rank]  # orthonormal columns ⊥ v
    V = torch.linalg.qr(torch.randn(P, P, generator=gen, dtype=F64)).Q[:, :rank]
    return (U * (torch.rand(rank, generator=gen, dtype=F64) + 0.1)) @ V.T


def shifted(G: torch.Tensor, size: float, seed: int) -> torch.Tensor:
    """G plus a common vector of norm ``size`` ‖G‖_F / √T: moves 0 out of the hull by about that."""
    gen = torch.Generator().manual_seed(seed)
    direction = torch.randn(G.shape[1], generator=gen, dtype=F64)
    return G + size * float(G.norm()) / G.shape[0] ** 0.5 * direction / direction.norm()


def rotations(norms) -> torch.Tensor:
    """Gradients at equal angles 2π/T in a plane, with the given norms."""
    T = len(norms)
    angles = torch.arange(T, dtype=F64) * 2 * math.pi / T
    return torch.stack([angles.cos(), angles.sin()], 1) * torch.tensor(norms, dtype=F64)[:, None]


# Exactly Pareto-stationary inputs: 0 is in H (up to float64 rounding of G).
HULL_CONTAINS_ZERO = {
    "opposite": torch.tensor([[1.0, 2.0], [-1.0, -2.0]], dtype=F64),
    "opposite_unequal": torch.tensor([[1.0, 0.0], [-3.0, 0.0]], dtype=F64),
    "three_at_120": rotations([1.0, 1.0, 1.0]),
    "three_at_120_unequal": rotations([1.0, 2.0, 3.0]),
    "rank_one_signs": torch.tensor([[1.0], [2.0], [-1.0], [-3.0], [0.5]], dtype=F64),
    "zero_row": torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 0.0], [0.5, 1.0, 0.0]], dtype=F64),
    "duplicated_rows": torch.cat([rotations([1.0, 2.0, 3.0])] * 2),
    "interior_T5_rank2": stationary(5, 7, 2, seed=1),
    "face_T5_rank2": stationary(5, 7, 2, seed=2, interior=False),
    "interior_T20_rank10": stationary(20, 10, 10, seed=3),
    "face_T20_rank10": stationary(20, 10, 10, seed=4, interior=False),
    "interior_T20_rank1": stationary(20, 100, 1, seed=5),
    "face_T20_rank19": stationary(20, 100, 19, seed=6, interior=False),
    "interior_T32_rank16": stationary(32, 40, 16, seed=7),
    "face_T32_rank31": stationary(32, 64, 31, seed=8, interior=False),
}
# 0 within ~1e-7 ‖G‖ of H (well inside norm_eps = 1e-4), and 0 clearly outside H.
NEARLY = {f"nearly_{name}": shifted(HULL_CONTAINS_ZERO[name], 1e-7, seed=11)
          for name in ("three_at_120_unequal", "interior_T20_rank10", "face_T32_rank31")}
OUTSIDE = {
    "outside_T8": shifted(stationary(8, 30, 7, seed=12), 0.3, seed=13),
    "outside_T32": shifted(stationary(32, 64, 31, seed=14, interior=False), 0.05, seed=15),
    "random_T12": torch.randn(12, 50, generator=torch.Generator().manual_seed(16), dtype=F64),
}
CASES = {**HULL_CONTAINS_ZERO, **NEARLY, **OUTSIDE}
C_VALUES = [0.0, 0.5, 1.0, 2.0, 10.0]


# ----- certificates and bounds --------------------------------------------------------------------------


def problem(G: torch.Tensor):
    """K̂ = Ĝ Ĝᵀ (float64; its rounding is part of ``certificate``'s slack), g0's norm and T."""
    G = G.double()
    K = G @ G.T
    K = K / K.trace()
    T = G.shape[0]
    mean = torch.full((T,), 1.0 / T, dtype=F64)
    return K, float((mean @ K @ mean).clamp_min(0).sqrt()), mean


def certificate(G: torch.Tensor, weights: torch.Tensor, c: float):
    """For a non-zero output with weights v = 1/T + (√φ/|g_w|) w (Σw = 1): an upper bound of
    cert(w) (see the module docstring), |g_w| and √φ. The slack is the rounding of this float64
    evaluation: K̂'s entries carry γ_(P+1)|ĝ_i||ĝ_j| <= γ_(P+1), K̂v and Σ_j w_j s_j two sums of T
    terms, all per unit of Σ|v_j| (1 + Σ|w_j|)."""
    K, g0_norm, mean = problem(G)
    v = weights.double().cpu()
    extra = v - mean
    ratio = float(extra.sum())  # √φ / |g_w|
    w = extra / ratio
    s = K @ v
    slack = 2 * gamma(G.shape[1] + 2 * G.shape[0] + 3, F64) * float(v.abs().sum()) * (1 + float(w.abs().sum()))
    return float(w @ s - s.min()) + slack, float((w @ K @ w).clamp_min(0).sqrt()), c * g0_norm


def accuracy(c: float) -> float:
    """fastmtl's documented accuracy: cert <= (1 + c)√u for every non-zero output."""
    return (1 + c) * math.sqrt(U64)


def distance_bound(G, weights, c) -> float:
    """|d - d*| <= √(2 √φ cert / |g_w|) in G's units for a non-zero fastmtl output, with cert at
    its documented bound (test_the_solution_is_exact checks that bound itself)."""
    _, g_norm, sqrt_phi = certificate(G, weights, c)
    return math.sqrt(2 * sqrt_phi * accuracy(c) / g_norm) * float(G.norm())


def torchjd_gap(T: int, c: float) -> float:
    """Bound of F(w_jd) - F* for torchjd's Clarabel solve at its default tolerances (tol_gap_abs =
    tol_gap_rel = tol_feas = 1e-8): the duality gap (abs + rel, |F| <= 1 + c after the
    normalisation) plus the effect of the feasibility residuals (each of T weights off by up to
    1e-8, moving F by at most max_i |∂F/∂w_i| <= 1 + c each)."""
    return 1e-8 * (1 + (1 + c)) + 1e-8 * (1 + c) * T


def torchjd_weights(G: torch.Tensor, c: float) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torchjd.CAGradWeighting(c=c)(G.double() @ G.double().T)


def combine_rounding(G: torch.Tensor, weights: torch.Tensor) -> float:
    """|fl(v·G) - v·G| in norm, float64 accumulation of T terms: γ_(T+1) ‖ |v| |G| ‖."""
    return gamma(G.shape[0] + 1, F64) * float((weights.double().abs() @ G.double().abs()).norm())


def g_norm_from_weights(weights: torch.Tensor, sqrt_phi: float) -> float:
    """|g_w| of a non-zero output: Σ(v - 1/T) = √φ / |g_w| (normalised units)."""
    return sqrt_phi / float((weights.double() - 1.0 / weights.shape[0]).sum())


def ours(G: torch.Tensor, c: float, impl: str = "torch", **options) -> torch.Tensor:
    return methods.create("cagrad", c=c, impl=impl, **options).weights(G.double() @ G.double().T)


# ----- the Pareto-stationary case ---------------------------------------------------------------------


@pytest.mark.parametrize("c", [2.0, 10.0])
@pytest.mark.parametrize("name", sorted(HULL_CONTAINS_ZERO) + sorted(NEARLY))
@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_zero_update_when_the_hull_contains_zero_and_c_exceeds_one(name, c, impl):
    # With c > 1, F(w) >= (c - 1)|g0||g_w| (Cauchy-Schwarz), so |g*| <= (1 + c)/(c - 1) · min_H |g|:
    # at most 3 · 1e-7 here (the shift of NEARLY; float64 rounding of G for the others), far
    # below norm_eps, so the update is exactly 0, as torchjd's (and 0 conflicts with no task).
    G = CASES[name]
    assert torch.equal(fastmtl.aggregate(G, "cagrad", c=c, impl=impl), torch.zeros(G.shape[1], dtype=F64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert torch.equal(torchjd.CAGrad(c=c)(G), torch.zeros(G.shape[1], dtype=F64))


@pytest.mark.parametrize("name", sorted(HULL_CONTAINS_ZERO))
@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_c_one_gives_a_zero_update_when_the_hull_contains_zero(name, impl):
    # c = 1: F >= 0 = F(g = 0), and any other minimiser g* is antiparallel to g0, where
    # d* = g0 - |g0| g0/|g0| = 0. fastmtl returns 0 or an update within its accuracy's bound of 0.
    G = HULL_CONTAINS_ZERO[name]
    weights = ours(G, 1.0, impl)
    d = weights @ G
    if torch.equal(weights, torch.zeros_like(weights)):
        return
    assert float(d.norm()) <= distance_bound(G, weights, 1.0) + combine_rounding(G, weights), name


@pytest.mark.parametrize("c", C_VALUES)
@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_matches_torchjd(name, c, impl):
    G = CASES[name]
    T = G.shape[0]
    mine = ours(G, c, impl)
    theirs = torchjd_weights(G, c)
    _, g0_norm, _ = problem(G)
    sqrt_phi = c * g0_norm
    mine_zero = torch.equal(mine, torch.zeros_like(mine))
    theirs_zero = torch.equal(theirs, torch.zeros_like(theirs))
    if mine_zero != theirs_zero:
        # The verdict |g*| < norm_eps may differ where |g*| is within the solvers' accuracy of the
        # threshold (the non-zero side's |g_w| shows how close it is), or with c = 1, where g* need
        # not be unique but d* is: 0 when 0 is in H (then the non-zero side's update must be within
        # its bound of 0). With c = 0 the outputs are g0 or 0 and must agree.
        assert c > 0, (name, mine_zero, theirs_zero)
        nonzero = theirs if mine_zero else mine
        g_norm = g_norm_from_weights(nonzero, sqrt_phi)
        if mine_zero:
            bound = math.sqrt(2 * sqrt_phi * torchjd_gap(T, c) / g_norm) * float(G.norm())
        else:
            bound = distance_bound(G, mine, c)
        d_norm = float((nonzero @ G).norm())
        assert g_norm < 4 * NORM_EPS or (c == 1 and d_norm <= bound + combine_rounding(G, nonzero)), (
            name, c, mine_zero, g_norm, d_norm)
        return
    if mine_zero:
        return
    d_mine, d_theirs = mine @ G, theirs @ G
    if c == 0:  # both are the mean: weights exactly 1/T in both libraries
        assert torch.equal(mine, theirs), name
        return
    # Each is within its bound of the exact d*: ours by its documented accuracy, torchjd's by
    # Clarabel's stopping rule.
    theirs_g = g_norm_from_weights(theirs, sqrt_phi)
    bound = (distance_bound(G, mine, c) + math.sqrt(2 * sqrt_phi * torchjd_gap(T, c) / theirs_g) * float(G.norm())
             + combine_rounding(G, mine) + combine_rounding(G, theirs))
    assert float((d_mine - d_theirs).norm()) <= bound, (name, c)


@pytest.mark.parametrize("c", [0.2, 0.5, 0.9, 1.0, 2.0, 10.0])
@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_the_solution_is_exact(name, c, impl):
    # The documented accuracy: cert <= (1 + c)√u for every non-zero output (see the docstring).
    G = CASES[name]
    weights = ours(G, c, impl)
    if torch.equal(weights, torch.zeros_like(weights)):
        return
    cert, _, _ = certificate(G, weights, c)
    assert cert <= accuracy(c), (name, c, cert)


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_hand_cases(impl):
    # [1, 0] and [-3, 0]: g0 = [-1, 0], g_w = t e1 for t in [-3, 1], F = -t + c|t|. For c < 1 the
    # minimum is at t = 1 (g_w = g_1): d = g0 + c|g0| e1 = [c - 1, 0]; for c > 1 at t = 0: d = 0.
    G = HULL_CONTAINS_ZERO["opposite_unequal"]
    for c in (0.0, 0.25, 0.5, 0.9):
        assert torch.allclose(fastmtl.aggregate(G, "cagrad", c=c, impl=impl),
                              torch.tensor([c - 1, 0.0], dtype=F64), rtol=0, atol=8 * U64)
    for c in (1.5, 2.0, 10.0):
        assert torch.equal(fastmtl.aggregate(G, "cagrad", c=c, impl=impl), torch.zeros(2, dtype=F64))
    # g0 = 0 (opposite, three at 120° with equal norms): d = g0 = 0 for every c.
    for name in ("opposite", "three_at_120"):
        for c in C_VALUES:
            d = fastmtl.aggregate(HULL_CONTAINS_ZERO[name], "cagrad", c=c, impl=impl)
            assert float(d.norm()) <= 8 * U64, (name, c)


@pytest.mark.parametrize("name", sorted(CASES))
def test_min_norm_point_is_optimal(name):
    # Wolfe's algorithm, which makes the projections of the root search (and the c = 0 face).
    # For x = g_w and any i, m² >= |x|² - 2 gap with gap = |x|² - min_i g_iᵀx (convexity of |.|²),
    # so |x|² - m² <= min(2 gap, |x|²). The stopping rule reads gap (or |x|²) <= 4 (T + 2) u max K_ii
    # on computed values, each a sum of T + 1 terms of size <= max K_ii = 1 here: their rounding,
    # γ_(T+1) each, is added. Also from a warm start and on a subset of the tasks.
    from fastmtl.methods.cagrad import min_norm_point

    K, _, _ = problem(CASES[name])
    T = K.shape[0]
    bound = 2 * (4 * (T + 2) * U64 + 2 * gamma(T + 1, F64))
    subset = torch.arange(T) < max(1, T // 2)
    last = torch.nn.functional.one_hot(torch.tensor(T - 1), T).to(F64)
    for allowed, start in ((None, None), (None, (last, last > 0)), (subset, None)):
        w, corral, done = min_norm_point(K, 2 * T + 10, allowed=allowed, start=start)
        mask = torch.ones(T, dtype=torch.bool) if allowed is None else allowed
        assert bool(done) and (w >= 0).all() and abs(float(w.sum()) - 1) <= 4 * gamma(T, F64), name
        assert torch.equal(w[~mask], torch.zeros_like(w[~mask])) and not bool((corral & ~mask).any()), name
        K_w = K @ w
        x_sq = float(w @ K_w)
        gap = x_sq - float(K_w[mask].min())
        assert min(2 * gap, x_sq) <= bound, (name, gap, x_sq)


# ----- torchjd's properties ---------------------------------------------------------------------------------


def conflict_slack(G: torch.Tensor, weights: torch.Tensor, c: float, gram_dtype: torch.dtype) -> torch.Tensor:
    """Bound [T] on how far below 0 g_i · d may be for a non-zero output with c >= 1. Exactly,
    ĝ_iᵀd >= min_i ĝ_iᵀd = F(w) - cert(w) >= F* - cert >= -cert, as F* >= 0 for c >= 1. fastmtl
    solves the problem of the Gram matrix it was given, K̃ = K + E (|E_ij| <= γ_(P+1)|g_i||g_j| in
    ``gram_dtype``), to cert <= (1 + c)√u: on the true K, ĝ_iᵀd loses at most |(Ê v)_i| <= γ_(P+1)|ĝ_i|Σ_j|v_j||ĝ_j|
    more. In G's units (× ‖G‖²_F), plus the rounding of d = v·G (accumulated in G's accumulation
    dtype, then stored in G's dtype) and of the float64 products G @ d."""
    G64 = G.double()
    P, T = G.shape[1], G.shape[0]
    row_norms = G64.norm(dim=1)
    frobenius_sq = float(G64.norm()) ** 2
    v = weights.double()
    mass = float(v.abs() @ row_norms)  # Σ_j |v_j||g_j|
    acc = torch.float64 if G.dtype == torch.float64 else torch.float32
    solve = (1 + c) * math.sqrt(U64) * frobenius_sq
    gram = gamma(P + 1, gram_dtype) * row_norms * mass
    d_error = (gamma(T + 1, acc) + UNIT_ROUNDOFF[G.dtype]) * row_norms * mass * 2
    product = gamma(P + 1, F64) * row_norms * mass * 2
    return solve + gram + d_error + product


PROPERTY_CASES = {**CASES,
                  "float32_interior_T20_rank10": HULL_CONTAINS_ZERO["interior_T20_rank10"].float(),
                  "float32_outside_T32": OUTSIDE["outside_T32"].float(),
                  "float32_scaled_1e10": 1e10 * OUTSIDE["outside_T8"].float()}


@pytest.mark.parametrize("c", [1.0, 2.0, 10.0])
@pytest.mark.parametrize("name", sorted(PROPERTY_CASES))
@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_non_conflicting_when_c_is_at_least_one(name, c, impl):
    # c >= 1 puts 0 in the ball |d - g0| <= c|g0|, so max_d min_i g_iᵀd >= 0: CAGrad's update
    # conflicts with no task (torchjd's claim for c >= 1).
    G = PROPERTY_CASES[name]
    d = fastmtl.aggregate(G, "cagrad", c=c, impl=impl)
    method = methods.create("cagrad", c=c, impl=impl)
    weights = method.weights(method.gram(G))
    if torch.equal(weights, torch.zeros_like(weights)):
        assert torch.equal(d, torch.zeros_like(d))
        return
    gram_dtype = torch.float64 if G.dtype == torch.float64 else torch.float32
    products = G.double() @ d.double()
    assert (products >= -conflict_slack(G, weights, c, gram_dtype)).all(), (name, c, float(products.min()))


@pytest.mark.parametrize("c", [0.5, 1.0, 2.0, 10.0])
@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_permutation_invariant(name, c, impl):
    G = CASES[name]
    permutation = torch.randperm(G.shape[0], generator=torch.Generator().manual_seed(0))
    straight, permuted = ours(G, c, impl), ours(G[permutation], c, impl)
    zero = torch.zeros_like(straight)
    if torch.equal(straight, zero) != torch.equal(permuted, zero):
        # Only with c = 1 and 0 in H: then -ρ g0 is in H for small ρ wherever g0's ray enters H,
        # ψ(ρ) = |p(ρ)|² - |g0|²ρ² is 0 exactly, and the verdict ψ <= 0 is decided by rounding (the
        # task order changes it). Both answers are right: d* = 0 (see test_c_one_gives_a_zero_update_
        # when_the_hull_contains_zero), so the non-zero side's update must be within its bound of 0.
        assert c == 1 and name in HULL_CONTAINS_ZERO, (name, c)
        nonzero, G_nonzero = (permuted, G[permutation]) if torch.equal(straight, zero) else (straight, G)
        d_norm = float((nonzero @ G_nonzero).norm())
        assert d_norm <= distance_bound(G_nonzero, nonzero, c) + combine_rounding(G_nonzero, nonzero), (name, d_norm)
        return
    if torch.equal(straight, zero):
        return
    # Both are within the documented accuracy's bound of the same d* (the permuted problem is the
    # same problem up to the order of the tasks).
    bound = (distance_bound(G, straight, c) + distance_bound(G[permutation], permuted, c)
             + combine_rounding(G, straight) + combine_rounding(G[permutation], permuted))
    assert float((straight @ G - permuted @ G[permutation]).norm()) <= bound, (name, c)


@pytest.mark.parametrize("frobenius_sq", [1e-3, 1e6, 1e20, 1e30])
@pytest.mark.parametrize("name", ["three_at_120_unequal", "face_T20_rank10", "nearly_interior_T20_rank10",
                                  "outside_T8", "outside_T32"])
@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_scale(name, frobenius_sq, impl):
    # d(λG) = λ d(G), from tiny gradients (‖λG‖²_F = 1e-3, just above norm_eps, below which the
    # update is 0) to huge ones: the normalised problems are the same up to rounding, so the
    # verdicts agree and both updates are within the documented accuracy's bound of λ d*.
    G = CASES[name]
    scale = math.sqrt(frobenius_sq) / float(G.norm())
    for c in (0.5, 2.0):
        plain, scaled = ours(G, c, impl), ours(scale * G, c, impl)
        zero = torch.zeros_like(plain)
        assert torch.equal(plain, zero) == torch.equal(scaled, zero), (name, scale, c)
        if torch.equal(plain, zero):
            continue
        bound = scale * (distance_bound(G, plain, c) + distance_bound(G, scaled, c)
                         + combine_rounding(G, plain) + combine_rounding(G, scaled))
        assert float((scale * (plain @ G) - scaled @ (scale * G)).norm()) <= bound * (1 + 4 * U64), (name, scale, c)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_tiny_gradients_give_zero_as_torchjd(dtype, impl):
    # ‖G‖²_F < norm_eps: both libraries replace the normalised Gram matrix by 0, hence a zero update.
    G = (1e-3 * OUTSIDE["outside_T8"] / OUTSIDE["outside_T8"].norm()).to(dtype)
    for c in C_VALUES:
        assert torch.equal(fastmtl.aggregate(G, "cagrad", c=c, impl=impl), torch.zeros(G.shape[1], dtype=dtype))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert torch.equal(torchjd.CAGrad(c=c)(G), torch.zeros(G.shape[1], dtype=dtype))


@pytest.mark.parametrize("norm_eps", [0.0, -1e-4, np.float64(-1.0), -float("inf")])
def test_norm_eps_must_be_positive(norm_eps):
    # norm_eps divides |g_w| (and ‖G‖²_F) from 0: 0 or a negative value would let the update
    # divide by |g_w| = 0 in the Pareto-stationary case.
    with pytest.raises(ValueError, match="norm_eps"):
        methods.create("cagrad", norm_eps=norm_eps)
    with pytest.raises(ValueError, match="norm_eps"):
        fastmtl.aggregate(HULL_CONTAINS_ZERO["opposite"], "cagrad", norm_eps=norm_eps)
