"""Nash-MTL (Navon et al. 2022, "Multi-Task Learning as a Bargaining Game"): the weights α > 0
of the Nash bargaining solution satisfy K α = 1/α (element-wise), i.e. each task's gain
α_i (K α)_i = 1. Then d = Σ α_i g_i, scaled down to ``max_norm`` when longer (0: no limit).

The official code reaches α by sequential convex programs in cvxpy (and torchjd adapts it). We
solve the same equation exactly instead: it is the stationarity condition of the strictly convex,
self-concordant φ(α) = ½ αᵀKα - Σ log α_i, so damped Newton (α += Δ / (1 + λ), λ the Newton
decrement) converges from any positive start without a line search, on the device, in a fixed
number of steps. Scale: as the paper and torchjd (α from K α = 1/α, then the max_norm cap).

Solver path: with the compiled extension (``impl`` "auto", "cpp" or "cuda") one op,
``torch.ops.fastmtl.nash_mtl_weights`` (csrc/include/fastmtl/nash_mtl_math.h): float64 Cholesky
Newton steps, O(T³/3) each, in one call on the CPU or one kernel launch on a GPU, stopping once
the Newton decrement is at rounding level. ``impl="torch"`` runs ``nash_mtl_weights`` below, the
reference: a dense ``solve_ex`` and about ten small ops per step, every step.
"""

from __future__ import annotations

import torch

from fastmtl.methods import _options
from fastmtl.methods.base import GramWeighting, register


@register
class NashMTL(GramWeighting):
    name = "nash_mtl"
    scale_linear = False

    def __init__(self, *, max_norm: float = 1.0, iterations: int = 30, impl: str = "auto"):
        self._set_options(max_norm=_options.real(self.name, "max_norm", max_norm, low=0.0),
                         iterations=_options.integer(self.name, "iterations", iterations), impl=impl)

    def solve(self, K: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
        return nash_mtl_weights(K, self.options["max_norm"], self.options["iterations"])

    def compiled_solve(self, K: torch.Tensor) -> torch.Tensor:  # csrc/include/fastmtl/nash_mtl_math.h
        return torch.ops.fastmtl.nash_mtl_weights(K, self.options["max_norm"], self.options["iterations"])


def nash_mtl_weights(K: torch.Tensor, max_norm: float, iterations: int) -> torch.Tensor:
    # Start from the solution for orthogonal gradients, α_i = 1 / |g_i| (1 for a zero gradient).
    norms = K.diagonal().clamp_min(0).sqrt()
    alpha = torch.where(norms > 0, 1 / torch.where(norms > 0, norms, 1.0), torch.ones_like(norms))
    for _ in range(iterations):
        gradient = K @ alpha - 1 / alpha
        hessian = K + torch.diag(1 / alpha**2)
        step = -torch.linalg.solve_ex(hessian, gradient, check_errors=False).result  # no info sync
        decrement = (-(gradient @ step)).clamp_min(0).sqrt()
        alpha = alpha + step / (1 + decrement)  # stays positive: self-concordant damping
    if max_norm > 0:
        norm = (alpha @ K @ alpha).clamp_min(0).sqrt()  # |Σ α_i g_i|
        alpha = torch.where(norm > max_norm, alpha * (max_norm / norm.clamp_min(1e-300)), alpha)
    return alpha
