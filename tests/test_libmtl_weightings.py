"""UW, DWA, GradNorm and IMTL (methods/libmtl_weightings.py), and the existing RLW and GLS,
against LibMTL 1.1.5 (tests/libmtl_oracle.py) on the same model and losses, step by step; plus
the papers' formulas by hand, MTLOptimizer integration, options, NaN policy, T = 1 and float32.

The oracle comparisons run a small float64 network (encoder Linear(6, 8)-tanh-Linear(8, 5), one
Linear(5, 1) head per task, B = 16 samples). At each step LibMTL's weighting runs one backward on
the model, its gradients are kept, then MTLOptimizer runs ours on the same parameters and losses;
the learnable tensors are copied from ours to LibMTL's before each step, so both start every step
from the same state, then ours steps (SGD). Tolerances, from error bounds (u = 2⁻⁵³):
* a shared gradient entry is a sum over the B samples and H = 8 hidden units of products of the
  network's factors, then a weighted sum over the T tasks: N = B·H + T terms, each side within
  γ_N of the exact value relative to the sum of the terms' magnitudes, which we bound by N times
  the largest |w_t g_t| entry: |ours - theirs| <= 2 γ_N N Σ_t |w_t| max|g_t| (``backward_bound``);
* weights computed from the same float64 numbers by a few roundings (exp, ratios, a softmax of
  T terms) agree within (T + 8) u relative each, adding (T + 8) u Σ_t |w_t| max|g_t|;
* IMTL's α: ours from the pseudo-inverse of D K D, LibMTL's from the inverse of D Uᵀ: both
  backward stable, so they agree within 16 T u cond(D K D) relative;
* GradNorm's logits gradient: Jᵀ(sign(w n - target) ⊙ n) with J the softmax Jacobian (|J| <= 2
  per entry after the factor T), so it moves by at most 2 T max w max|Δn_t|; the norms n_t, over
  P = 101 entries (LibMTL: all the shared parameters), differ by at most √P times the entries'
  bound plus γ_P n_t. (α enters only through those signs: the hand-computed cases pick numbers
  where different α give different signs);
* RLW: LibMTL draws the same normal numbers in float32 (the CPU draws a short float32 normal
  tensor as rounded float64 draws: checked first), so z differs by u₃₂|z| and its float32 softmax
  by (T + 4) u₃₂ relative: |Δw_t| <= w_t (2 u₃₂ max|z| + (T + 4) u₃₂).
"""

from __future__ import annotations

import copy
import math

import fastmtl
import libmtl_oracle
import pytest
import torch
from conftest import assert_close_rel, gamma
from fastmtl import methods

U = 2.0**-53
U32 = 2.0**-24
B, IN, H, OUT = 16, 6, 8, 5
N_TERMS = B * H


@pytest.fixture
def libmtl():
    libmtl_oracle.skip_unless_installed()
    return libmtl_oracle


@pytest.fixture(autouse=True)
def float64_default():
    """The methods' learnable tensors are made in torch's default dtype: float64 here, as the
    float64 model (the float32 test sets its own)."""
    with libmtl_oracle.float64():
        yield


class _default_dtype:
    """torch's default dtype set for a block (the methods' learnable tensors and LibMTL's draws use it)."""

    def __init__(self, dtype):
        self.dtype = dtype

    def __enter__(self):
        self.previous = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)

    def __exit__(self, *exc):
        torch.set_default_dtype(self.previous)


class Model:
    """A shared encoder, one head per task, squared losses whose targets differ in scale per task."""

    def __init__(self, T: int, seed: int = 0, dtype=torch.float64):
        torch.manual_seed(seed)
        self.encoder = torch.nn.Sequential(torch.nn.Linear(IN, H), torch.nn.Tanh(), torch.nn.Linear(H, OUT)).to(dtype)
        self.heads = torch.nn.ModuleList(torch.nn.Linear(OUT, 1) for _ in range(T)).to(dtype)
        self.T, self.seed, self.dtype = T, seed, dtype

    def shared(self) -> list[torch.nn.Parameter]:
        return list(self.encoder.parameters())

    def head_params(self, t: int | None = None) -> list[torch.nn.Parameter]:
        return list((self.heads if t is None else self.heads[t]).parameters())

    def params(self) -> list[torch.nn.Parameter]:
        return self.shared() + self.head_params()

    def losses(self, step: int) -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(1000 * self.seed + step)
        x = torch.randn(B, IN, generator=g, dtype=torch.float64).to(self.dtype)  # the same data in any dtype
        scales = torch.arange(1, self.T + 1, dtype=torch.float64).view(-1, 1, 1)
        ys = (torch.randn(self.T, B, 1, generator=g, dtype=torch.float64) * scales).to(self.dtype)
        z = self.encoder(x)
        return [((head(z) - y) ** 2).mean() for head, y in zip(self.heads, ys)]

    def zero_grad(self) -> None:
        for p in self.params():
            p.grad = None


def flat_grads(params) -> torch.Tensor:
    return torch.cat([torch.zeros(p.numel(), dtype=p.dtype) if p.grad is None else p.grad.reshape(-1)
                      for p in params])


def task_gradients(losses, params) -> torch.Tensor:
    """G [T, P] of the shared parameters (the test's own, for tolerances and hand checks)."""
    return torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params, retain_graph=True)])
                        for loss in losses])


