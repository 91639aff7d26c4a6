"""GradVac (Wang et al. 2021, "Gradient Vaccine"): like PCGrad, but each task pair has a target
cosine φ̂_ij, an exponential moving average of the cosines seen (rate ``beta``); whenever
cos(g_iᴾᶜ, g_j) falls below its target, g_iᴾᶜ is moved towards g_j until it reaches it:
    g_iᴾᶜ += |g_iᴾᶜ| (φ̂ √(1-φ²) - φ √(1-φ̂²)) / (|g_j| √(1-φ̂²)) g_j.
Exact in Gram space (coefficients of the original g_k, as PCGrad). With the compiled extension
(``impl`` "auto", "cpp" or "cuda") one op, ``torch.ops.fastmtl.gradvac_weights``
(csrc/include/fastmtl/gradvac_math.h), runs each task's T pair updates in float64, O(T²) per task
(O(T) per pair with no conflict), the tasks in parallel, in one call on the CPU or one kernel
launch (plus the sum of the coefficient rows) on a GPU. ``impl="torch"`` runs ``gradvac_step``
below, the reference: all tasks advance together, about fifteen small ops per step, T steps. Scale: sum of the corrected gradients, as torchjd. The φ̂ matrix is the method's
state: a GradVac object keeps it across calls, and MTLOptimizer saves it in its state_dict.
"""

from __future__ import annotations

import torch

from fastmtl import _validate, functional
from fastmtl.methods import _options
from fastmtl.methods.base import GramWeighting, register


@register
class GradVac(GramWeighting):
    """The EMA of pairwise cosines, φ̂ [T, T], is the state (zeros until the first step, and again
    whenever T changes); a step whose K is not finite leaves it unchanged."""

    name = "gradvac"
    scale_linear = False  # eps in its denominators is not scaled: under a GradScaler it gets the unscaled K

    def __init__(self, *, beta: float = 0.5, eps: float = 1e-8, shuffle: bool = True,
                 generator: torch.Generator | None = None, impl: str = "auto"):
        self._set_options(beta=_options.real(self.name, "beta", beta, low=0.0, high=1.0),
                         eps=_options.real(self.name, "eps", eps, low=0.0, low_open=True),
                         shuffle=_options.flag(self.name, "shuffle", shuffle),
                         generator=_options.generator(self.name, generator), impl=impl)
        self.targets: torch.Tensor | None = None

    def _step_inputs(self, K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The targets before this step (float64, on K's device) and the tasks' order."""
        T = K.shape[0]
        previous = self.targets
        if previous is not None:
            previous = previous.to(device=K.device, dtype=K.dtype)  # e.g. resumed on a GPU
        if previous is None or previous.shape != (T, T):  # first step, or T changed: start over
            previous = torch.zeros(T, T, dtype=K.dtype, device=K.device)
        generator = _validate.generator_for(self.options["generator"], K.device)
        return previous, functional.pcgrad_order(T, shuffle=self.options["shuffle"], generator=generator,
                                                 device=K.device)

    def solve(self, K: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
        previous, order = self._step_inputs(K)
        weights, targets = gradvac_step(K, previous, order, self.options["beta"], self.options["eps"])
        self.targets = torch.where(finite, targets, previous)
        return weights

    def compiled_solve(self, K: torch.Tensor) -> torch.Tensor:  # csrc/include/fastmtl/gradvac_math.h
        previous, order = self._step_inputs(K)
        weights, targets = torch.ops.fastmtl.gradvac_weights(K, previous, order, self.options["beta"],
                                                             self.options["eps"])
        # The op makes every output NaN exactly when K is not finite (a finite K gives finite
        # weights: every division has eps added): then the step keeps the state, as a whole.
        self.targets = torch.where(weights[0].isnan(), previous, targets)
        return weights

    def state_dict(self) -> dict:
        return {"targets": self.targets}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != {"targets"}:
            raise ValueError(f"gradvac: a state_dict with the key 'targets' expected, got {sorted(state)}")
        self.targets = None if state["targets"] is None else state["targets"].clone()


def gradvac_step(K: torch.Tensor, targets: torch.Tensor, order: torch.Tensor | None, beta: float,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One GradVac step in Gram space: the task weights and the updated targets."""
    T = K.shape[0]
    targets = targets.clone()
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
    return C.sum(0), targets
