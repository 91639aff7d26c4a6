"""MTLOptimizer: wrap any torch.optim optimizer, hand it the list of task losses.

    opt = fastmtl.MTLOptimizer(torch.optim.Adam(model.parameters()), method="pcgrad",
                               shared=model.encoder.parameters())
    opt.zero_grad()
    opt.backward([loss_a, loss_b])   # per-task gradients of the shared params -> aggregated .grad
    opt.step()

Shared parameters get the aggregated gradient, written straight into their ``.grad``; every
other parameter (task heads) gets the plain gradient of the losses that use it. Gradient
clipping, LR schedulers and ``torch.amp.GradScaler`` work between ``backward`` and ``step`` as
with a plain optimizer (``scaler.scale`` each loss; PCGrad and GradDrop are invariant to the
common scale, so unscaling afterwards is exact).
"""

from __future__ import annotations

import inspect

import torch

from fastmtl import functional, methods, reference
from fastmtl.engine import TaskGradients, check_losses, shared_parameter_list
from fastmtl.regularizers import LOSS_METHODS

def diagnostics_of(K: torch.Tensor, weights: torch.Tensor | None) -> dict:
    """Task weights (Gram-space methods), cosine matrix and number of conflicting task pairs
    (negative cosine), as device tensors: reading them is the caller's choice of sync point."""
    cosine = reference.cosine_from_gram(K, 1e-8)
    conflicts = (torch.triu(cosine, diagonal=1) < 0).sum()
    return {"weights": weights, "cosine": cosine, "conflicts": conflicts}


