"""GradDrop (Chen et al. 2020, "Just Pick a Sign", Alg. 1).

Scale: sum of the kept task gradients (with ``leak=1`` it is exactly Σ_i g_i), as in the paper
and torchjd. The original form applies it to feature-level gradients with ``signs`` = the
activation and ``batch`` = the batch size (purity from batch-summed gradients); on parameter
gradients leave both None. MTLOptimizer's feature mode sets both.
"""

from fastmtl import functional
from fastmtl.methods import register


@register("graddrop")
def aggregate_graddrop(G, *, leak=0.0, signs=None, batch=None, generator=None, impl="auto"):
    return functional.graddrop(G, leak=leak, signs=signs, batch=batch, generator=generator, impl=impl)
