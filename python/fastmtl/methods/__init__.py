"""Aggregation methods by name, for ``fastmtl.aggregate(G, method=...)``.

Each method maps task gradients G [T, P] to one update direction [P] and documents its scale
convention. A module per method family registers its methods here with ``register``.
"""

from __future__ import annotations

from typing import Callable

import torch

Method = Callable[..., torch.Tensor]
_METHODS: dict[str, Method] = {}


def register(name: str):
    def decorate(fn: Method) -> Method:
        _METHODS[name] = fn
        return fn

    return decorate


def get(name: str) -> Method:
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def available() -> list[str]:
    return sorted(_METHODS)


from fastmtl.methods import basic, graddrop, pcgrad  # noqa: E402,F401  (register the methods)
