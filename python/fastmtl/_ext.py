"""Loads the compiled extension ``fastmtl._C`` when it is there.

The package never fails to import because of it: without the extension every op runs on the
pure-PyTorch reference path. ``HAS_EXT`` says whether the extension loaded, ``HAS_CUDA``
whether it carries CUDA kernels, and ``IMPORT_ERROR`` keeps the reason it did not load.
A failed load warns once, with the reason (a build against another torch would otherwise make
everything silently slower); FASTMTL_SKIP_EXT=1 in the environment says it was left out on
purpose and silences the warning.
"""

from __future__ import annotations

import os
import warnings

try:
    from fastmtl import _C  # registers torch.ops.fastmtl.* with the dispatcher

    HAS_EXT = True
    IMPORT_ERROR: BaseException | None = None
except (ImportError, OSError) as error:  # absent, or built against another torch
    _C = None
    HAS_EXT = False
    IMPORT_ERROR = error
    if os.environ.get("FASTMTL_SKIP_EXT", "0") != "1":
        warnings.warn(f"fastmtl: the compiled kernels (fastmtl._C) did not load, so every op runs on the pure-PyTorch "
                      f"reference: {error!r}. Rebuild with `pip install --no-build-isolation -e .` against this torch, "
                      "or set FASTMTL_SKIP_EXT=1 to run without them quietly.", RuntimeWarning, stacklevel=2)

HAS_CUDA = bool(HAS_EXT and _C.built_with_cuda)

if HAS_EXT:
    from fastmtl import _fake  # noqa: F401  (fake kernels so torch.compile can trace the ops)


def build_info() -> dict:
    """How the extension was built (or why it is missing)."""
    if not HAS_EXT:
        return {"has_ext": False, "import_error": repr(IMPORT_ERROR)}
    return {
        "has_ext": True,
        "version": _C.__version__,
        "built_with_cuda": HAS_CUDA,
        "torch_version": getattr(_C, "torch_version", "unknown"),
    }
