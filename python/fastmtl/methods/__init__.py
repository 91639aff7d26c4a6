"""Multi-task methods by name, for ``fastmtl.aggregate(G, method=...)`` and MTLOptimizer.

Each method is one object (``fastmtl.methods.create(name, **options)``), its options checked
when it is built and its state saved by ``state_dict()``; see ``base.py`` for the three
families (Gram-space weightings, element-wise methods, loss-side methods). One module per
method family registers its classes.
"""

from fastmtl.methods.base import (
    ElementwiseMethod,
    GramWeighting,
    LossMethod,
    Method,
    available,
    create,
    method_class,
    register,
)
from fastmtl.methods import basic, cagrad, dual_cone, graddrop, gradvac, gram_space, libmtl_recent, libmtl_weightings, loss_side, nash_mtl, pcd_fairgrad, pcgrad, peers_torchjd, stochastic_weightings  # noqa: E402,F401,I001  (register the methods)

__all__ = ["ElementwiseMethod", "GramWeighting", "LossMethod", "Method", "available", "create", "method_class",
           "register"]
