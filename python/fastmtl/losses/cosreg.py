"""CosReg (Suteu & Guo 2019): a differentiable penalty on the squared cosines between the task
gradients, added to the summed loss."""

from __future__ import annotations

import torch

from fastmtl._numerics import cosine_from_gram
from fastmtl.engine.checks import check_losses, shared_parameter_list
from fastmtl.engine.groups import flat_grads
from fastmtl.methods import _options


def cosreg_penalty(losses, shared, *, weight: float = 1.0, eps: float = 1e-8) -> torch.Tensor:
    """CosReg: weight · mean over task pairs i ≠ j of cos(∇L_i, ∇L_j)², where the gradients are
    taken w.r.t. the shared parameters with ``create_graph=True``, so that adding the penalty to
    the loss and calling backward differentiates it (double backward). Without the graph the
    penalty would be a constant that changes nothing."""
    losses = check_losses(losses)
    params = [p for p in shared_parameter_list(shared) if p.requires_grad]
    weight = _options.real("cosreg", "weight", weight, low=0.0)
    eps = _options.real("cosreg", "eps", eps, low=0.0, low_open=True)
    T = len(losses)
    if T < 2:
        return losses[0].new_zeros(())
    rows = []
    for loss in losses:
        grads = torch.autograd.grad(loss, params, create_graph=True, retain_graph=True, allow_unused=True)
        rows.append(flat_grads(params, grads))
    G = torch.stack(rows)
    cosine = cosine_from_gram(G @ G.T, eps)
    off_diagonal = 1 - torch.eye(T, dtype=cosine.dtype, device=G.device)  # a product, not a mask: no sync
    return weight * (cosine.pow(2) * off_diagonal).sum() / (T * (T - 1))
