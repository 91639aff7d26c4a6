"""Plain linear scalarisation: the baselines every surgery method is compared with."""

import torch

from fastmtl import functional
from fastmtl.methods import register
from fastmtl.reference import accumulate_dtype


def _uniform_weights(G: torch.Tensor, value: float) -> torch.Tensor:
    return torch.full((G.shape[0],), value, dtype=accumulate_dtype(G.dtype), device=G.device)


@register("sum")
def aggregate_sum(G: torch.Tensor, *, impl: str = "auto") -> torch.Tensor:
    """Σ_i g_i: the gradient of the summed loss (scale: sum)."""
    return functional.combine(G, _uniform_weights(G, 1.0), impl=impl)


@register("mean")
def aggregate_mean(G: torch.Tensor, *, impl: str = "auto") -> torch.Tensor:
    """(1/T) Σ_i g_i: the gradient of the mean loss (scale: mean)."""
    G = functional._validate.task_matrix(G)
    return functional.combine(G, _uniform_weights(G, 1.0 / G.shape[0]), impl=impl)
