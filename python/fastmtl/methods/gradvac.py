"""GradVac (Wang et al. 2021, "Gradient Vaccine"): like PCGrad, but each task pair has a target
cosine φ̂_ij, an exponential moving average of the cosines seen (rate ``beta``); whenever
cos(g_iᴾᶜ, g_j) falls below its target, g_iᴾᶜ is moved towards g_j until it reaches it:
    g_iᴾᶜ += |g_iᴾᶜ| (φ̂ √(1-φ²) - φ √(1-φ̂²)) / (|g_j| √(1-φ̂²)) g_j.
Exact in Gram space (coefficients of the original g_k, as PCGrad); all tasks advance together
on the device. Scale: sum of the corrected gradients, as torchjd. The φ̂ matrix is the method's
state: MTLOptimizer keeps it across steps (and in its state_dict).
"""

from __future__ import annotations

import torch

from fastmtl import _validate, functional
from fastmtl.methods import register_weighting


class GradVacState:
    """The EMA of pairwise cosines, φ̂ [T, T] (zeros until the first step)."""

    def __init__(self):
        self.targets: torch.Tensor | None = None

    def state_dict(self) -> dict:
        return {"targets": self.targets}

    def load_state_dict(self, state: dict) -> None:
        self.targets = None if state["targets"] is None else state["targets"].clone()


@register_weighting("gradvac", state=GradVacState)
def gradvac_weights(K: torch.Tensor, *, beta: float = 0.5, eps: float = 1e-8, shuffle: bool = True,
                    generator=None, state: GradVacState | None = None) -> torch.Tensor:
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must lie in [0, 1], got {beta!r}")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    K = K.double()
    T = K.shape[0]
    state = GradVacState() if state is None else state
    if state.targets is not None:
        state.targets = state.targets.to(device=K.device, dtype=K.dtype)  # e.g. resumed on a GPU
    if state.targets is None or state.targets.shape != (T, T):  # first step, or T changed: start over
        state.targets = torch.zeros(T, T, dtype=K.dtype, device=K.device)
    targets = state.targets.clone()
    generator = _validate.generator_for(generator, K.device)
    order = functional.pcgrad_order(T, shuffle=shuffle, generator=generator, device=K.device)
    rows = torch.arange(T, device=K.device)
    order = rows.expand(T, T) if order is None else order
    C = torch.eye(T, dtype=K.dtype, device=K.device)  # row i: coefficients of g_i^PC
    CK = K.clone()  # row i: g_i^PC . g_j for every j
    for step in range(T):
        j = order[:, step]
        valid = j != rows
        dot = CK[rows, j]
        norm_i = (CK * C).sum(1).clamp_min(0).sqrt()
        norm_j = K[j, j].clamp_min(0).sqrt()
        cosine = dot / (norm_i * norm_j + eps)
        target = targets[rows, j]
        root_cosine = (1 - cosine * cosine).clamp_min(0).sqrt()
        root_target = (1 - target * target).clamp_min(0).sqrt()
        w = norm_i * (target * root_cosine - cosine * root_target) / (norm_j * root_target + eps)
        w = torch.where(valid & (cosine < target), w, torch.zeros_like(w))
        C[rows, j] += w
        CK += w[:, None] * K[j]
        targets[rows, j] = torch.where(valid, (1 - beta) * target + beta * cosine, target)
    state.targets = targets
    return C.sum(0)
