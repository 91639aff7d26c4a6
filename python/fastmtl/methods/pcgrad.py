"""PCGrad (Yu et al. 2020, "Gradient Surgery for Multi-Task Learning", Alg. 1).

Scale: ``reduction="sum"`` (default) returns Σ_i g_iᴾᶜ like the paper and torchjd;
``reduction="mean"`` divides by T like LibMTL. The official TF code never shuffles the task
order: ``shuffle=False`` reproduces it. Exact in Gram space (weights from K, then w . G).
"""

import torch

from fastmtl import _validate, functional
from fastmtl.methods import register_weighting


@register_weighting("pcgrad")
def pcgrad_weights(K: torch.Tensor, *, reduction="sum", shuffle=True, generator=None, impl="auto") -> torch.Tensor:
    """PCGrad task weights w (Σ_i g_iᴾᶜ = w . G) from the Gram matrix K."""
    _validate.choice(reduction, ("sum", "mean"), "reduction")
    generator = _validate.generator_for(generator, K.device)
    order = functional.pcgrad_order(K.shape[0], shuffle=shuffle, generator=generator, device=K.device)
    weights = functional.pcgrad_weights(K, order, impl=impl)
    return weights / K.shape[0] if reduction == "mean" else weights
