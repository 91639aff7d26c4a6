"""The seed papers' offline experiments, run by ``python -m fastmtl experiment NAME``. Importing
this package registers every experiment: each module here other than the runner's own
(registry, runner, plots) defines one or more and calls ``register``."""

import importlib
import pkgutil

from fastmtl.apps.experiments.registry import EXPERIMENTS, Experiment, register

_RUNNER_MODULES = {"registry", "runner", "plots"}
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in _RUNNER_MODULES and not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["EXPERIMENTS", "Experiment", "register"]
