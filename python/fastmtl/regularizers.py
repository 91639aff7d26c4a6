"""Loss-side methods: CosReg adds a differentiable penalty to the loss, GO4Align weights the
task losses; neither needs the per-task gradient buffer of the surgery methods."""

from __future__ import annotations

import itertools
import math

import torch

from fastmtl import reference
from fastmtl.engine import check_losses, shared_parameter_list


def cosreg_penalty(losses, shared, *, weight: float = 1.0, eps: float = 1e-8) -> torch.Tensor:
    """CosReg: weight · mean over task pairs i ≠ j of cos(∇L_i, ∇L_j)², where the gradients are
    taken w.r.t. the shared parameters with ``create_graph=True``, so that adding the penalty to
    the loss and calling backward differentiates it (double backward). Without the graph the
    penalty would be a constant that changes nothing."""
    losses = check_losses(losses)
    params = shared_parameter_list(shared)
    if not weight >= 0:
        raise ValueError(f"weight must be >= 0, got {weight!r}")
    T = len(losses)
    if T < 2:
        return losses[0].new_zeros(())
    rows = []
    for loss in losses:
        grads = torch.autograd.grad(loss, params, create_graph=True, retain_graph=True, allow_unused=True)
        rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)]))
    G = torch.stack(rows)
    cosine = reference.cosine_from_gram(G @ G.T, eps)
    off_diagonal = 1 - torch.eye(T, dtype=cosine.dtype, device=G.device)  # a product, not a mask: no sync
    return weight * (cosine.pow(2) * off_diagonal).sum() / (T * (T - 1))


_SPLITS: dict = {}  # (T, groups, device) -> [S, groups - 1] inner cut positions


def _inner_cuts(T: int, groups: int, device) -> torch.Tensor:
    """Every way to cut T sorted values into ``groups`` non-empty runs (lexicographic order),
    built once per (T, groups, device) so later calls copy nothing to the device."""
    key = (T, groups, str(device))
    if key not in _SPLITS:
        if math.comb(T - 1, groups - 1) > 200_000:
            raise ValueError(f"1-D k-means scores every split: {T} tasks into {groups} groups is "
                             f"{math.comb(T - 1, groups - 1)} splits, more than this implementation handles")
        cuts = list(itertools.combinations(range(1, T), groups - 1)) or [()]
        _SPLITS[key] = torch.tensor(cuts, dtype=torch.int64, device=device).reshape(len(cuts), groups - 1)
    return _SPLITS[key]


def kmeans_1d(values: torch.Tensor, groups: int) -> torch.Tensor:
    """Exact 1-D k-means: the optimal clusters of points on a line are runs of the sorted values,
    so every split into ``groups`` runs is scored at once and the least within-group sum of
    squares wins (ties: the first split). Fixed shapes, no host sync. Returns each value's
    group, int64 [T], groups numbered by increasing value."""
    T = values.shape[0]
    order = values.argsort()
    ordered = values[order]
    cuts = _inner_cuts(T, groups, values.device)  # [S, groups - 1]
    positions = torch.arange(T, device=values.device)
    labels = (positions[None, :, None] >= cuts[:, None, :]).sum(-1)  # [S, T] group of each sorted value
    members = torch.nn.functional.one_hot(labels, groups).to(values.dtype)  # [S, T, groups]
    means = (members * ordered[None, :, None]).sum(1) / members.sum(1)  # runs are non-empty
    cost = ((ordered[None, :] - means.gather(1, labels)) ** 2).sum(1)
    best = labels.index_select(0, cost.argmin().reshape(1))[0]  # not labels[argmin]: no sync
    return torch.empty_like(best).scatter_(0, order, best)


