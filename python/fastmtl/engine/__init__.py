"""The gradient engine: where per-task gradients come from (``sources``), the groups of
shared parameters they are collected for (``groups``), and the all-or-nothing handling of
``.grad`` around a backward (``snapshot``), the averaging over processes (``distributed``),
and which parameters each loss reaches (``autoshare``: ``shared="auto"``).
MTLOptimizer runs it as collect → (average) → weight → combine → write."""

from fastmtl.engine.checks import check_losses, shared_parameter_list
from fastmtl.engine.distributed import ProcessAverage
from fastmtl.engine.groups import SharedGroup, flat_grads, point_grads_at, task_list
from fastmtl.engine.snapshot import all_or_nothing
from fastmtl.engine.sources import FeatureGradients, FsdpGradients, ParameterGradients, TaskMatrix, sharded_by_fsdp

__all__ = ["FeatureGradients", "FsdpGradients", "ParameterGradients", "ProcessAverage", "SharedGroup", "TaskMatrix",
           "all_or_nothing", "check_losses", "flat_grads", "point_grads_at", "shared_parameter_list", "sharded_by_fsdp",
           "task_list"]