class MTLOptimizer(torch.optim.Optimizer):
    """Multi-task wrapper around ``optimizer``; see the module docstring.

    A ``torch.optim.Optimizer`` (so LR schedulers and GradScaler accept it) that delegates
    ``param_groups``, ``state`` and ``step`` to the wrapped optimizer; it does not call
    ``Optimizer.__init__``, which would build a second set of parameter groups.

    ``method``: any name of ``fastmtl.methods.available()``; ``options`` go to it (e.g.
    ``shuffle=False``). ``every=k`` recomputes the task weights of a Gram-space method only every
    k steps; in between, with w fixed, w . G is the gradient of Σ w_t L_t, so those steps run
    one backward pass instead of T (the heads still get their plain gradients).
    ``diagnostics=True`` keeps ``last_diagnostics`` after each backward: task weights, cosine
    matrix, number of conflicting pairs (one extra Gram pass for methods that have no K).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, method: str = "pcgrad", shared=None, *, every: int = 1,
                 diagnostics: bool = False, **options):
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if shared is None:
            raise ValueError("shared: give the parameters shared by the tasks (e.g. model.encoder.parameters())")
        if method in LOSS_METHODS:  # CosReg, GO4Align: a loss to back-propagate once
            self._init_loss_method(optimizer, method, shared, options)
            return
        aggregate = methods.get(method)
        try:
            inspect.signature(aggregate).bind(None, **options)
        except TypeError as error:
            raise TypeError(f"method {method!r} does not take these options: {error}") from None
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an int >= 1, got {every!r}")
        self._weighting = methods.weighting(method)
        if every > 1 and self._weighting is None:
            raise ValueError(f"every={every} needs a Gram-space weighting method, and {method!r} is not one")
        self.optimizer = optimizer
        self.method, self.options, self.every = method, options, every
        self._aggregate = aggregate
        self._weighting_keywords = set(inspect.signature(self._weighting).parameters) if self._weighting else set()
        self._method_state = methods.new_state(method)  # e.g. GradVac's cosine targets
        if self._method_state is not None:
            options.setdefault("state", self._method_state)
        self._gradients = TaskGradients(shared_parameter_list(shared))
        self._step, self._weights = 0, None
        self.diagnostics = diagnostics
        self.last_diagnostics: dict | None = None
        self._representation: torch.Tensor | None = None  # feature mode, set by features()
        self._feature_leaf: torch.Tensor | None = None

    def _init_loss_method(self, optimizer, method, shared, options) -> None:
        try:
            self._loss_method = LOSS_METHODS[method](**options)
        except TypeError as error:
            raise TypeError(f"method {method!r} does not take these options: {error}") from None
        self.optimizer, self.method, self.options, self.every = optimizer, method, options, 1
        self._shared = shared_parameter_list(shared)
        self._gradients = TaskGradients(self._shared)  # for zero_grad of shared params
        self._weighting, self._method_state, self._step, self._weights = None, None, 0, None
        self.diagnostics, self.last_diagnostics = False, None
        self._representation = self._feature_leaf = None

    # The wrapped optimizer's interface, so schedulers, clipping and GradScaler see a plain optimizer.
    @property
    def param_groups(self):
        return self.optimizer.param_groups

    @property
    def state(self):
        return self.optimizer.state

    @property
    def defaults(self):
        return self.optimizer.defaults

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)
        for p in self._gradients.params:  # shared parameters the optimizer may not hold
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    def features(self, representation: torch.Tensor) -> torch.Tensor:
        """Feature-level mode for the next ``backward``: pass the shared representation z (the
        encoder's output) through this and feed the heads with what it returns (a detached leaf).
        ``backward`` then takes per-task gradients only down to z (through the heads alone),
        aggregates them there, and back-propagates the result once through the encoder.
        GradDrop then uses its original form: signs of z, purity summed over the batch."""
        if not isinstance(representation, torch.Tensor) or not representation.requires_grad:
            raise ValueError("features() needs the shared representation, a tensor that requires grad")
        self._representation = representation
        self._feature_leaf = representation.detach().requires_grad_()
        return self._feature_leaf

    def backward(self, losses) -> torch.Tensor:
        """Per-task backward passes, then the aggregated gradient into the shared ``.grad``.
        Returns the aggregated gradient [P] (a view of the buffer the ``.grad`` share); in
        feature mode, the aggregated gradient of the representation, flattened; None for the
        loss-side methods (cosreg, go4align), which run one backward of the loss they build."""
        if self.method in LOSS_METHODS:
            self._loss_method(losses, self._shared).backward()
            return None
        if self._representation is not None:
            return self._backward_features(losses)
        if self._reuses_weights():
            return self._backward_weighted(losses)
        return self._aggregate_into(self._gradients, self._gradients.compute(losses), self.options)

    def _reuses_weights(self) -> bool:
        return self._weighting is not None and self._weights is not None and self._step % self.every != 0

    def _backward_weighted(self, losses) -> torch.Tensor:
        """A step between weight updates of every=k: with w fixed, w . G is the gradient of
        Σ w_t L_t, so one backward pass replaces the T per-task passes (for the shared
        parameters); the heads get their plain gradients from Σ L_t, through the heads only."""
        losses = check_losses(losses)
        if self._weights.shape[0] != len(losses):
            raise ValueError(f"every={self.every}: {len(losses)} losses but the cached weights are for "
                             f"{self._weights.shape[0]} tasks")
        shared = self._gradients.params
        weights = self._weights.detach()
        weighted = sum(w.to(loss.dtype) * loss.reshape(()) for w, loss in zip(weights, losses))
        torch.autograd.backward(weighted, inputs=shared, retain_graph=True)
        shared_ids = {id(p) for p in shared}
        heads = [p for group in self.optimizer.param_groups for p in group["params"]
                 if p.requires_grad and id(p) not in shared_ids]
        if heads:
            plain = sum(loss.reshape(()) for loss in losses)
            for p, grad in zip(heads, torch.autograd.grad(plain, heads, allow_unused=True)):
                if grad is not None:
                    p.grad = grad if p.grad is None else p.grad + grad
        self.last_diagnostics = None  # no per-task gradients on this step
        return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in shared])

    def _backward_features(self, losses) -> torch.Tensor:
        representation, self._representation = self._representation, None
        gradients = TaskGradients([self._feature_leaf])  # per-task gradients w.r.t. z only
        G = gradients.compute(losses)
        options = dict(self.options)
        if self.method == "graddrop":  # the paper's feature-level form
            options.setdefault("signs", representation.detach().reshape(-1).to(G.dtype))
            options.setdefault("batch", representation.shape[0] if representation.dim() > 1 else 1)
        combined = self._aggregate_into(gradients, G, options)
        representation.backward(combined.view_as(representation).to(representation.dtype))
        return combined

    def _aggregate_into(self, gradients: TaskGradients, G: torch.Tensor, options: dict) -> torch.Tensor:
        impl = self.options.get("impl", "auto")
        K = functional.gram(G, impl=impl) if self.diagnostics else None
        if self._weighting is not None:
            if self._weights is None or self._step % self.every == 0 or self._weights.shape[0] != G.shape[0]:
                K = functional.gram(G, impl=impl) if K is None else K
                weighting_options = {key: value for key, value in options.items()
                                     if key != "impl" or "impl" in self._weighting_keywords}
                self._weights = self._weighting(K, **weighting_options)
            combined = gradients.write_combined(lambda out: functional.combine(G, self._weights, out=out, impl=impl))
        else:
            combined = gradients.write_combined(lambda out: out.copy_(self._aggregate(G, **options)))
        if self.diagnostics:
            self.last_diagnostics = diagnostics_of(K, self._weights if self._weighting is not None else None)
        return combined

    def step(self, closure=None):
        result = self.optimizer.step(closure)
        self._step += 1
        return result

    def state_dict(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "fastmtl": {"method": self.method, "every": self.every, "step": self._step, "weights": self._weights,
                        "method_state": self._loss_method.state_dict() if self.method in LOSS_METHODS
                        else None if self._method_state is None else self._method_state.state_dict()},
        }

    def load_state_dict(self, state_dict: dict) -> None:
        ours = state_dict["fastmtl"]
        if ours["method"] != self.method:
            raise ValueError(f"state_dict is for method {ours['method']!r}, this optimizer uses {self.method!r}")
        self.optimizer.load_state_dict(state_dict["optimizer"])
        self._step = ours["step"]
        if self.method in LOSS_METHODS:
            self._loss_method.load_state_dict(ours["method_state"])
        elif self._method_state is not None and ours.get("method_state") is not None:
            self._method_state.load_state_dict(ours["method_state"])
        weights = ours["weights"]
        self._weights = None if weights is None else weights.to(self._gradients.params[0].device).clone()

    def __repr__(self) -> str:
        return f"MTLOptimizer(method={self.method!r}, every={self.every}, optimizer={self.optimizer!r})"


def backward(losses, shared, method: str = "pcgrad", **options) -> torch.Tensor:
    """Functional twin of ``MTLOptimizer.backward`` for custom loops: per-task gradients of
    ``shared``, aggregated with ``method`` into their ``.grad``; returns the aggregated [P].
    (Allocates its [T, P] buffer per call; MTLOptimizer keeps one.)"""
    gradients = TaskGradients(shared_parameter_list(shared))
    G = gradients.compute(losses)
    aggregate = methods.get(method)
    return gradients.write_combined(lambda out: out.copy_(aggregate(G, **options)))
