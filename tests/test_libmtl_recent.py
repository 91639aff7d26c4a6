"""DB-MTL, MoCo, FAMO and STCH (LibMTL's later releases, not on PyPI, so no peer to install):
each is tested against an oracle written here from the papers' / LibMTL's per-step equations
(plain loops over steps and tasks, float64, gradients of the log losses by autograd, FAMO's Adam
by torch.optim.Adam, the simplex projection by Michelot's algorithm: none shares the method's
code path), against hand-computed cases, and for options, NaN, T = 1, float32, state round-trip
and MTLOptimizer.

Tolerances come from error bounds (Higham's γ_n = n u / (1 - n u), u the unit roundoff), with
slack factor 2 for the oracle's own rounding (it obeys the same bound):

* DB-MTL. One EMA step ĝ ← h + β (ĝ - h) is a convex combination: 3 roundings, each relative to
  max(|h|, |ĝ|) <= M_t (the largest |h_tp| over the steps), so after k steps every ĝ_tp is within
  (3k + 3) u M_t (h_tp itself: one division and the rounding of 1/(L + eps)). A norm |ĝ_t| (P
  products and sums) is within (P + 2) u relative, so α_t = max|ĝ| / (|ĝ_t| + eps) within
  (2P + 6) u relative; the combine Σ_t α_t ĝ_tp adds γ_T Σ_t α_t |ĝ_tp|. Total:
  |d_p - d*_p| <= (3k + 2P + T + 12) u Σ_t α_t M_t (float32 input: u of float32, plus the final
  rounding, u |d_p|, covered by + 2).
* MoCo. y is a convex combination of normalised gradients: after k steps within
  (3k + P + 8) u max|ĝ| per entry (the normalisation L_t / (|g_t| + eps) costs P + 4 roundings,
  float32 input 2 more).
  λ ← Π(λ - γ_k M λ), M = y yᵀ + ρ I: |y_t| <= Y = max L (ĝ_t has norm L_t, y is a convex
  combination), and the row error of y has norm <= (3k + P + 8) u √k Y (Σ_p max_k ĝ_kp² <= k Y²),
  so M_ij is within n_M u Y², n_M = P + 2 + 2 (3k + P + 8) √k; (M λ)_i within that (Σ λ = 1) plus
  γ_T; Π (projection or softmax) is 1-Lipschitz in the ∞-norm to within T u, so λ's error obeys
  e_k <= (1 + γ_k |M|_∞) e_{k-1} + γ_k (n_M Y² + T) u + 4 T u, which the test accumulates from the
  oracle's own M (the losses are kept of order 1, so that γ_k |M|_∞ is too and the worst-case
  amplification stays small); d = yᵀλ then errs by at most
  e_k Σ_t |y_tp| + Σ_t λ_t err(y_tp) + γ_T Σ_t λ_t |y_tp|.
* FAMO. ξ's Adam step moves each ξ_t by gamma · m̂/(√v̂ + eps): the gradient z⊙δ - z(zᵀδ) is
  computed with a different grouping than autograd's softmax backward, so it differs by at
  most (2T + 8) u |z| |δ|_∞ per entry, i.e. a relative error κ (2T + 8) u in m̂ and v̂ with
  κ = |δ|_∞ / min_t |grad_t| (measured from the oracle), and ξ moves by at most
  gamma (3 κ (2T + 8) + 8) u per step; z = softmax(ξ) then has relative error <= 2 |Δξ|_∞ + (T+4) u,
  the weights z / (c D) twice that plus (T + 6) u, the loss likewise (log D exact to u).
* STCH. Loss and weights are sums of T terms of log/exp of ratios: relative error
  <= (4T + 20) u of the sum of |terms| (exp and log to 1 u each, as the platform's libm).
"""

import copy
import math

import pytest
import tiny_models
import torch

import fastmtl
from fastmtl import methods
from fastmtl.methods.stochastic_weightings import project_onto_simplex as project_simplex

U64, U32 = 2.0**-53, 2.0**-24


# ----- inputs: toy tasks whose losses and gradients come from autograd --------------------------


def toy_problem(T: int, P: int, steps: int, seed: int = 0, squash: float | None = None):
    """Per step: θ (a float64 leaf) and T quadratic losses L_t(θ) = mean((A θ - b)²) + c_t, with
    the step's data (or squash · log(1 + L_t): losses of order squash); returns a list of
    (theta, losses) with the graph kept."""
    gen = torch.Generator().manual_seed(seed)
    problems = []
    for _ in range(steps):
        theta = torch.randn(P, generator=gen, dtype=torch.float64).requires_grad_(True)
        losses = []
        for t in range(T):
            A = torch.randn(4, P, generator=gen, dtype=torch.float64) * (1 + t)
            b = torch.randn(4, generator=gen, dtype=torch.float64)
            loss = ((A @ theta - b) ** 2).mean() * (0.5 + t) + 0.1
            losses.append(loss if squash is None else squash * torch.log1p(loss))
        problems.append((theta, losses))
    return problems


