"""Plain linear scalarisation: the baselines every surgery method is compared with."""

import torch

from fastmtl import _validate, functional
from fastmtl.methods import register
from fastmtl.reference import accumulate_dtype


def _uniform_combination(G, value_of_T, impl: str) -> torch.Tensor:
    G = _validate.task_matrix(G)
    tasks = G.shape[0]
    weights = torch.full((tasks,), value_of_T(tasks), dtype=accumulate_dtype(G.dtype), device=G.device)
    return functional.combine(G, weights, impl=impl)


@register("sum")
def aggregate_sum(G: torch.Tensor, *, impl: str = "auto") -> torch.Tensor:
    """Σ_i g_i: the gradient of the summed loss (scale: sum)."""
    return _uniform_combination(G, lambda tasks: 1.0, impl)


@register("mean")
def aggregate_mean(G: torch.Tensor, *, impl: str = "auto") -> torch.Tensor:
    """(1/T) Σ_i g_i: the gradient of the mean loss (scale: mean)."""
    return _uniform_combination(G, lambda tasks: 1.0 / tasks, impl)
