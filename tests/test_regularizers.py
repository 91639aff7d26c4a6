"""CosReg: the penalty's value, that it is differentiated (double backward), and that training
with it lowers the squared cosine between the task gradients."""

import pytest
import torch

import fastmtl

torch.set_flush_denormal(True)  # these tests train


def test_penalty_value_hand_case():
    w = torch.nn.Parameter(torch.tensor([1.0, 1.0], dtype=torch.float64))
    # ∇L0 = (1, 0), ∇L1 = (1, 1): cos = 1/√2, cos² = 1/2 for both ordered pairs.
    losses = [w[0] * 1.0, w[0] + w[1]]
    assert fastmtl.cosreg_penalty(losses, [w], weight=2.0).item() == pytest.approx(1.0)


def test_penalty_is_differentiated_through_the_gradients():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(3, dtype=torch.float64))
    x = torch.randn(2, 3, dtype=torch.float64)

    def penalty(w):
        losses = [torch.sin(x[0] @ w) ** 2, torch.cos(x[1] @ w) * (w ** 2).sum()]
        return fastmtl.cosreg_penalty(losses, [w])

    p = penalty(w)
    (grad,) = torch.autograd.grad(p, w)
    assert grad.abs().sum() > 0  # a constant penalty would have zero gradient
    # Central finite differences of the penalty value.
    numeric = torch.zeros(3, dtype=torch.float64)
    for k in range(3):
        step = torch.zeros(3, dtype=torch.float64)
        step[k] = 1e-6
        plus = penalty(torch.nn.Parameter(w.detach() + step)).item()
        minus = penalty(torch.nn.Parameter(w.detach() - step)).item()
        numeric[k] = (plus - minus) / 2e-6
    assert torch.allclose(grad, numeric, rtol=1e-5, atol=1e-8)


def test_training_with_cosreg_lowers_gradient_alignment():
    torch.manual_seed(1)
    encoder = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4)).double()
    x = torch.randn(64, 4, dtype=torch.float64)
    targets = [x[:, 0], x[:, 0] + 0.1 * x[:, 1]]  # two nearly identical tasks: aligned gradients

    def losses():
        z = encoder(x)
        return [((z[:, 0] - targets[0]) ** 2).mean(), ((z[:, 1] - targets[1]) ** 2).mean()]

    before = fastmtl.cosreg_penalty(losses(), encoder.parameters()).item()
    opt = torch.optim.SGD(encoder.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        fastmtl.cosreg_penalty(losses(), encoder.parameters(), weight=1.0).backward()
        opt.step()
    assert fastmtl.cosreg_penalty(losses(), encoder.parameters()).item() < 0.5 * before


def test_single_task_and_bad_input():
    w = torch.nn.Parameter(torch.ones(2))
    assert fastmtl.cosreg_penalty([w.sum()], [w]).item() == 0.0
    with pytest.raises(ValueError, match="weight"):
        fastmtl.cosreg_penalty([w.sum(), w[0]], [w], weight=-1.0)
    with pytest.raises(ValueError, match="empty"):
        fastmtl.cosreg_penalty([], [w])


def go4align_by_hand(history, n_groups, beta):
    """The paper's recipe step by step in plain Python (the groups of 1-D k-means found by brute force
    over all splits of the sorted values, minimising the within-group sum of squares)."""
    import itertools
    import math

    T = len(history[0])
    zeta = [1.0 / T] * T
    for losses in history:
        xi = [sum(losses) / l for l in losses]
        zeta = [z * math.exp(-beta * l) for z, l in zip(zeta, losses)]
        zeta = [z / sum(zeta) for z in zeta]
        gamma = [x * z for x, z in zip(xi, zeta)]
    order = sorted(range(T), key=lambda m: gamma[m])
    best = None
    for cuts in itertools.combinations(range(1, T), n_groups - 1):
        bounds = [0, *cuts, T]
        groups = [order[bounds[g]:bounds[g + 1]] for g in range(n_groups)]
        cost = sum(sum((gamma[m] - sum(gamma[k] for k in g) / len(g)) ** 2 for m in g) for g in groups)
        if best is None or cost < best[0]:
            best = (cost, groups)
    weights = [0.0] * T
    for group in best[1]:
        for m in group:
            weights[m] = sum(gamma[k] for k in group) / len(group)
    return weights


def test_go4align_matches_the_recipe_by_hand():
    history = [[2.0, 1.0, 0.5, 4.0], [1.5, 0.9, 0.6, 3.0], [1.2, 0.7, 0.5, 2.5]]
    weighter = fastmtl.GO4Align(4, n_groups=2, beta=0.3)
    for losses in history:
        weights = weighter.weights([torch.tensor(l, dtype=torch.float64, requires_grad=True) for l in losses])
    expected = go4align_by_hand(history, 2, 0.3)
    assert torch.allclose(weights, torch.tensor(expected, dtype=torch.float64), rtol=1e-12)


def test_go4align_loss_is_one_weighted_sum():
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    losses = [w[0] ** 2, w[1] ** 2, w[2] ** 2]
    total = fastmtl.GO4Align(3, n_groups=2).loss(losses)
    weights = torch.tensor(go4align_by_hand([[1.0, 4.0, 9.0]], 2, 1e-4), dtype=torch.float64)
    assert torch.allclose(total, sum(wt * l for wt, l in zip(weights, losses)), rtol=1e-12)
    total.backward()
    assert torch.allclose(w.grad, 2 * weights * w.detach())
    with pytest.raises(ValueError, match="n_groups"):
        fastmtl.GO4Align(3, n_groups=4)
    with pytest.raises(ValueError, match="expected 3 losses"):
        fastmtl.GO4Align(3).weights([w[0], w[1]])


def test_kmeans_1d_groups_obvious_clusters():
    from fastmtl.losses import kmeans_1d

    values = torch.tensor([0.1, 5.0, 0.2, 5.1, 0.15, 9.0], dtype=torch.float64)
    assert kmeans_1d(values, 3).tolist() == [0, 1, 0, 1, 0, 2]  # Lloyd from quantiles gets this wrong
    assert kmeans_1d(values, 1).tolist() == [0] * 6
    assert kmeans_1d(values, 6).tolist() == [0, 3, 2, 4, 1, 5]


def test_go4align_zero_loss_gives_finite_weights():
    weights = fastmtl.GO4Align(2).weights([torch.tensor(0.0, requires_grad=True), torch.tensor(1.0, requires_grad=True)])
    assert torch.isfinite(weights).all()