def rows(theta, losses):
    return torch.stack([torch.autograd.grad(loss, theta, retain_graph=True)[0] for loss in losses])


def values(losses):
    return torch.stack([loss.detach() for loss in losses])


# ----- DB-MTL -----------------------------------------------------------------------------------


def db_mtl_oracle(problems, beta, beta_sigma, eps=1e-8):
    """LibMTL's DB_MTL step by step: the gradient of log(L_t + eps) by autograd, the EMA
    buffer (zero start), each row rescaled to the largest norm, summed. Also returns the bound's
    Σ_t α_t M_t for each step."""
    T, P = len(problems[0][1]), problems[0][0].numel()
    buffer = [torch.zeros(P, dtype=torch.float64) for _ in range(T)]
    largest = [0.0] * T
    results = []
    for k, (theta, losses) in enumerate(problems, start=1):
        beta_k = beta / k**beta_sigma
        for t in range(T):
            h = torch.autograd.grad(torch.log(losses[t] + eps), theta, retain_graph=True)[0]
            largest[t] = max(largest[t], float(h.abs().max()))
            buffer[t] = h + beta_k * (buffer[t] - h)
        norms = [math.sqrt(sum(float(x) ** 2 for x in buffer[t])) for t in range(T)]
        alpha = [max(norms) / (n + eps) for n in norms]
        d = sum(alpha[t] * buffer[t] for t in range(T))
        results.append((d, sum(alpha[t] * largest[t] for t in range(T))))
    return results


