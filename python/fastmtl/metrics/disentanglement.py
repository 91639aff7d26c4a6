"""Feature disentanglement and ranking similarity (Mao et al. 2024; the paper's formulas were not
available, the reading adopted is the one of docs/design.md "Metrics").

FD: per feature element j, the share of each task in its saliency, p_tj = s_tj / Σ_t s_tj with
s_tj = Σ_batch |∂L_t/∂z_j|; FD = mean over j of H(p_·j) / log T, in [0, 1]: 0 when every feature
is owned by one task, 1 when every feature serves all tasks evenly. Features no task uses
(Σ_t s_tj = 0) are left out.
"""

from __future__ import annotations

import math

import torch

from fastmtl.engine.checks import check_losses
from fastmtl.metrics._inputs import any_tensor, as_tensor, result
from fastmtl.metrics.multitask import average_ranks


def feature_saliency(losses, z: torch.Tensor) -> torch.Tensor:
    """s [T, J]: Σ over the batch of |∂L_t/∂z_j|, for a representation z [batch, ...] (J = the
    elements of one sample's z). One backward per task, through what lies between z and the
    losses only (the heads), not through the encoder."""
    losses = check_losses(losses)
    if not isinstance(z, torch.Tensor) or not z.requires_grad:
        raise ValueError("z must be the representation the losses were computed from, a tensor that requires grad")
    batch = z.shape[0] if z.dim() > 1 else 1
    rows = []
    for t, loss in enumerate(losses):
        (grad,) = torch.autograd.grad(loss, z, retain_graph=True, allow_unused=True)
        grad = torch.zeros_like(z) if grad is None else grad
        rows.append(grad.detach().abs().reshape(batch, -1).sum(0))
    return torch.stack(rows)


def feature_disentanglement(saliency, *, weighted: bool = False):
    """FD of per-task saliencies s [T, J] (T >= 2). ``weighted``: a saliency-weighted mean over
    features instead of the plain mean. NaN when no feature has any saliency."""
    s = as_tensor(saliency, "saliency", dtype=torch.float64)
    if s.dim() != 2 or s.shape[0] < 2 or s.shape[1] == 0:
        raise ValueError(f"saliency must be [T, J] with T >= 2 tasks and J >= 1 features, got {tuple(s.shape)}")
    if bool((s < 0).any()) or not bool(torch.isfinite(s).all()):
        raise ValueError("saliency must be finite and non-negative (sums of |gradient|)")
    total = s.sum(0)
    used = total > 0
    p = s / torch.where(used, total, 1.0)
    entropy = -torch.where(p > 0, p * p.log(), torch.zeros_like(p)).sum(0) / math.log(s.shape[0])
    weight = total if weighted else used.double()
    return result((entropy * weight).sum() / weight.sum(), any_tensor(saliency))


def ranking_similarity(a, b, *, method: str = "kendall"):
    """How well two scorings of the same items (methods, tasks) agree: Kendall's τ_b (ties
    counted as scipy.stats.kendalltau does), or Spearman's ρ (``method="spearman"``). NaN when
    one scoring is constant."""
    x = as_tensor(a, "a", dtype=torch.float64)
    y = as_tensor(b, "b", dtype=torch.float64, device=x.device)
    if x.dim() != 1 or x.shape != y.shape or x.shape[0] < 2:
        raise ValueError(f"a and b must be two 1-D scorings of the same >= 2 items, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    if method == "kendall":
        upper = torch.triu(torch.ones(x.shape[0], x.shape[0], dtype=torch.bool, device=x.device), diagonal=1)
        dx = torch.sign(x[:, None] - x[None, :])[upper]
        dy = torch.sign(y[:, None] - y[None, :])[upper]
        pairs = dx.numel()
        untied_x, untied_y = (dx != 0).sum().double(), (dy != 0).sum().double()
        value = (dx * dy).sum() / torch.sqrt(untied_x * untied_y) if pairs else torch.tensor(float("nan"))
    elif method == "spearman":
        rx, ry = average_ranks(x[:, None])[:, 0], average_ranks(y[:, None])[:, 0]
        rx, ry = rx - rx.mean(), ry - ry.mean()
        value = (rx * ry).sum() / torch.sqrt((rx * rx).sum() * (ry * ry).sum())
    else:
        raise ValueError(f"method must be 'kendall' or 'spearman', got {method!r}")
    return result(value, any_tensor(a, b))