def backward_bound(G: torch.Tensor, weights) -> float:
    """2 γ_N N Σ_t |w_t| max|g_t| + (T + 8) u Σ_t |w_t| max|g_t| (see the module docstring)."""
    weights = torch.as_tensor(weights, dtype=torch.float64)
    total = float((weights.abs() * G.abs().amax(dim=1)).sum())
    N = N_TERMS + G.shape[0]
    return (2 * gamma(N, torch.float64) * N + (G.shape[0] + 8) * U) * total


def side_by_side(libmtl, libmtl_name, weight_args, method, options, *, T=3, steps=4, batches=1, seed=0):
    """Per step: LibMTL's gradients, then ours, on the same parameters and losses (see the
    module docstring). Returns one dict per step and the optimizer."""
    model = Model(T, seed)
    opt = fastmtl.MTLOptimizer(torch.optim.SGD(model.params(), lr=0.05), method=method, shared=model.shared(),
                               **options)
    oracle = libmtl.Run(libmtl_name, model.shared(), T, batches)
    learnable = opt.method.parameters()
    records = []
    for step in range(steps):
        if learnable:
            with torch.no_grad():
                oracle.loss_scale.copy_(learnable[0])
            oracle.loss_scale.grad = None
        model.zero_grad()
        their_weights = oracle.backward(torch.stack(model.losses(step)), **weight_args)
        theirs = {"shared": flat_grads(model.shared()),
                  "heads": [flat_grads(model.head_params(t)) for t in range(T)],
                  "learnable": None if oracle.loss_scale is None or oracle.loss_scale.grad is None
                  else oracle.loss_scale.grad.clone(), "weights": their_weights}
        opt.zero_grad()
        model.zero_grad()
        losses = model.losses(step)
        G = task_gradients(losses, model.shared())
        values = [p.detach().clone() for p in learnable]
        opt.backward(losses)
        ours = {"shared": flat_grads(model.shared()), "heads": [flat_grads(model.head_params(t)) for t in range(T)],
                "learnable": None if not learnable or learnable[0].grad is None else learnable[0].grad.clone(),
                "values": values}
        records.append({"theirs": theirs, "ours": ours, "G": G, "losses": torch.stack(losses).detach()})
        opt.step()
    return records, opt


def head_bound(grads) -> float:
    """A head's gradient sums B samples' products: 2 γ_B B max|entry| + a few roundings."""
    return (2 * gamma(B + 4, torch.float64) * (B + 4)) * max(float(g.abs().max()) for g in grads)


# ----- UW --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [1, 2, 4])
def test_uw_matches_libmtl(libmtl, T):
    records, _ = side_by_side(libmtl, "UW", {}, "uw", {"n_tasks": T}, T=T, steps=5)
    for step, r in enumerate(records):
        s = r["ours"]["values"][0]
        weights = 1 / (2 * s.exp())
        assert_close_rel(r["ours"]["shared"], r["theirs"]["shared"], 1.0, f"step {step}",
                         scale=backward_bound(r["G"], weights))
        for t in range(T):
            assert_close_rel(r["ours"]["heads"][t], r["theirs"]["heads"][t], 1.0, f"step {step} head {t}",
                             scale=head_bound(r["theirs"]["heads"]))
        # d/ds_t = 1/2 - L_t / (2 e^{s_t}), a few roundings of float64 numbers on each side.
        bound = 8 * U * float((0.5 + r["losses"] * weights).abs().max())
        assert_close_rel(r["ours"]["learnable"], r["theirs"]["learnable"], 1.0, f"step {step} s.grad", scale=bound)
    assert not torch.equal(records[-1]["ours"]["values"][0], records[0]["ours"]["values"][0])  # s trained


def test_uw_by_hand():
    method = methods.create("uw", n_tasks=2)
    assert torch.equal(method.log_variances.detach(), torch.tensor([-0.5, -0.5]))
    losses = [torch.tensor(1.0, requires_grad=True), torch.tensor(4.0, requires_grad=True)]
    total = method.loss(losses, [])
    # Σ L_t / (2 e^{-0.5}) + (-0.5) / 2 per task
    assert math.isclose(float(total.detach()), (1 + 4) * math.exp(0.5) / 2 - 0.5, rel_tol=4 * U)
    total.backward()
    expected = [0.5 - 1 * math.exp(0.5) / 2, 0.5 - 4 * math.exp(0.5) / 2]
    assert torch.allclose(method.log_variances.grad, torch.tensor(expected), rtol=8 * U, atol=0)
    assert torch.allclose(losses[1].grad, torch.tensor(math.exp(0.5) / 2), rtol=4 * U, atol=0)


# ----- DWA -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("T,batches", [(1, 1), (3, 1), (3, 2), (4, 3)])
def test_dwa_matches_libmtl(libmtl, T, batches):
    records, _ = side_by_side(libmtl, "DWA", {"T": 2.0}, "dwa", {"period": batches}, T=T, steps=4 * batches + 1,
                                batches=batches)
    for step, r in enumerate(records):
        weights = torch.as_tensor(r["theirs"]["weights"])
        assert_close_rel(r["ours"]["shared"], r["theirs"]["shared"], 1.0, f"step {step}",
                         scale=backward_bound(r["G"], weights))
        for t in range(T):
            assert_close_rel(r["ours"]["heads"][t], r["theirs"]["heads"][t], 1.0, f"step {step} head {t}",
                             scale=head_bound(r["theirs"]["heads"]) * (1 + T * U))
    if T > 1:  # the weights left 1 after two periods
        assert not torch.allclose(torch.as_tensor(records[-1]["theirs"]["weights"]), torch.ones(T))


