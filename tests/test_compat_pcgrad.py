"""fastmtl.compat.pcgrad.PCGrad against Pytorch-PCGrad's algorithm, restated here as plain loops
(``OriginalPCGrad``: per-task gradients from backward, Python's in-place ``random.shuffle`` of the
task list before each task, projections against the original gradients, itself included, the
per-parameter "has a gradient" masks, mean over the parameters every objective reaches and sum
elsewhere, zero gradients where none does), on a model with a trunk shared by all tasks, a layer
used by two of the three, one head per task and a parameter no task uses.

Tolerance (float64, u = 2⁻⁵³; a bound on the 2-norm of the difference, so on every entry): a
projection x -> x - min(x·g_j, 0) g_j / |g_j|² is the projection onto a half-space, 1-Lipschitz, so
errors carried into it do not grow; its coefficient c (continuous in the dot: 0 at a dot of 0, so a
near-zero dot whose sign flips changes nothing) is computed by fastmtl from (A K)_ij, A the
coefficients of g_iᴾᶜ over the g_k, within γ_P Σ_k |A_ik| |g_k| |g_j| (K's entries within
γ_P |g_k||g_j|) plus the loops' own γ_P |g_iᴾᶜ||g_j|, i.e. c within γ_P (Σ_k |A_ik||g_k| + |g_i|) /
|g_j| and c g_j within γ_P (Σ_k |A_ik||g_k| + |g_i|). Over the T projections of each of the T tasks
and the final w · G (another γ_T Σ_k |w_k||g_k|), with a factor 2 of room:
    |Δd| <= 2 T γ_P Σ_i (2 Σ_k |A_ik||g_k| + |g_i|) + 2 γ_T Σ_k |w_k||g_k|,
A and w = Σ_i A_i taken from the oracle's run (``OriginalPCGrad.error_bound``). The oracle also
counts projections of a task on its own original gradient (which fastmtl skips, as the paper's
Alg. 1 does): zero on these inputs, so the comparison is exact up to rounding.
"""

from __future__ import annotations

import random

import pytest
import torch
from conftest import gamma
from fastmtl.compat.pcgrad import PCGrad


class OriginalPCGrad:
    """Pytorch-PCGrad's algorithm, written as its loops (the test's oracle)."""

    self_projections = 0

    def __init__(self, optimizer, reduction="mean", shuffle=True):
        self._optim, self._reduction, self._shuffle = optimizer, reduction, shuffle

    @property
    def optimizer(self):
        return self._optim

    def zero_grad(self):
        return self._optim.zero_grad(set_to_none=True)

    def step(self):
        return self._optim.step()

    def _params(self):
        return [p for group in self._optim.param_groups for p in group["params"]]

    def pc_backward(self, objectives):
        grads, has = [], []
        for objective in objectives:
            self._optim.zero_grad(set_to_none=True)
            objective.backward(retain_graph=True)
            grads.append(torch.cat([torch.zeros(p.numel(), dtype=p.dtype) if p.grad is None else p.grad.reshape(-1)
                                    for p in self._params()]))
            has.append(torch.cat([torch.full((p.numel(),), p.grad is not None) for p in self._params()]))
        shared = torch.stack(has).all(0)
        T = len(grads)
        A = torch.eye(T, dtype=torch.float64)  # row i: coefficients of g_iᴾᶜ over the original g_k
        originals = list(range(T))  # indices into grads, shuffled in place as the original shuffles its list
        projected = [g.clone() for g in grads]
        for i, g_i in enumerate(projected):
            if self._shuffle:
                random.shuffle(originals)
            for j in originals:
                dot = torch.dot(g_i, grads[j])
                if dot < 0:
                    OriginalPCGrad.self_projections += i == j
                    g_i -= dot * grads[j] / grads[j].norm() ** 2
                    A[i, j] -= float(dot / grads[j].norm() ** 2)
        norms = torch.stack([g.norm() for g in grads]).double()
        P = grads[0].numel()
        self.error_bound = float(2 * T * gamma(P, torch.float64) * (2 * (A.abs() @ norms) + norms).sum()
                                 + 2 * gamma(T, torch.float64) * (A.sum(0).abs() * norms).sum())
        stacked = torch.stack(projected)
        merged = stacked.sum(0)
        if self._reduction == "mean":
            merged[shared] = stacked[:, shared].mean(0)
        offset = 0
        for p in self._params():
            p.grad = merged[offset:offset + p.numel()].view(p.shape).clone()
            offset += p.numel()


