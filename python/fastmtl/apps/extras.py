"""Optional dependencies of the applications: a command checks its extra before it starts, so a
missing package ends the command with the pip line that installs it, not with a traceback
halfway through a run."""

from __future__ import annotations

import importlib.util
import sys

# extra -> {import name: distribution name} of what the command cannot run without; the extras
# of the same names in pyproject.toml install them (demo also brings matplotlib, for the plots,
# which the demo skips when it is absent).
EXTRAS = {
    "demo": {"sklearn": "scikit-learn", "tqdm": "tqdm"},
    "bench": {"pytest": "pytest", "pytest_benchmark": "pytest-benchmark", "torchjd": "torchjd"},
}


def missing(extra: str) -> list[str]:
    """The distributions of ``extra`` that cannot be imported here."""
    # find_spec looks the module up without importing it (torchjd alone takes a second).
    return [dist for module, dist in EXTRAS[extra].items() if importlib.util.find_spec(module) is None]


def require(extra: str, command: str) -> None:
    """Exit with the install line when ``python -m fastmtl <command>`` lacks part of ``extra``."""
    absent = missing(extra)
    if absent:
        sys.exit(f"python -m fastmtl {command} needs {', '.join(absent)}, which "
                 f"{'is' if len(absent) == 1 else 'are'} not installed: pip install 'fastmtl[{extra}]'")
