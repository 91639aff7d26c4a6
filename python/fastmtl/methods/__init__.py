"""Aggregation methods by name, for ``fastmtl.aggregate(G, method=...)`` and MTLOptimizer.

Each method maps task gradients G [T, P] to one update direction [P] and documents its scale
convention. A module per method family registers its methods here:

* ``register(name)`` for any method G -> direction;
* ``register_weighting(name)`` for a Gram-space method, a function K [T, T] -> weights w [T]
  (options as keywords); the direction is w . G, computed with one Gram pass and one combine
  pass, and MTLOptimizer(every=k) can reuse w for k steps.
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch

Method = Callable[..., torch.Tensor]
_METHODS: dict[str, Method] = {}
_WEIGHTINGS: dict[str, Method] = {}
_STATES: dict[str, type] = {}  # stateful weightings: the class of their state (EMAs and the like)


def register(name: str):
    def decorate(fn: Method) -> Method:
        _METHODS[name] = fn
        return fn

    return decorate


def register_weighting(name: str, state: type | None = None):
    """Registers ``weights(K, **options)`` and the method G -> weights(gram(G)) . G. A stateful
    weighting names its state class; it takes ``state=`` (None: a fresh state per call) and
    MTLOptimizer keeps one across steps and in its state_dict."""

    def decorate(weights: Method) -> Method:
        from fastmtl import functional

        params = list(inspect.signature(weights).parameters.values())[1:]
        takes_impl = any(p.name == "impl" for p in params)

        def aggregate(G, *, impl="auto", **options):
            K = functional.gram(G, impl=impl)
            w = weights(K, impl=impl, **options) if takes_impl else weights(K, **options)
            return functional.combine(G, w, impl=impl)

        # The method's signature is the weighting's (K replaced by G), plus impl.
        impl = [] if takes_impl else [inspect.Parameter("impl", inspect.Parameter.KEYWORD_ONLY, default="auto")]
        aggregate.__signature__ = inspect.Signature(
            [inspect.Parameter("G", inspect.Parameter.POSITIONAL_ONLY)] + params + impl
        )
        aggregate.__doc__ = weights.__doc__
        aggregate.__name__ = f"aggregate_{name}"
        _WEIGHTINGS[name] = weights
        _METHODS[name] = aggregate
        if state is not None:
            _STATES[name] = state
        return weights

    return decorate


def get(name: str) -> Method:
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def weighting(name: str) -> Method | None:
    """The Gram-space weighting of ``name`` (K -> w), or None if the method is not one."""
    get(name)
    return _WEIGHTINGS.get(name)


def new_state(name: str):
    """A fresh state object for a stateful method, or None."""
    get(name)
    return _STATES[name]() if name in _STATES else None


def available() -> list[str]:
    return sorted(_METHODS)


from fastmtl.methods import basic, cagrad, dual_cone, graddrop, gradvac, gram_space, nash_mtl, pcgrad  # noqa: E402,F401  (register the methods)