class Net(torch.nn.Module):
    """Trunk (all tasks), ``pair`` (tasks 0 and 1), one head per task, ``unused`` (no task)."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.trunk = torch.nn.Linear(6, 8)
        self.pair = torch.nn.Linear(8, 8)
        self.heads = torch.nn.ModuleList(torch.nn.Linear(8, 1) for _ in range(3))
        self.unused = torch.nn.Parameter(torch.randn(4))
        self.double()

    def losses(self, step=0):
        g = torch.Generator().manual_seed(step)
        x = torch.randn(16, 6, generator=g, dtype=torch.float64)
        ys = torch.randn(3, 16, 1, generator=g, dtype=torch.float64) * torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1)
        z = torch.tanh(self.trunk(x))
        zp = torch.tanh(self.pair(z))
        return [((self.heads[t](zp if t < 2 else z) - ys[t]) ** 2).mean() for t in range(3)]


def grads(net):
    return {name: p.grad.clone() for name, p in net.named_parameters()}


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_original_algorithm(reduction, seed):
    ours_net, theirs_net = Net(seed), Net(seed)
    ours = PCGrad(torch.optim.SGD(ours_net.parameters(), lr=0.1), reduction=reduction)
    theirs = OriginalPCGrad(torch.optim.SGD(theirs_net.parameters(), lr=0.1), reduction=reduction)
    OriginalPCGrad.self_projections = 0
    random.seed(seed)
    ours.pc_backward(ours_net.losses(seed))
    random.seed(seed)
    theirs.pc_backward(theirs_net.losses(seed))
    assert OriginalPCGrad.self_projections == 0
    tolerance = theirs.error_bound
    mine, oracle = grads(ours_net), grads(theirs_net)
    for name in oracle:
        error = float((mine[name] - oracle[name]).abs().max())
        assert error <= tolerance, f"{name}: {error:.3g} > {tolerance:.3g}"
    assert torch.equal(mine["unused"], torch.zeros(4))  # a zero gradient, not None, as the original
    # Not vacuous: some projection happened, and mean differs from sum on the trunk only.
    plain = Net(seed)
    total = torch.autograd.grad(sum(plain.losses(seed)), list(plain.trunk.parameters()))[0]
    divisor = 3 if reduction == "mean" else 1
    assert float((mine["trunk.weight"] * divisor - total).abs().max()) > 1e-6


def test_index_order_and_generator():
    net_a, net_b = Net(3), Net(3)
    a = PCGrad(torch.optim.SGD(net_a.parameters(), lr=0.1), shuffle=False)
    b = OriginalPCGrad(torch.optim.SGD(net_b.parameters(), lr=0.1), shuffle=False)
    OriginalPCGrad.self_projections = 0
    a.pc_backward(net_a.losses())
    b.pc_backward(net_b.losses())
    assert OriginalPCGrad.self_projections == 0
    tolerance = b.error_bound
    for name, g in grads(net_b).items():
        assert float((grads(net_a)[name] - g).abs().max()) <= tolerance
    results = []
    for _ in range(2):
        net = Net(3)
        opt = PCGrad(torch.optim.SGD(net.parameters(), lr=0.1), generator=torch.Generator().manual_seed(5))
        opt.pc_backward(net.losses())
        results.append(grads(net))
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])


def train(pcgrad_class, seed=0, steps=5):
    """A training loop written against Pytorch-PCGrad's API only: the import is the migration."""
    net = Net(seed)
    optimizer = pcgrad_class(torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9))
    random.seed(seed)
    for step in range(steps):
        optimizer.zero_grad()
        optimizer.pc_backward(net.losses(step))
        optimizer.step()
    return net, optimizer


def test_training_loop_migration():
    ours, opt = train(PCGrad)
    theirs, _ = train(OriginalPCGrad)
    assert isinstance(opt.optimizer, torch.optim.SGD)
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
        # Each step's gradients differ by ~1e-15 (the bound above); 5 SGD steps (lr 0.05, momentum
        # 0.9) move parameters by lr times at most 5 such gradients each: far below 1e-10.
        assert float((p - q).detach().abs().max()) <= 1e-10, name
    start = Net(0)
    assert sum(float(loss.detach()) for loss in ours.losses(99)) != sum(float(loss.detach()) for loss in start.losses(99))
    opt.zero_grad()
    assert all(p.grad is None for p in ours.parameters())


def test_options_and_errors():
    net = Net()
    sgd = torch.optim.SGD(net.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="reduction"):
        PCGrad(sgd, reduction="max")
    with pytest.raises(TypeError, match="optimizer"):
        PCGrad(net.parameters())
    with pytest.raises(TypeError, match="generator"):
        PCGrad(sgd, generator=5)
    with pytest.raises(ValueError, match="objectives"):
        PCGrad(sgd).pc_backward([])


def test_float32_and_single_task():
    net = Net().float()
    opt = PCGrad(torch.optim.SGD(net.parameters(), lr=0.1))
    x = torch.randn(4, 6)
    loss = net.heads[2](torch.tanh(net.trunk(x))).pow(2).mean()
    opt.pc_backward([loss])
    expected = torch.autograd.grad(net.heads[2](torch.tanh(net.trunk(x))).pow(2).mean(), net.trunk.weight)[0]
    assert net.trunk.weight.grad.dtype == torch.float32
    assert torch.allclose(net.trunk.weight.grad, expected, rtol=1e-6, atol=1e-7)
    assert torch.equal(net.pair.weight.grad, torch.zeros_like(net.pair.weight))