def test_dwa_by_hand():
    method = methods.create("dwa", temperature=2.0, period=2)
    steps = [[1.0, 2.0], [3.0, 2.0], [1.0, 3.0], [1.0, 1.0], [5.0, 5.0]]
    seen = []
    for values in steps:
        losses = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in values]
        method.loss(losses, []).backward()
        seen.append([float(loss.grad) for loss in losses])
    assert seen[:4] == [[1.0, 1.0]] * 4  # two periods to complete first
    # Period means: [2, 2] then [1, 2]: r = [0.5, 1], w = 2 softmax(r / 2).
    e1, e2 = math.exp(0.25), math.exp(0.5)
    assert seen[4] == pytest.approx([2 * e1 / (e1 + e2), 2 * e2 / (e1 + e2)], rel=8 * U)
    assert torch.allclose(method.task_weights(2, torch.device("cpu")),
                          torch.tensor([2 * e1 / (e1 + e2), 2 * e2 / (e1 + e2)]), rtol=8 * U, atol=0)


# ----- GradNorm --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("T,batches", [(2, 1), (3, 2), (4, 1)])
def test_gradnorm_matches_libmtl(libmtl, T, batches):
    # LibMTL balances the norms over every shared parameter and takes L(0) from epoch 0, during
    # which it trains with w = 1: layer=all shared parameters, warmup_steps=its batches.
    alpha = 1.5
    model = Model(T)
    opt = fastmtl.MTLOptimizer(torch.optim.SGD(model.params(), lr=0.05), method="gradnorm", shared=model.shared(),
                               n_tasks=T, alpha=alpha, warmup_steps=batches, layer=model.shared())
    oracle = libmtl.Run("GradNorm", model.shared(), T, batches)
    P = sum(p.numel() for p in model.shared())
    logits = opt.method.logits
    for step in range(batches + 5):
        with torch.no_grad():
            oracle.loss_scale.copy_(logits)
        oracle.loss_scale.grad = None
        model.zero_grad()
        oracle.backward(torch.stack(model.losses(step)), alpha=alpha)
        their_shared, their_heads = flat_grads(model.shared()), [flat_grads(model.head_params(t)) for t in range(T)]
        their_logits = oracle.loss_scale.grad
        opt.zero_grad()
        losses = model.losses(step)
        G = task_gradients(losses, model.shared())
        w = opt.method.task_weights().clone()
        opt.backward(losses)
        warm = step < batches
        weights = torch.ones(T) if warm else w
        assert_close_rel(flat_grads(model.shared()), their_shared, 1.0, f"step {step}",
                         scale=backward_bound(G, weights))
        for t in range(T):  # LibMTL's heads get the gradient of Σ L_t, ours of Σ w_t L_t
            ours = flat_grads(model.head_params(t)) / (1.0 if warm else w[t])
            assert_close_rel(ours, their_heads[t], 1.0, f"step {step} head {t}",
                             scale=head_bound(their_heads) * (1 + 8 * U))
        if warm:
            assert logits.grad is None and their_logits is None
            continue
        norms = G.norm(dim=1)
        entry = 2 * gamma(N_TERMS + T, torch.float64) * (N_TERMS + T) * float(G.abs().max())
        dn = math.sqrt(P) * entry + gamma(P, torch.float64) * float(norms.max())
        bound = 2 * T * float(w.max()) * dn + 16 * T * U * float((w * norms).max())
        assert_close_rel(logits.grad, their_logits, 1.0, f"step {step} logits.grad", scale=bound)
        opt.step()
        assert not torch.equal(logits.detach(), torch.zeros(T)) or T == 1


@pytest.mark.parametrize("alpha", [0.0, 1.5, 3.0])
def test_gradnorm_by_hand(alpha):
    # L_grad's gradient depends on α only through the signs of w_t n_t - target_t: the second
    # step's numbers give three different sign patterns for these three α.
    # L_t = c_t Σ W with W = (1, 1): n_t = c_t √2; with w = 1 and r = 1 (first step: L(0) = L),
    # ∂L_grad/∂z_j = a_j - mean(a), a_t = sign(n_t - mean n) n_t (the softmax Jacobian at z = 0).
    W = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    c = [1.0, 2.0, 6.0]
    method = methods.create("gradnorm", n_tasks=3, alpha=alpha)
    total = method.loss([ci * W.sum() for ci in c], [W])  # the default layer: the last (only) parameter
    assert math.isclose(float(total.detach()), 2 * sum(c), rel_tol=4 * U)  # w = 1; the logits' carrier adds 0
    total.backward()
    r2 = math.sqrt(2)
    expected = torch.tensor([-2 * r2, -3 * r2, 5 * r2])
    assert torch.allclose(method.logits.grad, expected, rtol=16 * U, atol=0)
    assert torch.allclose(W.grad, torch.full((2,), sum(c), dtype=torch.float64), rtol=4 * U, atol=0)
    # Second step, with z ≠ 0 and new losses: the paper's formula written out.
    with torch.no_grad():
        method.logits.copy_(torch.tensor([0.3, -0.1, 0.2]))
    method.logits.grad = None
    c2 = [0.5, 4.0, 3.0]
    method.loss([ci * W.sum() for ci in c2], [W]).backward()
    z = [0.3, -0.1, 0.2]
    p = [math.exp(v) / sum(math.exp(u) for u in z) for v in z]
    w = [3 * pi for pi in p]
    n = [ci * r2 for ci in c2]
    L0, L = [2 * ci for ci in c], [2 * ci for ci in c2]
    ratio = [Li / L0i for Li, L0i in zip(L, L0)]
    rate = [(q / (sum(ratio) / 3)) ** alpha for q in ratio]
    mean_wn = sum(wi * ni for wi, ni in zip(w, n)) / 3
    a = [math.copysign(1, wi * ni - mean_wn * ri) * ni for wi, ni, ri in zip(w, n, rate)]
    # ∂w_i/∂z_j = 3 p_i (δ_ij - p_j)
    grad = [sum(a[i] * 3 * p[i] * ((i == j) - p[j]) for i in range(3)) for j in range(3)]
    assert torch.allclose(method.logits.grad, torch.tensor(grad), rtol=1e-13, atol=1e-14)