class GO4Align:
    """GO4Align loss weighting (Shen et al. 2024), as in DESIGN.md §4: per step, from the task
    losses ℓ (values only, no per-task backward)
        ξ_m = Σ_j ℓ_j / ℓ_m,   ζ ← normalise(ζ · exp(-β ℓ)),   γ = ξ · ζ,
    tasks are grouped by (exact) 1-D k-means on γ into ``n_groups`` groups, and each task's weight is its
    group's mean γ. ``loss(losses)`` returns Σ_m ω_m L_m for one backward pass."""

    def __init__(self, n_tasks: int, n_groups: int = 2, beta: float = 1e-4):
        if isinstance(n_tasks, bool) or not isinstance(n_tasks, int) or n_tasks < 1:
            raise ValueError(f"n_tasks must be an int >= 1, got {n_tasks!r}")
        if isinstance(n_groups, bool) or not isinstance(n_groups, int) or not 1 <= n_groups <= n_tasks:
            raise ValueError(f"n_groups must be an int in [1, n_tasks] = [1, {n_tasks}], got {n_groups!r}")
        if not beta >= 0:
            raise ValueError(f"beta must be >= 0, got {beta!r}")
        self.n_tasks, self.n_groups, self.beta = n_tasks, n_groups, beta
        self.zeta: torch.Tensor | None = None  # created on the losses' device at the first step
        self.last_groups: torch.Tensor | None = None

    def weights(self, losses) -> torch.Tensor:
        """The task weights ω [T] for these losses (detached); advances ζ."""
        values = torch.stack([loss.detach().reshape(()) for loss in check_losses(losses)]).double()
        if values.shape[0] != self.n_tasks:
            raise ValueError(f"expected {self.n_tasks} losses, got {values.shape[0]}")
        if self.zeta is None:
            self.zeta = torch.full((self.n_tasks,), 1.0 / self.n_tasks, dtype=torch.float64, device=values.device)
        self.zeta = self.zeta.to(values.device)  # e.g. a CPU checkpoint resumed on a GPU
        xi = values.sum() / values.clamp_min(torch.finfo(values.dtype).tiny)  # a zero loss: huge, not inf
        zeta = self.zeta * torch.exp(-self.beta * values)
        self.zeta = zeta / zeta.sum()
        gamma = xi * self.zeta
        self.last_groups = kmeans_1d(gamma, self.n_groups)
        members = torch.nn.functional.one_hot(self.last_groups, self.n_groups).to(gamma.dtype)
        group_mean = (members.T @ gamma) / members.sum(0).clamp_min(1)
        return group_mean[self.last_groups]

    def loss(self, losses) -> torch.Tensor:
        losses = check_losses(losses)
        weights = self.weights(losses)
        return sum(w.to(loss.dtype) * loss.reshape(()) for w, loss in zip(weights, losses))

    def state_dict(self) -> dict:
        return {"zeta": self.zeta, "n_groups": self.n_groups, "beta": self.beta}

    def load_state_dict(self, state: dict) -> None:
        self.zeta = None if state["zeta"] is None else state["zeta"].clone()
        self.n_groups, self.beta = state["n_groups"], state["beta"]


class CosRegLoss:
    """MTLOptimizer's "cosreg": the summed loss plus CosReg's penalty, one backward."""

    def __init__(self, weight: float = 1.0, eps: float = 1e-8):
        if not weight >= 0:
            raise ValueError(f"weight must be >= 0, got {weight!r}")
        self.weight, self.eps = weight, eps

    def __call__(self, losses, shared) -> torch.Tensor:
        losses = check_losses(losses)
        return sum(loss.reshape(()) for loss in losses) + cosreg_penalty(losses, shared, weight=self.weight, eps=self.eps)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class GO4AlignLoss:
    """MTLOptimizer's "go4align": Σ ω_m L_m from GO4Align, one backward; T is read from the
    first step."""

    def __init__(self, n_groups: int = 2, beta: float = 1e-4):
        self.n_groups, self.beta = n_groups, beta
        self.weighter: GO4Align | None = None

    def __call__(self, losses, shared) -> torch.Tensor:
        losses = check_losses(losses)
        if self.weighter is None:
            self.weighter = GO4Align(len(losses), n_groups=self.n_groups, beta=self.beta)
        return self.weighter.loss(losses)

    def state_dict(self) -> dict:
        return {} if self.weighter is None else {"n_tasks": self.weighter.n_tasks, **self.weighter.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.weighter = GO4Align(state["n_tasks"], n_groups=state["n_groups"], beta=state["beta"])
            self.weighter.load_state_dict(state)


# Methods that act on the losses, not on per-task gradients: MTLOptimizer runs one backward of
# the loss they build. (They have no fastmtl.aggregate(G) form: they never see G.)
LOSS_METHODS = {"cosreg": CosRegLoss, "go4align": GO4AlignLoss}
