"""pytest plugin: run torchjd's own aggregation tests against fastmtl.compat.torchjd.

Loaded by scripts/run_torchjd_tests.sh (``-p torchjd_compat_plugin``). Plugins given with -p are
imported before any conftest or test module, so replacing the classes here means every
``from torchjd.aggregation import UPGrad`` (or ``from torchjd.aggregation._upgrad import
UPGradWeighting``) in the tests gets fastmtl's bridge instead: the test files run unchanged.

Only concrete aggregators and weightings are replaced; torchjd's base classes (Aggregator,
Weighting, GramianWeightedAggregator, ...) stay, and the bridges subclass them.

FASTMTL_TORCHJD_SUBSTITUTE=0 leaves torchjd's classes in place: the baseline run, which tells
the failures of the tests themselves (e.g. a test written for another torchjd version) from the
bridges'.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types


def _stub_torchvision() -> None:
    # torchjd's tests/utils/architectures.py imports torchvision at module level for models that
    # only its autogram tests build; the aggregation tests never touch them.
    if importlib.util.find_spec("torchvision") is None:
        stub = types.ModuleType("torchvision")
        stub.models = None
        sys.modules["torchvision"] = stub


def _substitute() -> list[str]:
    """Replaces every torchjd.aggregation class that has a bridge, in the package and in its
    private modules (the tests import some from there). Returns the replaced names."""
    import torchjd.aggregation as package
    from fastmtl.compat import torchjd as bridges

    replaced = []
    for name, ours in bridges.TORCHJD_REPLACEMENTS.items():
        for module_name, module in list(sys.modules.items()):
            if module is None or not (module_name == package.__name__ or module_name.startswith(package.__name__ + ".")):
                continue
            theirs = module.__dict__.get(name)
            if isinstance(theirs, type) and theirs is not ours:
                setattr(module, name, ours)
                replaced.append(f"{module_name}.{name}")
    return replaced


_stub_torchvision()
REPLACED = _substitute() if os.environ.get("FASTMTL_TORCHJD_SUBSTITUTE", "1") != "0" else []


def pytest_report_header(config):
    if not REPLACED:
        return "fastmtl torchjd plugin: torchjd's own classes (baseline, FASTMTL_TORCHJD_SUBSTITUTE=0)"
    return f"fastmtl torchjd plugin: {len(REPLACED)} torchjd.aggregation names replaced by fastmtl.compat.torchjd"