def test_gradnorm_default_layer_is_the_last_matrix_and_warmup_means():
    model = Model(2)
    method = methods.create("gradnorm", n_tasks=2)
    assert method.balanced_parameters(model.shared()) == [model.encoder[2].weight]
    assert method.balanced_parameters([model.encoder[2].bias]) == [model.encoder[2].bias]
    warm = methods.create("gradnorm", n_tasks=2, warmup_steps=2)
    for values in ([1.0, 4.0], [3.0, 2.0]):
        warm.loss([torch.tensor(v, requires_grad=True) for v in values], [])
    assert torch.equal(warm.state_dict()["initial"], torch.tensor([2.0, 3.0], dtype=torch.float64))


def test_backward_loss_accepts_a_loss_that_does_not_reach_the_learnable_tensors():
    # During GradNorm's warm-up the loss is Σ L_t: MTLOptimizer's backward lists the logits among
    # its inputs all the same, and they keep no gradient.
    model = Model(2)
    opt = fastmtl.MTLOptimizer(torch.optim.SGD(model.params(), lr=0.1), method="gradnorm", shared=model.shared(),
                               n_tasks=2, warmup_steps=1)
    opt.backward(model.losses(0))
    assert opt.method.logits.grad is None and all(p.grad is not None for p in model.params())
    opt.step()
    opt.zero_grad()
    opt.backward(model.losses(1))
    assert opt.method.logits.grad is not None and opt.method.logits.grad.abs().sum() > 0


# ----- IMTL ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [1, 2, 3, 5])
def test_imtl_matches_libmtl(libmtl, T):
    records, _ = side_by_side(libmtl, "IMTL", {}, "imtl", {"n_tasks": T}, T=T, steps=5)
    for step, r in enumerate(records):
        s = r["ours"]["values"][0]
        D = s.exp()
        scaled = D[:, None] * (r["G"] @ r["G"].T) * D[None, :]
        weights = torch.as_tensor(r["theirs"]["weights"]) * D
        condition = float(torch.linalg.cond(scaled))
        scale = backward_bound(r["G"], weights) + 16 * T * U * condition * float(
            (D * r["G"].abs().amax(dim=1)).sum())
        assert_close_rel(r["ours"]["shared"], r["theirs"]["shared"], 1.0, f"step {step}", scale=scale)
        for t in range(T):  # LibMTL's heads get the gradient of Σ (e^s L - s), ours of Σ L
            assert_close_rel(r["ours"]["heads"][t] * D[t], r["theirs"]["heads"][t], 1.0, f"step {step} head {t}",
                             scale=head_bound(r["theirs"]["heads"]) * (1 + 4 * U))
        bound = 4 * U * float((D * r["losses"]).abs().max() + 1)
        assert_close_rel(r["ours"]["learnable"], r["theirs"]["learnable"], 1.0, f"step {step} s.grad", scale=bound)
    assert not torch.equal(records[-1]["ours"]["values"][0], torch.zeros(T))  # s trained by the optimizer


def test_imtl_by_hand_and_aggregate_with_losses():
    # g1 = (1, 0), g2 = (0, 2): at s = 0 the combination with equal projections on u1, u2 and
    # Σα = 1 is α = (2/3, 1/3); with s = (log 2, 0) the scaled gradients have equal norms: α = (1/2,
    # 1/2) and w = α e^s = (1, 1/2). s.grad = e^s L - 1.
    G = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    got = fastmtl.aggregate(G, "imtl", n_tasks=2, losses=[torch.tensor(3.0), torch.tensor(5.0)])
    assert torch.allclose(got, torch.tensor([2 / 3, 2 / 3], dtype=torch.float64), rtol=64 * U, atol=0)
    method = methods.create("imtl", n_tasks=2)
    with torch.no_grad():
        method.loss_scales.copy_(torch.tensor([math.log(2.0), 0.0]))
    method.take_losses([torch.tensor(3.0), torch.tensor(5.0)])
    w = method.weights(G @ G.T)
    assert torch.allclose(w, torch.tensor([1.0, 0.5], dtype=torch.float64), rtol=64 * U, atol=0)
    assert torch.allclose(method.loss_scales.grad, torch.tensor([2 * 3.0 - 1, 5.0 - 1]), rtol=8 * U, atol=0)
    # Without the losses: the clear error, for both entry points.
    with pytest.raises(ValueError, match="needs the task losses"):
        fastmtl.aggregate(G, "imtl", n_tasks=2)
    with pytest.raises(ValueError, match="needs the task losses"):
        method.weights(G @ G.T)  # the losses of the previous call are consumed
    with pytest.raises(ValueError, match="2 losses for the 3 rows"):
        fastmtl.aggregate(torch.ones(3, 4, dtype=torch.float64), "imtl", n_tasks=3, losses=[torch.tensor(1.0)] * 2)
    with pytest.raises(ValueError, match="does not use the task losses"):
        fastmtl.aggregate(G, "pcgrad", losses=[torch.tensor(1.0)] * 2)


