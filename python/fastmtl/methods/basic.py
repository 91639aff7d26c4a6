"""Plain linear scalarisation: the baselines every surgery method is compared with."""

import torch

from fastmtl.methods.base import GramWeighting, register


@register
class Sum(GramWeighting):
    """Σ_i g_i: the gradient of the summed loss (scale: sum)."""

    name = "sum"
    needs_gram = False

    def solve(self, K: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
        return torch.ones(K.shape[0], dtype=K.dtype, device=K.device)

    def weights(self, K: torch.Tensor) -> torch.Tensor:
        # w depends on T alone: no NaN policy on K (the update propagates NaN per coordinate).
        return self.solve(K.double(), None)


@register
class Mean(Sum):
    """(1/T) Σ_i g_i: the gradient of the mean loss (scale: mean)."""

    name = "mean"

    def solve(self, K: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
        return torch.full((K.shape[0],), 1.0 / K.shape[0], dtype=K.dtype, device=K.device)
