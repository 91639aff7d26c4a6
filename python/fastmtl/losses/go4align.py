"""GO4Align (Shen et al. 2024): task-loss weights from the losses' values alone, grouped by
exact 1-D k-means; one backward of Σ ω_m L_m, no per-task gradients."""

from __future__ import annotations

import itertools
import math

import torch

from fastmtl.engine.checks import check_losses
from fastmtl.methods import _options


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
    """GO4Align loss weighting (Shen et al. 2024): per step, from the task
    losses ℓ (values only, no per-task backward)
        ξ_m = Σ_j ℓ_j / ℓ_m,   ζ ← normalise(ζ · exp(-β ℓ)),   γ = ξ · ζ,
    tasks are grouped by (exact) 1-D k-means on γ into ``n_groups`` groups, and each task's weight is its
    group's mean γ. ``loss(losses)`` returns Σ_m ω_m L_m for one backward pass."""

    def __init__(self, n_tasks: int, n_groups: int = 2, beta: float = 1e-4):
        n_tasks = _options.integer("go4align", "n_tasks", n_tasks)
        n_groups = _options.integer("go4align", "n_groups", n_groups)
        if n_groups > n_tasks:
            raise ValueError(f"go4align: n_groups must lie in [1, n_tasks] = [1, {n_tasks}], got {n_groups}")
        beta = _options.real("go4align", "beta", beta, low=0.0)
        self.n_tasks, self.n_groups, self.beta = n_tasks, n_groups, beta
        self.zeta: torch.Tensor | None = None  # created on the losses' device at the first step
        self.last_groups: torch.Tensor | None = None

    def weights(self, losses) -> torch.Tensor:
        """The task weights ω [T] for these losses (detached); advances ζ. Losses that are not
        all finite (e.g. an AMP overflow that GradScaler skips) leave ζ as it was and give NaN
        weights: one bad step must not poison ζ for the rest of training."""
        values = torch.stack([loss.detach().reshape(()) for loss in check_losses(losses)]).double()
        if values.shape[0] != self.n_tasks:
            raise ValueError(f"expected {self.n_tasks} losses, got {values.shape[0]}")
        if self.zeta is None:
            self.zeta = torch.full((self.n_tasks,), 1.0 / self.n_tasks, dtype=torch.float64, device=values.device)
        self.zeta = self.zeta.to(values.device)  # e.g. a CPU checkpoint resumed on a GPU
        finite = torch.isfinite(values).all()  # a device tensor: selected below, never read (no sync)
        values = torch.where(finite, values, torch.ones_like(values))
        xi = values.sum() / values.clamp_min(torch.finfo(values.dtype).tiny)  # a zero loss: huge, not inf
        zeta = self.zeta * torch.exp(-self.beta * values)
        zeta = zeta / zeta.sum()
        self.zeta = torch.where(finite, zeta, self.zeta)
        gamma = xi * zeta
        self.last_groups = kmeans_1d(gamma, self.n_groups)
        members = torch.nn.functional.one_hot(self.last_groups, self.n_groups).to(gamma.dtype)
        group_mean = (members.T @ gamma) / members.sum(0).clamp_min(1)
        weights = group_mean[self.last_groups]
        return torch.where(finite, weights, torch.full_like(weights, float("nan")))

    def loss(self, losses) -> torch.Tensor:
        losses = check_losses(losses)
        weights = self.weights(losses)
        return sum(w.to(loss.dtype) * loss.reshape(()) for w, loss in zip(weights, losses))

    def state_dict(self) -> dict:
        return {"zeta": self.zeta, "n_groups": self.n_groups, "beta": self.beta}

    def load_state_dict(self, state: dict) -> None:
        self.zeta = None if state["zeta"] is None else state["zeta"].clone()
        self.n_groups, self.beta = state["n_groups"], state["beta"]