@pytest.mark.parametrize("impl", ["torch", pytest.param("cpp", marks=pytest.mark.skipif(
    not fastmtl.HAS_EXT, reason="fastmtl._C not built"))])
def test_imtl_weights_are_imtl_g_of_the_scaled_gram(impl):
    G = torch.randn(4, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    s = torch.tensor([0.2, -0.4, 0.0, 0.7])
    method = methods.create("imtl", n_tasks=4, impl=impl)
    with torch.no_grad():
        method.loss_scales.copy_(s)
    method.take_losses(torch.ones(4))
    w = method.weights(G @ G.T)
    scaled = G * s.double().exp()[:, None]
    alpha = methods.create("imtl_g", impl="torch").weights(scaled @ scaled.T)
    assert_close_rel(w, alpha * s.double().exp(), 1e-10, impl)
    # the defining property on the scaled gradients: equal projections on every unit direction
    d = w @ G
    projections = scaled @ d / scaled.norm(dim=1)
    assert_close_rel(projections, projections.mean().expand(4), 1e-10, "equal projections")


# ----- RLW and GLS (methods/loss_side.py) ------------------------------------------------------------------


@pytest.mark.parametrize("T", [2, 3, 5, 8])
@pytest.mark.parametrize("seed", range(3))
def test_rlw_matches_libmtl_with_the_same_draws(libmtl, T, seed):
    # LibMTL draws Normal(0, 1) in float32 from the global generator; ours in float64 from a
    # generator with the same seed: for these short tensors, the same numbers rounded.
    z = torch.randn(T, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    torch.manual_seed(seed)
    z32 = torch.distributions.normal.Normal(torch.zeros(T, dtype=torch.float32), torch.ones(T, dtype=torch.float32)
                                            ).sample()
    assert ((z32.double() - z).abs() <= U32 * z.abs()).all(), "LibMTL's draws are not ours rounded to float32"
    model = Model(T, seed)
    oracle = libmtl.Run("RLW", model.shared(), T)
    model.zero_grad()
    torch.manual_seed(seed)
    # LibMTL samples in the default dtype: float32 here, as in LibMTL's own runs.
    with _default_dtype(torch.float32):
        oracle_weights = torch.as_tensor(oracle.weighting.backward(torch.stack(model.losses(0)), dist="Normal"))
    theirs = flat_grads(model.shared())
    model.zero_grad()
    losses = model.losses(0)
    G = task_gradients(losses, model.shared())
    opt = fastmtl.MTLOptimizer(torch.optim.SGD(model.params(), lr=0.1), method="rlw", shared=model.shared(),
                               generator=torch.Generator().manual_seed(seed))
    opt.backward(losses)
    w = torch.softmax(z, 0)
    dw = w * (2 * U32 * float(z.abs().max()) + (T + 4) * U32)
    assert torch.allclose(oracle_weights.double(), w, rtol=0, atol=float(dw.max()))
    scale = backward_bound(G, w) + float((dw * G.abs().amax(dim=1)).sum())
    assert_close_rel(flat_grads(model.shared()), theirs, 1.0, f"T={T} seed={seed}", scale=scale)


def test_rlw_weights_are_a_softmax_of_standard_normals():
    # The distribution LibMTL's RLW ("Normal") uses: w = softmax(z), z ~ N(0, I), drawn afresh.
    T, n = 3, 4000
    method = methods.create("rlw", generator=torch.Generator().manual_seed(0))
    draws = []
    for _ in range(n):
        losses = [torch.tensor(1.0, dtype=torch.float64, requires_grad=True) for _ in range(T)]
        method.loss(losses, []).backward()
        draws.append([float(loss.grad) for loss in losses])
    w = torch.tensor(draws, dtype=torch.float64)
    assert torch.allclose(w.sum(1), torch.ones(n, dtype=torch.float64), rtol=0, atol=8 * U)
    assert (w > 0).all()
    # E[w_t] = 1/T by symmetry; the sample mean's standard error is below 0.5 / sqrt(n): 6 sigma.
    assert (w.mean(0) - 1 / T).abs().max() < 6 * 0.5 / math.sqrt(n)
    # log(w_i / w_j) = z_i - z_j ~ N(0, 2)
    diff = (w[:, 0] / w[:, 1]).log()
    assert abs(float(diff.var()) - 2.0) < 6 * 2.0 * math.sqrt(2 / n)


@pytest.mark.parametrize("T", [1, 2, 4])
def test_gls_matches_libmtl(libmtl, T):
    model = Model(T, seed=T)
    oracle = libmtl.Run("GLS", model.shared(), T)
    model.zero_grad()
    oracle.backward(torch.stack(model.losses(0)))
    theirs = flat_grads(model.shared())
    model.zero_grad()
    losses = model.losses(0)
    G = task_gradients(losses, model.shared())
    opt = fastmtl.MTLOptimizer(torch.optim.SGD(model.params(), lr=0.1), method="gls", shared=model.shared())
    total = opt.backward(losses)
    L = torch.stack(losses).detach()
    weights = total / (T * L)  # GLS's gradient: Σ_t GLS / (T L_t) ∇L_t
    assert math.isclose(float(total), float(L.prod() ** (1 / T)), rel_tol=(4 * T + 8) * U)
    assert_close_rel(flat_grads(model.shared()), theirs, 1.0, f"T={T}",
                     scale=backward_bound(G, weights) + (4 * T + 8) * U * float((weights * G.abs().amax(1)).sum()))


# ----- MTLOptimizer integration ----------------------------------------------------------------------------

LEARNABLE = [("uw", {"n_tasks": 3}), ("gradnorm", {"n_tasks": 3}), ("imtl", {"n_tasks": 3})]
STATEFUL = [*LEARNABLE, ("dwa", {"period": 2}), ("gradnorm", {"n_tasks": 3, "warmup_steps": 2})]


@pytest.mark.parametrize("method,options", LEARNABLE)
def test_learnable_tensors_join_the_optimizer_and_train(method, options):
    model = Model(3)
    lr = 0.1
    opt = fastmtl.MTLOptimizer(torch.optim.SGD(model.params(), lr=lr), method=method, shared=model.shared(),
                               **options)
    learnable = opt.method.parameters()
    assert len(opt.param_groups) == 2 and opt.param_groups[1]["params"] == learnable
    assert all(id(p) not in {id(q) for q in opt._heads()} for p in learnable)
    for step in range(3):
        opt.zero_grad()
        opt.backward(model.losses(step))
        before, grad = learnable[0].detach().clone(), learnable[0].grad.clone()
        assert grad.abs().sum() > 0
        opt.step()
        # SGD's update on the same object (p - lr g, rounded once or twice: 2 u relative to |p| + |lr g|)
        assert_close_rel(learnable[0].detach(), before - lr * grad, 2 * U, method,
                         scale=float((before.abs() + lr * grad.abs()).max()))


@pytest.mark.parametrize("method,options", STATEFUL)
def test_state_dict_round_trip_through_mtl_optimizer(method, options):
    def build(model):
        return fastmtl.MTLOptimizer(torch.optim.Adam(model.params(), lr=0.01), method=method, shared=model.shared(),
                                    **options)

    model = Model(3)
    opt = build(model)
    for step in range(5):
        opt.zero_grad()
        opt.backward(model.losses(step))
        opt.step()
    saved_model, saved_opt = copy.deepcopy(model), copy.deepcopy(opt.state_dict())
    other = Model(3, seed=9)  # other initial values, then the saved ones
    other.seed = model.seed  # the same batches
    other.encoder.load_state_dict(saved_model.encoder.state_dict())
    other.heads.load_state_dict(saved_model.heads.state_dict())
    resumed = build(other)
    kept = resumed.method.parameters()
    resumed.load_state_dict(saved_opt)
    assert [p is q for p, q in zip(resumed.method.parameters(), kept)] == [True] * len(kept)
    for p, q in zip(resumed.method.parameters(), opt.method.parameters()):
        assert torch.equal(p, q)
    for step in range(5, 10):
        for o, m in ((opt, model), (resumed, other)):
            o.zero_grad()
            o.backward(m.losses(step))
            o.step()
    for p, q in zip(model.params() + opt.method.parameters(), other.params() + resumed.method.parameters()):
        assert torch.equal(p, q)


def test_state_dict_errors():
    uw = methods.create("uw", n_tasks=2)
    with pytest.raises(ValueError, match=r"uw: state_dict\['log_variances'\] must be a tensor of shape \(2,\)"):
        uw.load_state_dict({"log_variances": torch.zeros(3)})
    with pytest.raises(ValueError, match="uw: a state_dict with the keys"):
        uw.load_state_dict({})
    with pytest.raises(ValueError, match="imtl: state_dict"):
        methods.create("imtl", n_tasks=2).load_state_dict({"loss_scales": torch.zeros(1)})
    with pytest.raises(ValueError, match="gradnorm: state_dict"):
        state = methods.create("gradnorm", n_tasks=2).state_dict()
        methods.create("gradnorm", n_tasks=3).load_state_dict(state)
    dwa = methods.create("dwa", period=2)
    dwa.loss([torch.tensor(1.0, requires_grad=True)] * 2, [])
    state = dwa.state_dict()
    with pytest.raises(ValueError, match="dwa: the state_dict's position"):
        methods.create("dwa", period=1).load_state_dict(state)
    fresh = methods.create("dwa", period=2)
    fresh.load_state_dict(state)
    assert fresh.state_dict()["steps"] == 1 and torch.equal(fresh.state_dict()["sum"], state["sum"])
    state["sum"] += 1  # cloned on save and on load
    assert not torch.equal(fresh.state_dict()["sum"], state["sum"])
    with pytest.raises(ValueError, match="dwa: got 3 losses, the previous steps had 2"):
        fresh.loss([torch.tensor(1.0, requires_grad=True)] * 3, [])


@pytest.mark.parametrize("method,options", LEARNABLE)
def test_grad_scaler_scales_the_learnable_gradients_like_the_model(method, options):
    grads = []
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=1024.0)):
        model = Model(3)
        opt = fastmtl.MTLOptimizer(torch.optim.SGD(model.params(), lr=0.1), method=method, shared=model.shared(),
                                   **options)
        opt.backward(model.losses(0), scaler=scaler)
        if scaler is not None:
            scaler.unscale_(opt)
        grads.append(opt.method.parameters()[0].grad.clone())
    # The scale is a power of two: scaling and unscaling are exact, up to the scaled loss's own roundings.
    assert_close_rel(grads[1], grads[0], 64 * U, method, scale=float(grads[0].abs().max()) + 1)


