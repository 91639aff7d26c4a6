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
from dataclasses import dataclass
from typing import Callable

import torch

Method = Callable[..., torch.Tensor]
_METHODS: dict[str, Method] = {}
_WEIGHTINGS: dict[str, "Weighting"] = {}


def register(name: str):
    def decorate(fn: Method) -> Method:
        _METHODS[name] = fn
        return fn

    return decorate


@dataclass(frozen=True)
class Weighting:
    """A registered Gram-space method: ``weights(K, **options) -> w`` plus what its callers need
    to know about it."""

    weights: Method
    state: type | None  # class of its state (EMAs...) when stateful
    needs_gram: bool  # False when w depends on T alone (sum, mean): no Gram pass needed
    scale_linear: bool  # False when w . G does not scale with a common scale of G (Nash-MTL)
    takes_impl: bool

    def __call__(self, K: torch.Tensor, *, impl: str = "auto", **options) -> torch.Tensor:
        return self.weights(K, impl=impl, **options) if self.takes_impl else self.weights(K, **options)

    def gram(self, G: torch.Tensor, impl: str = "auto") -> torch.Tensor:
        """K for these weights; a placeholder of the right shape when the weights ignore it."""
        from fastmtl import functional, reference

        if self.needs_gram:
            return functional.gram(G, impl=impl)
        return torch.empty((G.shape[0], G.shape[0]), dtype=reference.accumulate_dtype(G.dtype), device=G.device)


def register_weighting(name: str, state: type | None = None, needs_gram: bool = True, scale_linear: bool = True):
    """Registers ``weights(K, **options)`` and the method G -> weights(gram(G)) . G. A stateful
    weighting names its state class; it takes ``state=`` (None: a fresh state per call) and
    MTLOptimizer keeps one across steps and in its state_dict."""

    def decorate(weights: Method) -> Method:
        from fastmtl import _validate, functional

        params = list(inspect.signature(weights).parameters.values())[1:]
        takes_impl = any(p.name == "impl" for p in params)
        info = Weighting(weights, state, needs_gram, scale_linear, takes_impl)

        def aggregate(G, *, impl="auto", **options):
            G = _validate.task_matrix(G)
            return functional.combine(G, info(info.gram(G, impl), impl=impl, **options), impl=impl)

        # The method's signature is the weighting's (K replaced by G), plus impl.
        impl = [] if takes_impl else [inspect.Parameter("impl", inspect.Parameter.KEYWORD_ONLY, default="auto")]
        aggregate.__signature__ = inspect.Signature(
            [inspect.Parameter("G", inspect.Parameter.POSITIONAL_ONLY)] + params + impl
        )
        aggregate.__doc__ = weights.__doc__
        aggregate.__name__ = f"aggregate_{name}"
        _WEIGHTINGS[name] = info
        _METHODS[name] = aggregate
        return weights

    return decorate


def get(name: str) -> Method:
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def weighting(name: str) -> Weighting | None:
    """The Gram-space weighting of ``name`` (callable as K -> w), or None if it is not one."""
    get(name)
    return _WEIGHTINGS.get(name)


def new_state(name: str):
    """A fresh state object for a stateful method, or None."""
    info = weighting(name)
    return info.state() if info is not None and info.state is not None else None


def available() -> list[str]:
    return sorted(_METHODS)


from fastmtl.methods import basic, cagrad, dual_cone, graddrop, gradvac, gram_space, nash_mtl, pcgrad  # noqa: E402,F401  (register the methods)
