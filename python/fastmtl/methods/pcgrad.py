"""PCGrad (Yu et al. 2020, "Gradient Surgery for Multi-Task Learning", Alg. 1).

Scale: ``reduction="sum"`` (default) returns Σ_i g_iᴾᶜ like the paper and torchjd;
``reduction="mean"`` divides by T like LibMTL. The official TF code never shuffles the task
order: ``shuffle=False`` reproduces it.
"""

from fastmtl import functional
from fastmtl.methods import register


@register("pcgrad")
def aggregate_pcgrad(G, *, reduction="sum", shuffle=True, generator=None, impl="auto"):
    return functional.project_conflicts(G, reduction=reduction, shuffle=shuffle, generator=generator, impl=impl)