def test_a_failed_backward_leaves_the_learnable_gradients_as_they_were():
    # Group 1's IMTL is built for 3 tasks but sees 2: it raises after group 0's IMTL wrote s.grad.
    model = Model(2)
    params = model.shared()
    opt = fastmtl.MTLOptimizer(torch.optim.SGD(model.params(), lr=0.1), method="imtl", n_tasks=2,
                               shared=[{"params": params[:2]}, {"params": params[2:], "method": "imtl", "n_tasks": 3}])
    first = opt.groups[0].method.loss_scales
    first.grad = torch.full((2,), 7.0)
    with pytest.raises(ValueError, match="n_tasks=3"):
        opt.backward(model.losses(0))
    assert torch.equal(first.grad, torch.full((2,), 7.0))


# ----- options, NaN, T = 1, float32 ------------------------------------------------------------------------


@pytest.mark.parametrize("method,options,error,match", [
    ("uw", {}, TypeError, "n_tasks"),
    ("uw", {"n_tasks": 0}, ValueError, "uw: n_tasks must be an int >= 1"),
    ("uw", {"n_tasks": 2.5}, TypeError, "uw: n_tasks"),
    ("dwa", {"temperature": 0.0}, ValueError, "dwa: temperature must be > 0"),
    ("dwa", {"temperature": float("inf")}, ValueError, "dwa: temperature must be finite"),
    ("dwa", {"period": 0}, ValueError, "dwa: period must be an int >= 1"),
    ("dwa", {"period": True}, TypeError, "dwa: period"),
    ("gradnorm", {}, TypeError, "n_tasks"),
    ("gradnorm", {"n_tasks": 2, "alpha": -0.1}, ValueError, "gradnorm: alpha must be >= 0"),
    ("gradnorm", {"n_tasks": 2, "warmup_steps": -1}, ValueError, "gradnorm: warmup_steps must be an int >= 0"),
    ("gradnorm", {"n_tasks": 2, "layer": "fc"}, TypeError, "gradnorm: layer must be a parameter"),
    ("gradnorm", {"n_tasks": 2, "layer": []}, TypeError, "gradnorm: layer must be a parameter"),
    ("gradnorm", {"n_tasks": 2, "layer": [torch.zeros(2)]}, TypeError, "require grad"),
    ("imtl", {}, TypeError, "n_tasks"),
    ("imtl", {"n_tasks": 0}, ValueError, "imtl: n_tasks must be an int >= 1"),
    ("imtl", {"n_tasks": 2, "impl": "fast"}, ValueError, "imtl: impl must be one of"),
])
def test_option_errors(method, options, error, match):
    with pytest.raises(error, match=match):
        methods.create(method, **options)


