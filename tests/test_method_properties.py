"""The method × property matrix: every gradient method, checked for each property it claims
(README's method table), on inputs where the property is not trivially true. Properties:

* non_conflicting: g_i · d >= 0 for every task, whatever G (MGDA, UPGrad, DualProj, Nash-MTL;
  PCGrad only for two tasks);
* permutation: reordering the tasks leaves d unchanged;
* scale_linear: d(cG) = c d(G) for c > 0 (Nash-MTL instead returns the same direction: α ∝ 1/c);
* single_task: d for T = 1 is a known multiple of g;
* zero: an all-zero G gives a zero update;
* overflow: finite float32 gradients whose Gram matrix overflows float32 still give a finite d.
"""

import pytest
import torch
from conftest import assert_close_rel
from oracles import random_gradients

import fastmtl
from fastmtl import methods

# ConFIG: its direction has the same positive projection on every unit task gradient when they are
# linearly independent (T <= P, as in these inputs).
NON_CONFLICTING = {"mgda", "upgrad", "dualproj", "nash_mtl", "config", "fairgrad"}
PERMUTATION_INVARIANT = {"sum", "mean", "mgda", "imtl_g", "aligned_mtl", "upgrad", "dualproj", "nash_mtl", "cagrad",
                         "graddrop", "krum", "trimmed_mean", "config", "modo", "sdmgrad", "crmogm", "excess_mtl",
                         "db_mtl", "moco", "imtl", "fairgrad"}
SCALE_LINEAR = {"sum", "mean", "pcgrad", "graddrop", "mgda", "imtl_g", "aligned_mtl", "upgrad", "dualproj", "cagrad",
                "gradvac", "random", "constant", "krum", "trimmed_mean", "config", "sdmgrad", "crmogm", "imtl", "db_mtl",
                "pcd"}
# d(cG) = d(G): Nash-MTL (α ∝ 1/c). The others are neither: MoDo's step γ(Kλ + ρλ) and ExcessMTL's
# first-step excess risks grow with c, so their weights change with the scale of G.
# MoCo: each gradient rescaled to its loss value; FairGrad: d(cG) = c^((1-α)/(1+α)) d(G), so α = 1 (OPTIONS).
SCALE_INVARIANT = {"nash_mtl", "moco", "fairgrad"}
# d for a single task g (options below): the multiple of g, or "unit" for g/|g|; None: the method
# refuses one task (ValueError), as torchjd (Krum needs T >= n_byzantine + 3, TrimmedMean T >= 2 k + 1).
SINGLE_TASK = {"sum": 1.0, "mean": 1.0, "pcgrad": 1.0, "graddrop": 1.0, "mgda": 1.0, "imtl_g": 1.0,
               "aligned_mtl": 1.0, "upgrad": 1.0, "dualproj": 1.0, "cagrad": 1.5, "gradvac": 1.0, "nash_mtl": "unit",
               "random": 1.0, "constant": 0.5, "krum": None, "trimmed_mean": None, "config": 1.0, "modo": 1.0,
               "sdmgrad": 1.0, "crmogm": 1.0, "excess_mtl": 1.0, "imtl": 1.0,
               # with the loss of run() (L = 1.5 for one task): DB-MTL's first EMA step (1 - β) g / (L + eps)
               # with β = 0; MoCo's β L g/|g| with β = 1 (eps negligible: OPTIONS)
               "db_mtl": 1 / 1.5, "moco": "1.5-unit", "pcd": 1.0, "fairgrad": "unit"}
GRADIENT_METHODS = sorted(m for m in methods.available() if methods.method_class(m).family != "loss")
# Deterministic options: index order for the order-dependent methods, a fixed stream for GradDrop.
OPTIONS = {"pcgrad": {"shuffle": False}, "gradvac": {"shuffle": False}, "cagrad": {"c": 0.5},
           "mgda": {"max_iters": 5000, "epsilon": 1e-14}, "krum": {"n_byzantine": 0, "n_selected": 2},
           "trimmed_mean": {"trim_number": 1}, "crmogm": {"base": "upgrad"}, "db_mtl": {"beta": 0.0, "eps": 1e-30},
           "moco": {"beta": 1.0, "eps": 1e-30},
           "pcd": {"tau": 0.0, "eps": 0.0}, "fairgrad": {"alpha": 1.0}}  # eps above float32's smallest normal
# Relative accuracy of each method's solve on well-conditioned float64 input: exact methods to
# rounding (a few hundred ulps through a T×T solve), iterative ones to their stopping rule.
SOLVE_RTOL = {"cagrad": 1e-5, "mgda": 1e-7}


def run(method, G, seed=0):
    options = dict(OPTIONS.get(method, {}))
    if method in ("graddrop", "random"):
        options["generator"] = torch.Generator().manual_seed(seed)
    if method == "constant":  # one weight per task, not all equal (0.5 for a single task)
        options["weights"] = torch.linspace(0.5, 2.0, G.shape[0]).tolist()
    if method == "imtl":  # its learnable loss scales s, one per task (fresh: s = 0)
        options["n_tasks"] = G.shape[0]
    if methods.method_class(method).needs_losses:
        # One loss per task, a function of its own row (so permuting the tasks permutes the losses)
        # that ignores G's scale (so scaling G does not change them): 1.5 for a single task.
        norms = G.double().norm(dim=1)
        options["losses"] = 0.5 + norms / norms.max().clamp_min(1e-300)
    return fastmtl.aggregate(G, method, **options)


