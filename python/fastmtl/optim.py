"""MTLOptimizer: wrap any torch.optim optimizer, hand it the list of task losses.

    opt = fastmtl.MTLOptimizer(torch.optim.Adam(model.parameters()), method="pcgrad",
                               shared=model.encoder.parameters())
    opt.zero_grad()
    opt.backward([loss_a, loss_b])   # per-task gradients of the shared params -> aggregated .grad
    opt.step()

Shared parameters get the aggregated gradient in their ``.grad``; every other parameter (task
heads) gets the plain gradient of the losses that use it. Like ``loss.backward()``, ``backward``
adds to gradients already there (call ``zero_grad`` between steps). Gradient clipping and LR
schedulers work between ``backward`` and ``step`` as with a plain optimizer. With
``torch.amp.GradScaler``, pass it: ``opt.backward(losses, scaler=scaler)`` (unscaled losses),
then ``scaler.step(opt)``; every method then sees gradients it can unscale exactly.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict

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

    ``method``: any name of ``fastmtl.methods.available()``, or a loss-side method ("cosreg",
    "go4align") that builds one loss to back-propagate; ``options`` go to the method.
    ``every=k`` recomputes the task weights of a Gram-space method only every k steps; in
    between, with w fixed, w . G is the gradient of Σ w_t L_t, so those steps run one backward
    pass instead of T (the heads still get their plain gradients).
    ``diagnostics=True`` keeps ``last_diagnostics`` after each full backward: task weights,
    cosine matrix, number of conflicting pairs.

    It is a ``torch.optim.Optimizer`` (so LR schedulers and GradScaler accept it) that delegates
    ``param_groups``, ``state`` and ``step`` to the wrapped optimizer; it does not call
    ``Optimizer.__init__``, which would build a second set of parameter groups.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, method: str = "pcgrad", shared=None, *, every: int = 1,
                 diagnostics: bool = False, **options):
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if shared is None:
            raise ValueError("shared: give the parameters shared by the tasks (e.g. model.encoder.parameters())")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an int >= 1, got {every!r}")
        params = shared_parameter_list(shared)
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        if any(id(p) not in held for p in params):
            raise ValueError("every shared parameter must be in the wrapped optimizer (else it is never updated)")
        self.optimizer, self.method, self.every, self.diagnostics = optimizer, method, every, diagnostics
        self.options = options
        self._gradients = TaskGradients(params)
        self._step, self._weights, self._weights_mode = 0, None, None
        self.last_diagnostics: dict | None = None
        self._representation = self._feature_leaf = None  # feature mode, set by features()
        # Optimizer's hook registries (Optimizer.__init__ is not called): hooks and copies work.
        for name in ("_optimizer_step_pre_hooks", "_optimizer_step_post_hooks", "_optimizer_state_dict_pre_hooks",
                     "_optimizer_state_dict_post_hooks", "_optimizer_load_state_dict_pre_hooks",
                     "_optimizer_load_state_dict_post_hooks"):
            setattr(self, name, OrderedDict())
        self._loss_method = None
        self._weighting = None
        self._method_state = None
        if method in LOSS_METHODS:  # CosReg, GO4Align: one loss, one backward
            if every != 1 or diagnostics:
                raise ValueError(f"method {method!r} works on the losses: every and diagnostics do not apply")
            try:
                self._loss_method = LOSS_METHODS[method](**options)
            except TypeError as error:
                raise TypeError(f"method {method!r} does not take these options: {error}") from None
            return
        aggregate = methods.get(method)
        try:
            inspect.signature(aggregate).bind(None, **options)
        except TypeError as error:
            raise TypeError(f"method {method!r} does not take these options: {error}") from None
        self._aggregate = aggregate
        self._weighting = methods.weighting(method)
        if every > 1 and self._weighting is None:
            raise ValueError(f"every={every} needs a Gram-space weighting method, and {method!r} is not one")
        if self._weighting is not None and self._weighting.state is not None:
            # The state the method updates, the user's if given: the one state_dict saves.
            self._method_state = options.setdefault("state", self._weighting.state())

    def __getstate__(self):  # plain attributes; Optimizer's version expects its own fields
        return self.__dict__

    def __setstate__(self, state):
        self.__dict__.update(state)

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

    def add_param_group(self, param_group: dict) -> None:
        self.optimizer.add_param_group(param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

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

    def backward(self, losses, scaler: torch.amp.GradScaler | None = None):
        """Per-task backward passes, then the aggregated gradient added to the shared ``.grad``.
        Returns the aggregated gradient of this call [P] (in feature mode: of the representation,
        flattened; valid until the next call), or, for a loss-side method, the loss it built.
        ``scaler``: a GradScaler to scale the (unscaled) losses with; see the module docstring."""
        losses = check_losses(losses)
        if self._loss_method is not None:
            total = self._loss_method(losses, self._gradients.params)
            (scaler.scale(total) if scaler is not None else total).backward()
            return total.detach()
        scale = None
        if scaler is not None:
            losses = [scaler.scale(loss) for loss in losses]
            scale = scaler._get_scale_async()  # a device tensor: no sync
        if self._representation is not None:
            return self._backward_features(losses, scale)
        if not self._weights_stale(len(losses), "parameters"):
            return self._backward_weighted(losses)
        return self._aggregate_into(self._gradients, losses, self.options, scale, "parameters")

    def _weights_stale(self, tasks: int, mode: str) -> bool:
        """Whether this step computes per-task gradients (always, except every=k reuse steps)."""
        return (self._weighting is None or self._weights is None or self._step % self.every == 0
                or self._weights.shape[0] != tasks or self._weights_mode != mode)

    def _backward_weighted(self, losses) -> torch.Tensor:
        """A step between weight updates of every=k: with w fixed, w . G is the gradient of
        Σ w_t L_t, so one backward pass replaces the T per-task passes (for the shared
        parameters); the heads get their plain gradients from Σ L_t, through the heads only."""
        shared = self._gradients.params
        shared_ids = {id(p) for p in shared}
        heads = [p for group in self.optimizer.param_groups for p in group["params"]
                 if p.requires_grad and id(p) not in shared_ids]
        weighted = sum(w.to(loss.dtype) * loss.reshape(()) for w, loss in zip(self._weights.detach(), losses))
        grads = torch.autograd.grad(weighted, shared, retain_graph=bool(heads), allow_unused=True)
        combined = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, shared)])
        _add_to_grads(shared, grads)
        if heads:
            _add_to_grads(heads, torch.autograd.grad(sum(loss.reshape(()) for loss in losses), heads, allow_unused=True))
        self.last_diagnostics = None  # no per-task gradients on this step
        return combined

    def _backward_features(self, losses, scale) -> torch.Tensor:
        representation, leaf = self._representation, self._feature_leaf
        self._representation = self._feature_leaf = None
        options = dict(self.options)
        if self.method == "graddrop":  # the paper's feature-level form
            options.setdefault("signs", representation.detach().reshape(-1).to(leaf.dtype))
            options.setdefault("batch", representation.shape[0] if representation.dim() > 1 else 1)
        combined = self._aggregate_into(TaskGradients([leaf]), losses, options, scale, "features")
        representation.backward(combined.view_as(representation).to(representation.dtype))
        return combined

    def _aggregate_into(self, gradients: TaskGradients, losses, options: dict, scale, mode: str) -> torch.Tensor:
        G = gradients.compute(losses)
        impl = self.options.get("impl", "auto")
        K = functional.gram(G, impl=impl) if self.diagnostics else None
        if self._weighting is not None:
            if self._weights_stale(G.shape[0], mode):
                K = self._weighting.gram(G, impl) if K is None else K
                if scale is not None and not self._weighting.scale_linear:
                    K = K / scale.to(K.dtype) ** 2  # the weights of the unscaled gradients (Nash-MTL)
                self._weights = self._weighting(K, **options)
                self._weights_mode = mode
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
        method_state = self._loss_method if self._loss_method is not None else self._method_state
        return {
            "optimizer": self.optimizer.state_dict(),
            "fastmtl": {"method": self.method, "every": self.every, "step": self._step, "weights": self._weights,
                        "weights_mode": self._weights_mode,
                        "method_state": None if method_state is None else method_state.state_dict()},
        }

    def load_state_dict(self, state_dict: dict) -> None:
        ours = state_dict["fastmtl"]
        if ours["method"] != self.method:
            raise ValueError(f"state_dict is for method {ours['method']!r}, this optimizer uses {self.method!r}")
        self.optimizer.load_state_dict(state_dict["optimizer"])
        self._step = ours["step"]
        weights = ours["weights"]
        self._weights = None if weights is None else weights.to(self._gradients.params[0].device).clone()
        self._weights_mode = ours.get("weights_mode")
        method_state = self._loss_method if self._loss_method is not None else self._method_state
        if method_state is not None and ours.get("method_state") is not None:
            method_state.load_state_dict(ours["method_state"])

    def __repr__(self) -> str:
        return f"MTLOptimizer(method={self.method!r}, every={self.every}, optimizer={self.optimizer!r})"


def _add_to_grads(params, grads) -> None:
    for p, grad in zip(params, grads):
        if grad is not None:
            p.grad = grad if p.grad is None else p.grad + grad


def backward(losses, shared, method: str = "pcgrad", **options) -> torch.Tensor:
    """Functional twin of ``MTLOptimizer.backward`` for custom loops: per-task gradients of
    ``shared``, aggregated with ``method`` and added to their ``.grad``; returns the aggregated
    [P]. (Allocates its [T, P] buffer per call; MTLOptimizer keeps one.)"""
    gradients = TaskGradients(shared_parameter_list(shared))
    G = gradients.compute(losses)
    aggregate = methods.get(method)
    return gradients.write_combined(lambda out: out.copy_(aggregate(G, **options)))