def test_loss_count_must_match_n_tasks():
    for name in ("uw", "gradnorm"):
        with pytest.raises(ValueError, match=f"{name}: got 3 losses, but the method was built with n_tasks=2"):
            methods.create(name, n_tasks=2).loss([torch.tensor(1.0, requires_grad=True)] * 3, [])
    with pytest.raises(ValueError, match="imtl: G has 3 tasks, but the method was built with n_tasks=2"):
        fastmtl.aggregate(torch.ones(3, 4), "imtl", n_tasks=2, losses=torch.ones(3))


def test_nan_policy():
    nan = float("nan")
    # UW: a NaN loss gives a NaN loss; s is not touched by the method.
    uw = methods.create("uw", n_tasks=2)
    assert math.isnan(float(uw.loss([torch.tensor(nan), torch.tensor(1.0)], []).detach()))
    assert torch.equal(uw.log_variances.detach(), torch.full((2,), -0.5))
    # DWA: the NaN loss stays out of its task's period mean; the step still counts.
    dwa = methods.create("dwa", period=2)
    assert math.isnan(float(dwa.loss([torch.tensor(1.0), torch.tensor(2.0)], [])) + float(
        dwa.loss([torch.tensor(nan), torch.tensor(4.0)], [])))
    assert torch.equal(dwa.state_dict()["means"][1], torch.tensor([1.0, 3.0], dtype=torch.float64))
    # GradNorm: L(0) comes from the first finite step.
    W = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    gradnorm = methods.create("gradnorm", n_tasks=2)
    assert math.isnan(float(gradnorm.loss([W.sum() * nan, W.sum()], [W]).detach()))
    gradnorm.loss([W.sum() * 3, W.sum()], [W])
    assert torch.equal(gradnorm.state_dict()["initial"], torch.tensor([6.0, 2.0], dtype=torch.float64))
    # IMTL: a non-finite K or loss gives NaN weights and adds nothing to s.grad.
    G = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for impl in ("torch", "auto"):
        imtl = methods.create("imtl", n_tasks=3, impl=impl)
        bad = G.clone()
        bad[1, 2] = nan
        assert torch.isnan(fastmtl.aggregate(bad, imtl, losses=torch.ones(3))).all()
        assert torch.equal(imtl.loss_scales.grad, torch.zeros(3))  # none before: zeros
        imtl.loss_scales.grad = torch.full((3,), 2.0)
        assert torch.isnan(fastmtl.aggregate(G, imtl, losses=torch.tensor([1.0, nan, 1.0]))).all()
        bad[1, 2] = float("inf")
        assert torch.isnan(fastmtl.aggregate(bad, imtl, losses=torch.ones(3))).all()
        assert torch.equal(imtl.loss_scales.grad, torch.full((3,), 2.0))
        assert torch.equal(imtl.loss_scales.detach(), torch.zeros(3))
        assert torch.isfinite(fastmtl.aggregate(G, imtl, losses=torch.ones(3))).all()


