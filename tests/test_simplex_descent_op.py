"""The simplex_descent_weights op (csrc/include/fastmtl/simplex_descent_math.h: MoDo's and SDMGrad's
weight descent) against the torch path of methods/stochastic_weightings.py (impl="torch"), which
tests/test_stochastic_weightings.py checks against torchjd.

Tolerance (descent_bound), both paths in float64 with unit roundoff u: a step forms p = w + λw̃
(|p|∞ <= 1 + λ, w on the simplex), the row sums of Â p (error γ_{T+4} a (1 + λ), a = ‖Â‖∞, the
normalisation's division and products included), the velocity (|v| <= a (1 + λ) / (1 - μ) plus
ρ: the geometric sum of the momentum) and y = w - lr v: an error δ = 2 (γ_{T+4} lr (a(1+λ) + ρ) /
(1 - μ) + 4u) per step between the two paths. An error e in w reaches y amplified by at most
L = 1 + lr (a + ρ) / (1 - μ), and the projection onto the simplex is 2-Lipschitz in ‖·‖∞ (θ moves
by at most the largest change of y). After n steps: e_n <= δ Σ_{k<n} (2L)^k; the weights
(w + λw̃)/(1 + λ) add 2u. The bound is computed per input from the actual ‖Â‖∞.
"""

import pytest
import torch
from conftest import gamma
from oracles import random_gradients

import fastmtl
from fastmtl import methods

pytestmark = pytest.mark.skipif(not fastmtl.HAS_EXT, reason="fastmtl._C not built")

U = torch.finfo(torch.float64).eps / 2


def descent_bound(A, T, lr, momentum, rho, lam, n_iter, normalize):
    if normalize:
        m = A.diagonal().clamp_min(0).sqrt().mean()
        A = A / (m * m + 1e-8)
    a = float(A.abs().sum(dim=1).max())
    delta = 2 * (gamma(T + 4, torch.float64) * lr * (a * (1 + lam) + rho) / (1 - momentum) + 4 * U)
    growth = 2 * (1 + lr * (a + rho) / (1 - momentum))
    return delta * sum(growth ** k for k in range(n_iter)) + 2 * U


def random_simplex(T, seed):
    w = torch.rand(T, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return w / w.sum()


@pytest.mark.parametrize("T", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("symmetric", [True, False])
def test_modo_step_matches_the_torch_path(T, seed, symmetric):
    G = random_gradients(T, 30, seed=seed, dtype=torch.float64) / 4
    H = random_gradients(T, 30, seed=seed + 50, dtype=torch.float64) / 4
    A = G @ G.T if symmetric else G @ H.T  # the paper's A = J1 J2ᵀ of two batches is not symmetric
    ours, reference = methods.create("modo", impl="cpp"), methods.create("modo", impl="torch")
    start = random_simplex(T, seed)
    ours.lam, reference.lam = start.clone(), start.clone()
    got, expected = ours.weights(A), reference.weights(A)
    bound = descent_bound(A + 0.1 * torch.eye(T, dtype=torch.float64), T, 0.1, 0.0, 0.0, 0.0, 1, False)
    assert (got - expected).abs().max() <= bound
    assert torch.equal(ours.lam, got) and abs(float(got.sum()) - 1) <= T * U and (got >= 0).all()


@pytest.mark.parametrize("T", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("seed", range(3))
def test_sdmgrad_steps_match_the_torch_path(T, seed):
    # Small steps keep the bound meaningful (the defaults lr = 10, 20 steps amplify rounding by
    # far more than 1/u: both paths then agree only as far as the same inputs are chaotic).
    options = {"lr": 0.2, "momentum": 0.5, "n_iter": 3, "lambda_": 0.3}
    G = random_gradients(T, 30, seed=seed, dtype=torch.float64)
    ours, reference = methods.create("sdmgrad", impl="cpp", **options), methods.create("sdmgrad", impl="torch", **options)
    K = G @ G.T
    for step in range(3):  # the state carries over: compare from the same stored w each time
        start = random_simplex(T, 10 * seed + step)
        ours.w, reference.w = start.clone(), start.clone()
        got, expected = ours.weights(K), reference.weights(K)
        bound = descent_bound(K, T, 0.2, 0.5, 0.0, 0.3, 3, True)
        assert (got - expected).abs().max() <= bound, step
        assert (ours.w - reference.w).abs().max() <= bound * 1.3  # w = (1 + λ) weights - λ w̃


def test_a_huge_step_lands_on_a_vertex():
    # y = w - γ A w with |A| ~ 1e12: the shift by max(y) keeps the simplex's 1 (a vertex, not zeros).
    A = torch.diag(torch.tensor([1e12, 2e12, 3e12], dtype=torch.float64))
    w = methods.create("modo", impl="cpp").weights(A)
    assert torch.equal(w, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))


def test_a_non_finite_K_gives_nan_and_keeps_the_state():
    for name in ("modo", "sdmgrad"):
        method = methods.create(name, impl="cpp")
        K = torch.eye(3, dtype=torch.float64) + 0.5
        method.weights(K)
        kept = dict(method.state_dict())
        K[1, 2] = float("nan")
        assert method.weights(K).isnan().all(), name
        assert all(torch.equal(kept[key], value) for key, value in method.state_dict().items()), name


@pytest.mark.parametrize("change,message", [
    ({"w": torch.ones(2, dtype=torch.float64)}, "w must be"),
    ({"target": torch.ones(3, dtype=torch.int64)}, "floating-point"),
    ({"lr": 0.0}, "lr > 0"), ({"momentum": 1.0}, "momentum"), ({"rho": -1.0}, "rho"),
    ({"lambda_": float("nan")}, "lambda"), ({"n_iter": 0}, "n_iter"),
])
def test_direct_calls_check_their_arguments(change, message):
    third = torch.full((3,), 1 / 3, dtype=torch.float64)
    args = {"gram": torch.eye(3, dtype=torch.float64), "w": third, "target": third, "lr": 0.1, "momentum": 0.5,
            "rho": 0.0, "lambda_": 0.3, "n_iter": 2, "normalize": True}
    args.update(change)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.fastmtl.simplex_descent_weights(*args.values())
