"""fastmtl: fast, exact multi-task gradient surgery for PyTorch.

    import fastmtl
    K = fastmtl.gram(G)                          # G: [T, P] task gradients
    d = fastmtl.project_conflicts(G)             # PCGrad
    d = fastmtl.graddrop(G, leak=0.1)            # GradDrop
    d = fastmtl.aggregate(G, method="pcgrad")    # any method by name

Importing never fails when the compiled extension is absent: ``fastmtl.HAS_EXT`` says whether
the C++/CUDA kernels are in use; otherwise the pure-PyTorch reference runs.
"""

from fastmtl import methods, metrics
from fastmtl import branching  # after methods: it imports the losses, which import the methods
from fastmtl._ext import HAS_CUDA, HAS_EXT, IMPORT_ERROR, build_info
from fastmtl.functional import cluster_tasks, cosine_similarity, gram, graddrop, project_conflicts
from fastmtl.branching import FairBranch, fbgrad, linear_cka, pair_tasks, parameter_similarity
from fastmtl.losses import GO4Align, cosreg_penalty, fairness_loss
from fastmtl.optim import MTLOptimizer, backward
from fastmtl._version import __version__


def aggregate(G, method="pcgrad", *, losses=None, **options):
    """Combine task gradients G [T, P] into one direction [P] with a method: a name of
    ``fastmtl.methods.available()`` (the README's table describes each) with its options (e.g.
    ``shuffle=False`` for pcgrad, ``leak=0.2`` for graddrop, ``impl=``), or a method object
    from ``fastmtl.methods.create`` (which keeps its state, e.g. GradVac's, across calls).
    ``losses``: the T task losses, for a method that uses their values (``needs_losses``: IMTL,
    DB-MTL, MoCo); refused by the others.
    """
    method = methods.create(method, **options)
    if losses is not None:
        method.take_losses(losses)
    return method(G)


__all__ = [
    "__version__",
    "branching",
    "methods",
    "metrics",
    "FairBranch",
    "GO4Align",
    "MTLOptimizer",
    "backward",
    "HAS_CUDA",
    "HAS_EXT",
    "IMPORT_ERROR",
    "aggregate",
    "build_info",
    "cluster_tasks",
    "cosreg_penalty",
    "cosine_similarity",
    "fairness_loss",
    "fbgrad",
    "gram",
    "graddrop",
    "linear_cka",
    "pair_tasks",
    "parameter_similarity",
    "project_conflicts",
]