@pytest.mark.parametrize("beta,beta_sigma", [(0.9, 0.0), (0.9, 0.5), (0.3, 1.0), (0.0, 0.0)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_db_mtl_matches_the_oracle_over_steps(beta, beta_sigma, dtype):
    # float32: G and the losses are rounded to float32 (2 more roundings per h_tp: + 2 in the
    # bound) and the method computes in float32; the oracle stays float64 on the exact inputs.
    T, P, steps = 3, 30, 5
    problems = toy_problem(T, P, steps, seed=1)
    method = methods.create("db_mtl", beta=beta, beta_sigma=beta_sigma)
    u = U64 if dtype == torch.float64 else U32
    for k, ((theta, losses), (d_star, mass)) in enumerate(zip(problems, db_mtl_oracle(problems, beta, beta_sigma)),
                                                          start=1):
        d = fastmtl.aggregate(rows(theta, losses).to(dtype), method, losses=values(losses).to(dtype))
        assert d.dtype == dtype and d.shape == (P,)
        error, bound = float((d.double() - d_star).abs().max()), 2 * (3 * k + 2 * P + T + 14) * u * mass
        assert error <= bound, (k, error, bound)
        assert error > 0 or dtype == torch.float64  # float32 does round: the comparison is not vacuous


def test_db_mtl_hand_cases():
    G = torch.tensor([[3.0, 4.0], [0.0, 1.0]], dtype=torch.float64)
    ones = torch.ones(2, dtype=torch.float64)
    # beta = 0: no memory. Norms 5 and 1 (losses 1): α = (1, 5), d = (3, 4) + 5 (0, 1) = (3, 9).
    d = fastmtl.aggregate(G, "db_mtl", beta=0.0, losses=ones)
    assert torch.allclose(d, torch.tensor([3.0, 9.0], dtype=torch.float64), rtol=1e-7)
    # Losses (2, 0.5): h = (1.5, 2), (0, 2); norms 2.5, 2: α = (1, 1.25), d = (1.5, 2 + 2.5).
    d = fastmtl.aggregate(G, "db_mtl", beta=0.0, losses=torch.tensor([2.0, 0.5], dtype=torch.float64))
    assert torch.allclose(d, torch.tensor([1.5, 4.5], dtype=torch.float64), rtol=1e-7)
    # LibMTL's zero-start EMA: the first step is (1 - β) times that; the second (β_2 = 0.9/√2)
    # on the same G: ĝ = (1 - β_2 β_1) h with β_1 = 0.9 ... every row alike, so d scales alike.
    method = methods.create("db_mtl", beta=0.9, beta_sigma=0.5)
    d1 = fastmtl.aggregate(G, method, losses=ones)
    assert torch.allclose(d1, 0.1 * torch.tensor([3.0, 9.0], dtype=torch.float64), rtol=1e-7)
    d2 = fastmtl.aggregate(G, method, losses=ones)
    beta_2 = 0.9 / math.sqrt(2)
    assert torch.allclose(d2, (1 - beta_2 * 0.9) * torch.tensor([3.0, 9.0], dtype=torch.float64), rtol=1e-7)
    assert int(method.steps) == 2


def test_db_mtl_single_task_and_zero_gradient():
    g = torch.tensor([[1.0, -2.0, 2.0]], dtype=torch.float64)
    d = fastmtl.aggregate(g, "db_mtl", losses=torch.tensor([4.0], dtype=torch.float64))
    norm = 0.1 * 3 / (4 + 1e-8)
    assert torch.allclose(d, 0.1 * g[0] / (4 + 1e-8) * norm / (norm + 1e-8), rtol=1e-14, atol=0)
    d = fastmtl.aggregate(torch.zeros(2, 3, dtype=torch.float64), "db_mtl", losses=torch.ones(2, dtype=torch.float64))
    assert torch.equal(d, torch.zeros(3, dtype=torch.float64))


# ----- MoCo -------------------------------------------------------------------------------------


def michelot(v):
    """Projection onto the simplex by Michelot's (1986) algorithm: drop coordinates that fall
    below the common shift until none does (finite, exact up to rounding)."""
    active = list(range(len(v)))
    while True:
        theta = (sum(v[i] for i in active) - 1) / len(active)
        kept = [i for i in active if v[i] - theta > 0]
        if len(kept) == len(active):
            break
        active = kept
    return [max(x - theta, 0.0) for x in v]


def moco_oracle(problems, beta, beta_sigma, gamma, gamma_sigma, rho, lambda_map, eps=1e-8, u=U64):
    """MoCo as LibMTL writes it (normalised gradients times the loss, y tracking, λ step with the
    paper's projection or LibMTL's softmax), in Python floats; with the bound of the module
    docstring for unit roundoff u (float32 input: its rounding is 2 more u in the normalisation)."""
    T, P = len(problems[0][1]), problems[0][0].numel()
    y = [[0.0] * P for _ in range(T)]
    lambd = [1.0 / T] * T
    lam_err, largest, Y, results = 0.0, 0.0, 0.0, []
    for k, (theta, losses) in enumerate(problems, start=1):
        beta_k, gamma_k = beta / k**beta_sigma, gamma / k**gamma_sigma
        for t in range(T):
            g = torch.autograd.grad(losses[t], theta, retain_graph=True)[0].tolist()
            scale = float(losses[t].detach()) / (math.sqrt(sum(x * x for x in g)) + eps)
            normalised = [x * scale for x in g]
            largest = max(largest, max(abs(x) for x in normalised))
            Y = max(Y, abs(float(losses[t].detach())))  # |ĝ_t| = L_t, so every |y_t| <= Y
            y[t] = [a - beta_k * (a - b) for a, b in zip(y[t], normalised)]
        M = [[sum(a * b for a, b in zip(y[i], y[j])) + (rho if i == j else 0.0) for j in range(T)] for i in range(T)]
        v = [lambd[i] - gamma_k * sum(M[i][j] * lambd[j] for j in range(T)) for i in range(T)]
        if lambda_map == "projection":
            lambd = michelot(v)
        else:
            top = max(v)
            e = [math.exp(x - top) for x in v]
            lambd = [x / sum(e) for x in e]
        # The bound on λ's error (module docstring), accumulated step by step.
        y_err = (3 * k + P + 8) * u * largest
        n_m = P + 2 + 2 * (3 * k + P + 8) * math.sqrt(k)  # |ΔM_ij| <= n_m u Y² (module docstring)
        m_inf = max(sum(abs(x) for x in row) for row in M)
        lam_err = (1 + gamma_k * m_inf) * lam_err + gamma_k * (n_m * Y**2 + T) * u + 4 * T * u
        d = [sum(lambd[t] * y[t][p] for t in range(T)) for p in range(P)]
        bound = [lam_err * sum(abs(y[t][p]) for t in range(T)) + y_err + (T + 1) * u * sum(
            lambd[t] * abs(y[t][p]) for t in range(T)) for p in range(P)]
        results.append((torch.tensor(d, dtype=torch.float64), torch.tensor(bound, dtype=torch.float64),
                        torch.tensor(lambd, dtype=torch.float64), lam_err))
    return results


@pytest.mark.parametrize("lambda_map", ["projection", "softmax"])
@pytest.mark.parametrize("options,squash,dtype", [
    ({}, 0.3, torch.float64), ({}, 0.3, torch.float32),
    # Large steps on λ, so the projection clips a task to 0; float64 only: the worst-case
    # amplification (1 + γ_k |M|_∞) per step makes the float32 bound too loose to test anything.
    ({"beta": 0.9, "beta_sigma": 0.0, "gamma": 5.0, "gamma_sigma": 0.5, "rho": 0.1}, 0.15, torch.float64)])
def test_moco_matches_the_oracle_over_steps(lambda_map, options, squash, dtype):
    T, P, steps = 3, 20, 6
    problems = toy_problem(T, P, steps, seed=2, squash=squash)
    full = {"beta": 0.5, "beta_sigma": 0.5, "gamma": 0.1, "gamma_sigma": 0.5, "rho": 0.0, **options}
    expected = moco_oracle(problems, **full, lambda_map=lambda_map, u=U64 if dtype == torch.float64 else U32)
    method = methods.create("moco", **options, lambda_map=lambda_map)
    projected_somewhere = False
    for (theta, losses), (d_star, bound, lambd, lambd_bound) in zip(problems, expected):
        d = fastmtl.aggregate(rows(theta, losses).to(dtype), method, losses=values(losses).to(dtype))
        assert d.dtype == dtype
        assert bool(((d.double() - d_star).abs() <= 2 * bound).all()), float((d.double() - d_star).abs().max())
        assert float((method.lambd - lambd).abs().max()) <= 2 * lambd_bound
        assert float(bound.max()) <= (1e-9 if dtype == torch.float64 else 1e-3) * float(d_star.abs().max())  # not vacuous
        projected_somewhere |= bool((lambd == 0).any())
    if lambda_map == "projection" and options:  # large γ: the projection does clip a task to 0
        assert projected_somewhere


def test_moco_hand_case():
    # Orthogonal gradients, losses (2, 1): ĝ = (2 e1, e2) (normalised, times the loss); β = 1,
    # so y = ĝ; M = diag(4, 1); λ - 0.1 M λ = (0.3, 0.45); projection adds 0.125 to each:
    # λ = (0.425, 0.575), d = (0.85, 0.575). Softmax instead: λ = softmax(0.3, 0.45).
    G = torch.tensor([[5.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    losses = torch.tensor([2.0, 1.0], dtype=torch.float64)
    method = methods.create("moco", beta=1.0, gamma=0.1)
    d = fastmtl.aggregate(G, method, losses=losses)
    assert torch.allclose(d, torch.tensor([0.85, 0.575], dtype=torch.float64), rtol=1e-8)
    assert torch.allclose(method.lambd, torch.tensor([0.425, 0.575], dtype=torch.float64), rtol=1e-8)
    method = methods.create("moco", beta=1.0, gamma=0.1, lambda_map="softmax")
    d = fastmtl.aggregate(G, method, losses=losses)
    lam = torch.softmax(torch.tensor([0.3, 0.45], dtype=torch.float64), 0)
    assert torch.allclose(d, torch.tensor([2 * lam[0], lam[1]]).double(), rtol=1e-8)
    # Step 2, β_2 = 1/√2: y keeps ĝ (same input), γ_2 = 0.1/√2 from λ = (0.425, 0.575).
    method = methods.create("moco", beta=1.0, gamma=0.1)
    for _ in range(2):
        fastmtl.aggregate(G, method, losses=losses)
    g2 = 0.1 / math.sqrt(2)
    step = [0.425 - g2 * 4 * 0.425, 0.575 - g2 * 0.575]
    assert torch.allclose(method.lambd, torch.tensor(michelot(step), dtype=torch.float64), rtol=1e-8)


def test_moco_single_task():
    g = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    d = fastmtl.aggregate(g, "moco", losses=torch.tensor([2.0], dtype=torch.float64))
    assert torch.allclose(d, 0.5 * 2.0 * g[0] / (5 + 1e-8), rtol=1e-14, atol=0)  # β_1 L g/|g|, λ = 1


def test_simplex_projection():
    gen = torch.Generator().manual_seed(0)
    for T in (1, 2, 3, 7):
        for _ in range(20):
            v = torch.randn(T, generator=gen, dtype=torch.float64) * 3
            p = project_simplex(v)
            assert torch.allclose(p, torch.tensor(michelot(v.tolist()), dtype=torch.float64), rtol=0, atol=8 * T * U64 * 10)
            assert bool((p >= 0).all()) and abs(float(p.sum()) - 1) <= 4 * T * U64
            assert torch.allclose(project_simplex(p), p, rtol=0, atol=8 * T * U64)
    assert torch.equal(project_simplex(torch.tensor([2.0, 0.0], dtype=torch.float64)),
                       torch.tensor([1.0, 0.0], dtype=torch.float64))
    assert torch.equal(project_simplex(torch.tensor([0.25, 0.75], dtype=torch.float64)),
                       torch.tensor([0.25, 0.75], dtype=torch.float64))
    assert torch.isnan(project_simplex(torch.tensor([float("nan"), 1.0]))).any()  # no index error


# ----- FAMO -------------------------------------------------------------------------------------


def famo_oracle(loss_values, gamma, weight_decay, min_losses, eps=1e-8):
    """LibMTL's FAMO with update_w applied at the next step (the one-backward form): torch.optim.Adam
    on w, the gradient of softmax(w) against δ by autograd. Per step: the weights dloss/dL_t, the
    loss value, and the bound's |Δξ|_∞ of the step."""
    T = loss_values[0].numel()
    w = torch.zeros(T, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([w], lr=gamma, weight_decay=weight_decay)
    minimum = torch.as_tensor(min_losses, dtype=torch.float64)
    previous, drift, results = None, 0.0, []
    for current in loss_values:
        if previous is not None:
            delta = (previous - minimum + eps).log() - (current - minimum + eps).log()
            d = torch.autograd.grad(torch.softmax(w, -1), w, grad_outputs=delta)[0]
            grad = (d + weight_decay * w.detach()).abs()
            opt.zero_grad()
            w.grad = d
            opt.step()
            kappa = float(delta.abs().max() / grad.min().clamp_min(1e-300))
            drift += gamma * (3 * kappa * (2 * T + 8) + 8) * U64
        previous = current
        L = current.clone().requires_grad_(True)
        z = torch.softmax(w.detach(), -1)
        D = L - minimum + eps
        c = (z / D).sum().detach()
        loss = (D.log() * z / c).sum()
        results.append((float(loss.detach()), torch.autograd.grad(loss, L)[0], drift, w.detach().clone()))
    return results


def loss_sequence(T, steps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    level = torch.rand(T, generator=gen, dtype=torch.float64) * 3 + 0.5
    out = []
    for _ in range(steps):
        level = level * (0.7 + 0.4 * torch.rand(T, generator=gen, dtype=torch.float64))
        out.append(level.clone())
    return out


def famo_step(method, current, dtype=torch.float64):
    L = current.to(dtype).clone().requires_grad_(True)
    loss = method.loss(list(L.unbind()), None)
    return loss, torch.autograd.grad(loss, L)[0]


@pytest.mark.parametrize("options", [{}, {"gamma": 0.3, "weight_decay": 0.0, "min_losses": 0.1},
                                     {"weight_decay": 0.05, "min_losses": [0.0, 0.2, 0.1, 0.3]}])
def test_famo_matches_the_oracle_over_steps(options):
    T, steps = 4, 8
    sequence = loss_sequence(T, steps)
    full = {"gamma": 0.025, "weight_decay": 0.001, "min_losses": 0.0, **options}
    method = methods.create("famo", n_tasks=T, **options)
    for current, (value, weights, drift, w) in zip(sequence, famo_oracle(sequence, **full)):
        loss, grad = famo_step(method, current)
        rel = 4 * drift + (3 * T + 16) * U64
        assert abs(float(loss.detach()) - value) <= 2 * rel * abs(value) + 2 * (T + 4) * U64 * max(1.0, abs(value))
        assert torch.allclose(grad, weights, rtol=2 * rel, atol=0)
        assert torch.allclose(method._state["xi"], w, rtol=0, atol=2 * drift + 1e-300)
        assert abs(float(grad.sum()) - 1) <= 4 * T * U64 + 2 * rel  # weights sum to 1


def test_famo_hand_cases():
    method = methods.create("famo", n_tasks=2)
    # Step 1: z uniform, D = (1, 2): c = 0.5 (1 + 1/2) = 0.75, loss = 0.5 log 2 / 0.75,
    # weights z / (c D) = (2/3, 1/3).
    loss, grad = famo_step(method, torch.tensor([1.0, 2.0], dtype=torch.float64))
    assert math.isclose(float(loss.detach()), 0.5 * math.log(2) / 0.75, rel_tol=1e-7)
    assert torch.allclose(grad, torch.tensor([2 / 3, 1 / 3], dtype=torch.float64), rtol=1e-7)
    # Step 2: task 0 halves its loss, δ = (log 2, 0): grad ξ = z δ - z (z·δ) = (log 2 / 4, -log 2 / 4);
    # Adam's first step moves each ξ_t by gamma · sign: ξ = (-0.025, 0.025) (the improving task
    # loses weight).
    loss, grad = famo_step(method, torch.tensor([0.5, 2.0], dtype=torch.float64))
    xi = torch.tensor([-0.025, 0.025], dtype=torch.float64)
    assert torch.allclose(method._state["xi"], xi, rtol=1e-6)
    z = torch.softmax(xi, 0)
    D = torch.tensor([0.5, 2.0], dtype=torch.float64)
    c = (z / D).sum()
    assert torch.allclose(grad, z / (c * D), rtol=1e-7)
    assert torch.allclose(method.task_weights(), z, rtol=1e-6)


def test_famo_single_task():
    method = methods.create("famo", n_tasks=1)
    for value in (2.0, 1.5, 3.0):
        loss, grad = famo_step(method, torch.tensor([value], dtype=torch.float64))
        assert math.isclose(float(loss.detach()), (value + 1e-8) * math.log(value + 1e-8), rel_tol=1e-14)
        assert torch.allclose(grad, torch.ones(1, dtype=torch.float64), rtol=1e-14)
    assert torch.equal(method._state["xi"], torch.zeros(1, dtype=torch.float64))  # softmax of one logit: no gradient


# ----- STCH -------------------------------------------------------------------------------------


def stch_oracle(loss_values, warmup_steps, nadir_steps, mu):
    """LibMTL's STCH with steps for epochs: Σ log(L + 1e-20) for the first warmup_steps steps,
    the nadir the mean of the last nadir_steps of them, then T mu log Σ exp(log(L/n + 1e-20) / mu)."""
    window = loss_values[warmup_steps - nadir_steps:warmup_steps]
    T = loss_values[0].numel()
    nadir = [sum(float(v[t]) for v in window) / len(window) for t in range(T)] if window else [1.0] * T
    results = []
    for k, current in enumerate(loss_values):
        L = current.clone().requires_grad_(True)
        if k < warmup_steps:
            loss = sum(torch.log(L[t] + 1e-20) for t in range(T))
            scale, largest = sum(abs(math.log(float(x))) for x in current), 0.0
        else:
            logs = [torch.log(L[t] / nadir[t] + 1e-20) for t in range(T)]
            loss = T * mu * torch.log(sum(torch.exp(x / mu) for x in logs))
            largest = max(abs(float(x.detach())) for x in logs)
            scale = T * (largest + mu * math.log(T) + 3)
        results.append((float(loss.detach()), torch.autograd.grad(loss, L)[0], scale, largest))
    return results


@pytest.mark.parametrize("warmup_steps,nadir_steps,mu", [(3, None, 1.0), (4, 2, 0.3), (0, None, 2.0), (2, 1, 1e-2)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_stch_matches_the_oracle_over_steps(warmup_steps, nadir_steps, mu, dtype):
    T, steps = 3, 8
    sequence = [v.to(dtype).double() for v in loss_sequence(T, steps, seed=3)]
    method = methods.create("stch", warmup_steps=warmup_steps, nadir_steps=nadir_steps, mu=mu)
    expected = stch_oracle(sequence, warmup_steps, warmup_steps if nadir_steps is None else nadir_steps, mu)
    u = U64 if dtype == torch.float64 else U32
    n = warmup_steps if nadir_steps is None else nadir_steps
    for k, (current, (value, weights, scale, largest)) in enumerate(zip(sequence, expected)):
        loss, grad = famo_step(method, current, dtype)
        assert loss.dtype == dtype
        # l_t = log(L_t / n_t) errs by (n + 4) u (1 + |l_t|) (the nadir's mean of n values, the
        # ratio, the log); the log-sum-exp, times T mu, adds (T + 4) u of its own sum of |terms|:
        # the loss within (4T + 20 + n) u of ``scale``. A weight T softmax_t / L_t errs relatively
        # by 2 (n + 4) u (1 + max|l|) / mu (through exp(l/mu) and its normalisation) + (T + 6) u.
        assert abs(float(loss.detach()) - value) <= 2 * (4 * T + 20 + n) * u * scale, k
        # A softmax term below the smallest normal number may flush to zero: T tiny / L_t absolute.
        rtol = 2 * (2 * (n + 4) * (1 + largest) / mu + T + 6) * u
        atol = T * torch.finfo(dtype).tiny / float(current.min())
        assert torch.allclose(grad.double(), weights, rtol=rtol, atol=atol), k
    assert int(method.steps) == steps


def test_stch_hand_case():
    method = methods.create("stch", warmup_steps=2)
    loss, grad = famo_step(method, torch.tensor([1.0, 4.0], dtype=torch.float64))
    assert math.isclose(float(loss.detach()), math.log(4), rel_tol=1e-12)  # warmup: Σ log L_t
    assert torch.allclose(grad, torch.tensor([1.0, 0.25], dtype=torch.float64))
    famo_step(method, torch.tensor([3.0, 2.0], dtype=torch.float64))
    assert torch.allclose(method.nadir(), torch.tensor([2.0, 3.0], dtype=torch.float64))
    # At the nadir: every l_t = 0, loss = T mu log T; weights T · (1/T) / L_t.
    loss, grad = famo_step(method, torch.tensor([2.0, 3.0], dtype=torch.float64))
    assert math.isclose(float(loss.detach()), 2 * math.log(2), rel_tol=1e-12)
    assert torch.allclose(grad, torch.tensor([1 / 2, 1 / 3], dtype=torch.float64))
    # Small mu: close to T · max_t l_t, all the weight on the worst task.
    method = methods.create("stch", warmup_steps=0, mu=1e-3)
    loss, grad = famo_step(method, torch.tensor([1.0, math.e], dtype=torch.float64))
    assert math.isclose(float(loss.detach()), 2.0, rel_tol=1e-6)
    assert torch.allclose(grad, torch.tensor([0.0, 2 / math.e], dtype=torch.float64), atol=1e-12)


def test_stch_single_task():
    method = methods.create("stch", warmup_steps=1)
    famo_step(method, torch.tensor([4.0], dtype=torch.float64))
    loss, grad = famo_step(method, torch.tensor([2.0], dtype=torch.float64))
    assert math.isclose(float(loss.detach()), math.log(0.5 + 1e-20), rel_tol=1e-14)  # T = 1: mu LSE(l/mu) = l
    assert torch.allclose(grad, torch.tensor([0.5], dtype=torch.float64), rtol=1e-14)


# ----- common: options, NaN, state, fresh -------------------------------------------------------

BAD_OPTIONS = [
    ("db_mtl", {"beta": 1.5}, ValueError, "beta"), ("db_mtl", {"beta_sigma": -1}, ValueError, "beta_sigma"),
    ("db_mtl", {"eps": 0}, ValueError, "eps"), ("db_mtl", {"beta": "x"}, TypeError, "beta"),
    ("moco", {"gamma": -0.1}, ValueError, "gamma"), ("moco", {"rho": -1}, ValueError, "rho"),
    ("moco", {"lambda_map": "sparsemax"}, ValueError, "lambda_map"), ("moco", {"beta": 2}, ValueError, "beta"),
    ("moco", {"gamma_sigma": float("nan")}, ValueError, "gamma_sigma"),
    ("famo", {}, TypeError, "n_tasks"), ("famo", {"n_tasks": 0}, ValueError, "n_tasks"),
    ("famo", {"n_tasks": 2, "gamma": 0}, ValueError, "gamma"),
    ("famo", {"n_tasks": 2, "weight_decay": -1}, ValueError, "weight_decay"),
    ("famo", {"n_tasks": 2, "min_losses": [0, 1, 2]}, ValueError, "min_losses"),
    ("famo", {"n_tasks": 2, "min_losses": "0"}, TypeError, "min_losses"),
    ("stch", {}, TypeError, "warmup_steps"), ("stch", {"warmup_steps": -1}, ValueError, "warmup_steps"),
    ("stch", {"warmup_steps": 2, "nadir_steps": 3}, ValueError, "nadir_steps"),
    ("stch", {"warmup_steps": 2, "nadir_steps": 0}, ValueError, "nadir_steps"),
    ("stch", {"warmup_steps": 2, "mu": 0}, ValueError, "mu"), ("stch", {"warmup_steps": 1.5}, TypeError, "warmup_steps"),
]


@pytest.mark.parametrize("name,options,error,match", BAD_OPTIONS)
def test_bad_options(name, options, error, match):
    with pytest.raises(error, match=match):
        methods.create(name, **options)


def test_gradient_methods_need_losses_and_whole_rows():
    G = torch.randn(2, 5, dtype=torch.float64)
    for name in ("db_mtl", "moco"):
        method = methods.create(name)
        assert method.needs_losses and method.family == "elementwise"
        with pytest.raises(ValueError, match="needs the task losses"):
            method(G)
        method.take_losses(torch.ones(3))
        with pytest.raises(ValueError, match="3 losses for the 2 rows"):
            method(G)
        method.take_losses(torch.ones(2))
        with pytest.raises(ValueError, match="column_offset"):
            method(G, column_offset=3)
        method.take_losses(torch.ones(2))
        with pytest.raises(ValueError, match="feature mode"):
            method(G, signs=torch.ones_like(G), batch=1)
    for name, options in (("famo", {"n_tasks": 2}), ("stch", {"warmup_steps": 1})):
        with pytest.raises(TypeError, match="no aggregate"):
            methods.create(name, **options)(G)
    with pytest.raises(ValueError, match="expected 2 losses"):
        methods.create("famo", n_tasks=2).loss([torch.ones(())] * 3, None)


def run_gradient(method, problems, start=0, dtype=torch.float64, poison=None):
    outs = []
    for k, (theta, losses) in enumerate(problems[start:], start=start):
        G, L = rows(theta, losses).to(dtype), values(losses).to(dtype)
        if poison == k:
            G = G.clone()
            G[0, 1] = float("nan")
        outs.append(fastmtl.aggregate(G, method, losses=L))
    return outs


def run_loss(method, sequence, start=0, poison=None):
    outs = []
    for k, current in enumerate(sequence[start:], start=start):
        current = current.clone()
        if poison == k:
            current[1] = float("inf")
        outs.append(famo_step(method, current))
    return outs


CASES = [("db_mtl", {"beta_sigma": 0.5}), ("moco", {}), ("moco", {"lambda_map": "softmax"}),
         ("famo", {"n_tasks": 3}), ("stch", {"warmup_steps": 2})]


def run_case(method, start=0, poison=None, steps=6):
    if method.family == "loss":
        return run_loss(method, loss_sequence(3, steps, seed=4), start, poison)
    return run_gradient(method, toy_problem(3, 7, steps, seed=4), start, poison=poison)


def flat(result):
    return torch.cat([r.reshape(-1) for r in result]) if isinstance(result, tuple) else result


@pytest.mark.parametrize("name,options", CASES)
def test_state_round_trip_continues_identically(name, options):
    method = methods.create(name, **options)
    run_case(method, steps=3)
    saved = copy.deepcopy(method.state_dict())
    twin = method.fresh()
    assert twin.state_dict() == {} and twin.options == method.options
    twin.load_state_dict(saved)
    for a, b in zip(run_case(method, start=3), run_case(twin, start=3)):
        assert torch.equal(flat(a), flat(b))
    method.load_state_dict({})  # an empty state: back to the start
    assert method.state_dict() == {}
    with pytest.raises(ValueError, match="keys"):
        method.load_state_dict({"bogus": torch.zeros(1)})


def test_state_shape_and_option_checks():
    famo = methods.create("famo", n_tasks=3)
    run_case(famo, steps=2)
    with pytest.raises(ValueError, match="shape"):
        methods.create("famo", n_tasks=2).load_state_dict(famo.state_dict())
    stch = methods.create("stch", warmup_steps=2)
    run_case(stch, steps=2)
    with pytest.raises(ValueError, match="warmup_steps=2"):
        methods.create("stch", warmup_steps=3).load_state_dict(stch.state_dict())
    moco = methods.create("moco")
    run_case(moco, steps=1)
    state = dict(moco.state_dict(), lambd=torch.ones(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="lambd"):
        methods.create("moco").load_state_dict(state)
    with pytest.raises(ValueError, match="ema"):
        methods.create("db_mtl").load_state_dict({"steps": torch.tensor(1), "ema": torch.zeros(3)})


@pytest.mark.parametrize("name,options", CASES)
def test_non_finite_step_gives_nan_and_keeps_the_state(name, options):
    clean, poisoned = methods.create(name, **options), methods.create(name, **options)
    a = run_case(clean, steps=6)
    b = run_case(poisoned, steps=6, poison=2)
    assert bool(torch.isnan(flat(b[2])[0]).all()) if clean.family == "loss" else bool(torch.isnan(b[2]).all())
    # The poisoned run skipped step 2 entirely: from then on it equals a clean run without step 2.
    skipped = methods.create(name, **options)
    if clean.family == "loss":
        sequence = loss_sequence(3, 6, seed=4)
        c = run_loss(skipped, sequence[:2] + sequence[3:])
    else:
        problems = toy_problem(3, 7, 6, seed=4)
        c = run_gradient(skipped, problems[:2] + problems[3:])
    for x, y in zip(b[:2] + b[3:], c):
        assert torch.equal(flat(x), flat(y))
    assert len(a) == 6


def test_nan_loss_value_and_negative_log_argument():
    G = torch.randn(2, 4, dtype=torch.float64)
    method = methods.create("db_mtl")
    d = fastmtl.aggregate(G, method, losses=torch.tensor([-1.0, 1.0], dtype=torch.float64))  # log(L + eps) undefined
    assert bool(torch.isnan(d).all()) and int(method.steps) == 0 and not method.ema.any()
    method = methods.create("moco")
    d = fastmtl.aggregate(G, method, losses=torch.tensor([float("nan"), 1.0], dtype=torch.float64))
    assert bool(torch.isnan(d).all()) and int(method.steps) == 0
    assert torch.equal(method.lambd, torch.full((2,), 0.5, dtype=torch.float64))
    famo = methods.create("famo", n_tasks=2)
    loss, grad = famo_step(famo, torch.tensor([-1.0, 1.0], dtype=torch.float64))  # D < 0
    assert math.isnan(float(loss.detach())) and not bool(famo._state["has_prev"])
    # The gradient is NaN too (not zeros): a GradScaler skips the step, momentum gets nothing.
    assert torch.isnan(grad).all()
    stch = methods.create("stch", warmup_steps=0)
    L = torch.tensor([-1.0, 1.0], dtype=torch.float64, requires_grad=True)  # log(L / n) undefined
    loss = stch.loss(list(L.unbind()), None)
    assert math.isnan(float(loss.detach())) and torch.isnan(torch.autograd.grad(loss, L)[0]).all()


@pytest.mark.parametrize("name", ["db_mtl", "moco"])
def test_half_inputs_keep_float32_state(name):
    # float32 accuracy is tested against the oracles above; half input: state in float32 (the
    # accumulation dtype), output in half, finite.
    method = methods.create(name)
    for theta, losses in toy_problem(3, 9, 3, seed=5):
        d = fastmtl.aggregate(rows(theta, losses).half(), method, losses=values(losses).half())
        assert d.dtype == torch.float16 and bool(torch.isfinite(d).all())
        assert method.state_dict()["ema" if name == "db_mtl" else "y"].dtype == torch.float32


# ----- through MTLOptimizer ---------------------------------------------------------------------


def batch(seed):
    return tiny_models.batch(seed, 32)


@pytest.mark.parametrize("name,options", CASES)
def test_three_steps_through_the_optimizer(name, options):
    # The optimizer's update = SGD with the method on G from torch.autograd.grad (gradient
    # methods, heads: plain gradients of Σ L_t) or on the loss the method builds (loss methods).
    net, reference = tiny_models.model(), tiny_models.model()
    opt = fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), name, shared=net.encoder.parameters(),
                               **options)
    twin = methods.create(name, **options)
    for step in range(3):
        x, y = batch(step)
        opt.zero_grad()
        opt.backward(net.losses(x, y))
        opt.step()
        shared, heads = list(reference.encoder.parameters()), list(reference.heads.parameters())
        losses = reference.losses(x, y)
        if twin.family == "loss":
            grads = torch.autograd.grad(twin.loss(losses, shared), shared + heads)
            combined = torch.cat([g.reshape(-1) for g in grads[:len(shared)]])
            head_grads = grads[len(shared):]
        else:
            combined = fastmtl.aggregate(tiny_models.task_gradients(losses, shared), twin, losses=losses)
            head_grads = torch.autograd.grad(sum(losses), heads)
        tiny_models.sgd_step(reference, combined, head_grads, 0.1)
        for a, b in zip(net.parameters(), reference.parameters()):
            assert torch.allclose(a, b, rtol=0, atol=1e-12), (name, step)
    saved = opt.state_dict()["fastmtl"]["groups"][0]["method_state"]
    assert saved and all(torch.allclose(saved[k].double(), v.double(), rtol=0, atol=1e-12)
                         if isinstance(v, torch.Tensor) else saved[k] == v for k, v in twin.state_dict().items())
    assert opt.method.parameters() == []  # FAMO's ξ trains by its own Adam, not the model's optimizer
