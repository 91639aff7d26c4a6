"""Plain linear scalarisation: the baselines every surgery method is compared with."""

import torch

from fastmtl.methods import register_weighting


@register_weighting("sum", needs_gram=False)
def sum_weights(K: torch.Tensor) -> torch.Tensor:
    """Σ_i g_i: the gradient of the summed loss (scale: sum)."""
    return torch.ones(K.shape[0], dtype=K.dtype, device=K.device)


@register_weighting("mean", needs_gram=False)
def mean_weights(K: torch.Tensor) -> torch.Tensor:
    """(1/T) Σ_i g_i: the gradient of the mean loss (scale: mean)."""
    return torch.full((K.shape[0],), 1.0 / K.shape[0], dtype=K.dtype, device=K.device)