def test_single_task():
    g = torch.randn(1, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    imtl = methods.create("imtl", n_tasks=1)
    with torch.no_grad():
        imtl.loss_scales.fill_(0.3)
    d = fastmtl.aggregate(g, imtl, losses=torch.tensor([2.0]))
    assert_close_rel(d, math.exp(0.3) * g[0], 8 * U)  # α = 1, w = e^s
    assert torch.allclose(imtl.loss_scales.grad, torch.tensor([math.exp(0.3) * 2 - 1]), rtol=8 * U, atol=0)
    W = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    gradnorm = methods.create("gradnorm", n_tasks=1)
    total = gradnorm.loss([(W ** 2).sum()], [W])
    total.backward()
    assert float(total.detach()) == 3.0 and torch.equal(gradnorm.logits.grad, torch.zeros(1))  # w = 1 always
    dwa = methods.create("dwa")
    for value in (1.0, 2.0, 5.0):
        assert float(dwa.loss([torch.tensor(value)], [])) == value  # T softmax of one number is 1


def test_float32():
    with _default_dtype(torch.float32):
        for method, options in [*STATEFUL, ("rlw", {}), ("gls", {})]:
            results = []
            for dtype in (torch.float32, torch.float64):
                model = Model(3, dtype=dtype)
                with _default_dtype(dtype):
                    opt = fastmtl.MTLOptimizer(torch.optim.SGD(model.params(), lr=0.1), method=method,
                                               shared=model.shared(),
                                               **(options if method != "rlw" else
                                                  {"generator": torch.Generator().manual_seed(0)}))
                opt.backward(model.losses(0))
                results.append((flat_grads(model.shared()),
                                [p.grad for p in opt.method.parameters()], [p.dtype for p in opt.method.parameters()]))
            (g32, learn32, dtypes32), (g64, learn64, _) = results
            assert g32.dtype == torch.float32 and all(d == torch.float32 for d in dtypes32)
            # float32 forward and backward: N = B H + T terms, 2 γ_N(float32) N relative to the largest entry
            N = N_TERMS + 3
            assert_close_rel(g32, g64, 2 * gamma(N, torch.float32) * N, method)
            for a, b in zip(learn32, learn64):
                if b is None:  # GradNorm's warm-up: no gradient for the logits yet
                    assert a is None
                    continue
                assert torch.isfinite(a).all()
                assert_close_rel(a, b, 2 * gamma(N, torch.float32) * N, method, scale=float(b.abs().max()) + 1)


def test_branching_an_imtl_group_gives_each_branch_its_own_learnt_scales():
    # branch() replaces every shared parameter: the new groups' IMTL scales join the optimizer on
    # the parameters' device, the replaced group's scales never count as a head, and a branch whose
    # task count differs from n_tasks is refused before anything changes.
    encoder, heads = torch.nn.Linear(4, 3), torch.nn.ModuleList([torch.nn.Linear(3, 1) for _ in range(2)])
    params = list(encoder.parameters()) + list(heads.parameters())
    opt = fastmtl.MTLOptimizer(torch.optim.SGD(params, lr=0.1), "imtl", shared=encoder.parameters(), n_tasks=2)
    copies = [[torch.nn.Parameter(p.detach().clone()) for p in encoder.parameters()] for _ in range(2)]
    groups_before = len(opt.optimizer.param_groups)
    with pytest.raises(ValueError, match="n_tasks=2 but the group has 1 tasks"):
        opt.branch(list(encoder.parameters()), [(copies[0], [0]), (copies[1], [1])])
    assert len(opt.optimizer.param_groups) == groups_before
    added = opt.branch(list(encoder.parameters()), [(copies[0], [0]), (copies[1], [1])], method="imtl", n_tasks=1)
    assert len(opt._heads()) == len(list(heads.parameters()))
    x = torch.randn(8, 4)
    outputs = [head(torch.nn.functional.linear(x, c[0], c[1])) for head, c in zip(heads, copies)]
    opt.zero_grad()
    opt.backward([out.pow(2).mean() for out in outputs])
    opt.step()
    for group in added:
        (scale,) = group.method.parameters()
        assert scale.grad is not None and torch.isfinite(scale.grad).all()
