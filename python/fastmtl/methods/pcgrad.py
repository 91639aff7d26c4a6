"""PCGrad (Yu et al. 2020, "Gradient Surgery for Multi-Task Learning", Alg. 1).

Scale: ``reduction="sum"`` (default) returns Σ_i g_iᴾᶜ like the paper and torchjd;
``reduction="mean"`` divides by T like Pytorch-PCGrad's default (LibMTL 1.1.5 sums). The official TF code never shuffles the task
order: ``shuffle=False`` reproduces it. Exact in Gram space (weights from K, then w · G).
"""

from __future__ import annotations

import torch

from fastmtl import functional
from fastmtl.methods import _options
from fastmtl.methods.base import GramWeighting, register


@register
class PCGrad(GramWeighting):
    name = "pcgrad"

    def __init__(self, *, reduction: str = "sum", shuffle: bool = True, generator: torch.Generator | None = None,
                 impl: str = "auto"):
        self._set_options(reduction=_options.one_of(self.name, "reduction", reduction, ("sum", "mean")),
                         shuffle=_options.flag(self.name, "shuffle", shuffle),
                         generator=_options.generator(self.name, generator), impl=impl)

    def solve(self, K: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
        return functional.pcgrad_task_weights(K, reduction=self.options["reduction"], shuffle=self.options["shuffle"],
                                              generator=self.options["generator"], impl=self.impl)

    def compiled_solve(self, K: torch.Tensor) -> torch.Tensor:  # the op gives NaN for a non-finite K itself
        return self.solve(K, finite=None)