def test_the_matrix_covers_every_gradient_method():
    assert set(GRADIENT_METHODS) == set(SINGLE_TASK)
    assert NON_CONFLICTING | PERMUTATION_INVARIANT | SCALE_LINEAR <= set(GRADIENT_METHODS)


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_non_conflicting(method):
    claims = method in NON_CONFLICTING
    found_conflict = False
    for seed in range(6):
        G = random_gradients(5, 200, seed=seed, dtype=torch.float64)
        G[0] *= 5  # one dominant task, opposed to the last ones: the plain sum conflicts with them
        d = run(method, G, seed)
        # The bound: rounding. G @ d and d = w·G are float64 sums of P and T terms, each within
        # γ_n ≈ n·u of Σ|terms| <= |g_i||d| (Cauchy-Schwarz), so |error| <= (P + T)·u·|g_i||d|.
        # UPGrad and DualProj solve the QP with A = K / tr K + reg·I (torchjd's regularisation),
        # whose solution v >= 0 only guarantees (K v)_i >= -reg·tr(K)·v_i: g_i · d >= -reg·tr(K)·w_i.
        u = torch.finfo(torch.float64).eps / 2
        slack = (G.shape[1] + G.shape[0]) * u * G.norm(dim=1) * d.norm()
        if method in ("upgrad", "dualproj"):
            K = G @ G.T
            slack = slack + 1e-4 * K.trace() * methods.create(method).weights(K)
        conflicts = G @ d < -slack
        if claims:
            assert not conflicts.any(), f"{method}, seed {seed}: {(G @ d).tolist()}"
        found_conflict |= bool(conflicts.any())
    if method in ("sum", "mean"):
        assert found_conflict  # the inputs do conflict: the claimed ones are not trivially true
    G = random_gradients(2, 200, seed=9, dtype=torch.float64)
    if method == "pcgrad":  # two tasks: each projected gradient is orthogonal to or agrees with the other
        d = run(method, G)
        u = torch.finfo(torch.float64).eps / 2
        assert (G @ d >= -(G.shape[1] + 2) * u * G.norm(dim=1) * d.norm()).all()


@pytest.mark.parametrize("method", sorted(PERMUTATION_INVARIANT))
def test_permutation_invariant(method):
    G = random_gradients(5, 300, seed=8, dtype=torch.float64)
    permutation = torch.tensor([3, 0, 4, 1, 2])
    assert_close_rel(run(method, G[permutation]), run(method, G), SOLVE_RTOL.get(method, 1e-10), method)


def test_order_dependent_methods_really_depend_on_the_order():
    G = random_gradients(5, 300, seed=8, dtype=torch.float64)
    permutation = torch.tensor([3, 0, 4, 1, 2])
    for method in set(GRADIENT_METHODS) - PERMUTATION_INVARIANT:
        assert not torch.allclose(run(method, G[permutation]), run(method, G)), method


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_scale(method):
    G = random_gradients(5, 300, seed=7, dtype=torch.float64)
    d, scaled = run(method, G), run(method, 8.0 * G)  # a power of two: the scaling itself is exact
    rtol = SOLVE_RTOL.get(method, 1e-10)
    if method == "gradvac":  # its eps (1e-8) in each of the T steps' denominators |g_i||g_j| + eps is not scaled
        rtol += 4 * G.shape[0] * 1e-8 / float(G.norm(dim=1).min()) ** 2
    if method in SCALE_LINEAR:
        assert_close_rel(scaled, 8.0 * d, rtol, method)
    elif method in SCALE_INVARIANT:  # Nash-MTL: α ∝ 1/c, the direction stays (then capped at max_norm)
        assert_close_rel(scaled, d, 1e-10, method)
    else:  # neither: the claim "not scale-linear" must hold too, else the matrix under-reports.
        # |g|² ~ 300 here would push MoDo's λ to a vertex of the simplex, where w stays put whatever
        # the scale: a smaller G (a power of two again) keeps it inside.
        G = G / 64
        d, scaled = run(method, G), run(method, 8.0 * G)
        assert torch.isfinite(scaled).all()
        assert (scaled - 8.0 * d).abs().max() > 1e-6 * scaled.abs().max(), method
        assert (scaled - d).abs().max() > 1e-6 * scaled.abs().max(), method


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_single_task(method):
    g = random_gradients(1, 100, seed=3, dtype=torch.float64)
    if SINGLE_TASK[method] is None:
        with pytest.raises(ValueError, match=method):
            run(method, g)
        return
    unit = g[0] / g[0].norm()
    expected = {"unit": unit, "1.5-unit": 1.5 * unit}.get(SINGLE_TASK[method], None)
    expected = SINGLE_TASK[method] * g[0] if expected is None else expected
    assert_close_rel(run(method, g), expected, 1e-12, method)


@pytest.mark.parametrize("method", GRADIENT_METHODS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_zero_gradients_give_a_zero_update(method, dtype):
    d = run(method, torch.zeros(4, 50, dtype=dtype))
    assert d.dtype == dtype and torch.equal(d, torch.zeros(50, dtype=dtype)), method


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_finite_gradients_give_a_finite_update_even_when_the_gram_matrix_overflows(method):
    # |g|² ~ 1e3 * 4e38 > float32's 3.4e38: K overflows in float32, the gradients themselves do not.
    G = (2e19 * random_gradients(3, 1000, seed=5, dtype=torch.float64)).float()
    assert torch.isfinite(G).all()
    d = run(method, G)
    assert torch.isfinite(d).all(), method
    # Same direction as the float64 computation (the float32 rounding of G and of w · G bound the gap).
    reference = run(method, G.double())
    cosine = float(d.double() @ reference / (d.double().norm() * reference.norm()))
    assert cosine > 1 - 1e-5, method
