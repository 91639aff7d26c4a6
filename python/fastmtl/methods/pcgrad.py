"""PCGrad (Yu et al. 2020, "Gradient Surgery for Multi-Task Learning", Alg. 1).

Scale: ``reduction="sum"`` (default) returns Σ_i g_iᴾᶜ like the paper and torchjd;
``reduction="mean"`` divides by T like LibMTL. The official TF code never shuffles the task
order: ``shuffle=False`` reproduces it. Exact in Gram space (weights from K, then w . G).
"""

import torch

from fastmtl import functional
from fastmtl.methods import register_weighting


@register_weighting("pcgrad")
def pcgrad_weights(K: torch.Tensor, *, reduction="sum", shuffle=True, generator=None, impl="auto") -> torch.Tensor:
    """PCGrad task weights w (Σ_i g_iᴾᶜ = w . G) from the Gram matrix K."""
    return functional.pcgrad_task_weights(K, reduction=reduction, shuffle=shuffle, generator=generator, impl=impl)
