"""GradDrop (Chen et al. 2020, "Just Pick a Sign", Alg. 1).

Scale: sum of the kept task gradients (with ``leak=1`` it is exactly Σ_i g_i), as in the paper
and torchjd. The original form applies it to feature-level gradients with ``signs`` = the
activation and ``batch`` = the batch size (purity from batch-summed gradients); on parameter
gradients leave both None. MTLOptimizer's feature mode sets both. ``column_offset``: G holds
columns [column_offset, column_offset + P) of a G split by columns across processes; with the
same generator state everywhere, the shards' results concatenate to the unsharded result, bit
for bit (the uniform of a column depends on its index in the unsharded G only).
"""

from __future__ import annotations

import torch

from fastmtl import functional
from fastmtl.methods import _options
from fastmtl.methods.base import ElementwiseMethod, _impl, register


@register
class GradDrop(ElementwiseMethod):
    name = "graddrop"

    def __init__(self, *, leak=0.0, generator: torch.Generator | None = None, impl: str = "auto"):
        if not isinstance(leak, torch.Tensor):  # a [T] tensor is checked against G at each call
            leak = _options.real(self.name, "leak", leak, low=0.0, high=1.0)
        super().__init__(leak=leak, generator=_options.generator(self.name, generator), impl=_impl(self.name, impl))

    def __call__(
        self, G: torch.Tensor, *, signs: torch.Tensor | None = None, batch: int | None = None, column_offset: int = 0
    ) -> torch.Tensor:
        # column_offset: G is a column shard (see functional.graddrop); same masks as the whole G.
        return functional.graddrop(G, signs=signs, batch=batch, column_offset=column_offset, **self.options)
