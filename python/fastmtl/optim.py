"""MTLOptimizer: wrap any torch.optim optimizer, hand it the list of task losses.

    opt = fastmtl.MTLOptimizer(torch.optim.Adam(model.parameters()), method="pcgrad",
                               shared=model.encoder.parameters())
    opt.zero_grad()
    opt.backward([loss_a, loss_b])   # per-task gradients of the shared params -> aggregated .grad
    opt.step()

Shared parameters get the aggregated gradient in their ``.grad``; every other parameter (task
heads) gets the plain gradient of the losses that use it. Like ``loss.backward()``, ``backward``
adds to gradients already there (call ``zero_grad`` between steps); if it fails, every ``.grad``
is left as it was before the call. Gradient clipping and LR schedulers work between ``backward``
and ``step`` as with a plain optimizer. With ``torch.amp.GradScaler``, pass it:
``opt.backward(losses, scaler=scaler)`` (unscaled losses), then ``scaler.step(opt)``.

``shared`` is either the shared parameters (one group shared by every task) or a list of
groups ``{"params": ..., "tasks": [0, 2], "method": ..., **method options}``: each group's
per-task gradient matrix holds only the rows of its tasks and is combined by its own method.
"""

from __future__ import annotations

import torch

from fastmtl import functional, methods
from fastmtl._numerics import cosine_from_gram
from fastmtl.engine import (
    FeatureGradients,
    ParameterGradients,
    SharedGroup,
    TaskMatrix,
    all_or_nothing,
    check_losses,
    flat_grads,
    shared_parameter_list,
    task_list,
)


def diagnostics_of(K: torch.Tensor, weights: torch.Tensor | None) -> dict:
    """Task weights (Gram-space methods), cosine matrix and number of conflicting task pairs
    (negative cosine), as device tensors: reading them is the caller's choice of sync point."""
    cosine = cosine_from_gram(K, 1e-8)
    conflicts = (torch.triu(cosine, diagonal=1) < 0).sum()
    return {"weights": weights, "cosine": cosine, "conflicts": conflicts}


def _delegated(name: str) -> property:
    return property(lambda self: getattr(self.optimizer, name), doc=f"The wrapped optimizer's {name}.")


class MTLOptimizer(torch.optim.Optimizer):
    """Multi-task wrapper around ``optimizer``; see the module docstring.

    ``method``: a name of ``fastmtl.methods.available()`` or a method object; ``options`` go to
    the method. A loss-side method ("cosreg", "go4align") builds one loss to back-propagate.
    ``every=k`` recomputes the task weights of a Gram-space method only every k steps; in
    between, with w fixed, w · G is the gradient of Σ w_t L_t, so those steps run one backward
    pass per group instead of T (the heads still get their plain gradients).
    ``diagnostics=True`` keeps ``last_diagnostics`` after each full backward: task weights,
    cosine matrix, number of conflicting pairs (a list, one per group, with several groups).

    It is a ``torch.optim.Optimizer`` (so LR schedulers and GradScaler accept it) that delegates
    ``param_groups``, ``state``, ``defaults``, ``step`` and its hooks to the wrapped optimizer; it
    does not call ``Optimizer.__init__``, which would build a second set of parameter groups.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, method="pcgrad", shared=None, *, every: int = 1,
                 diagnostics: bool = False, **options):
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if shared is None:
            raise ValueError("shared: give the parameters shared by the tasks (e.g. model.encoder.parameters()), "
                             "or a list of {'params': ..., 'tasks': [...]} groups")
        if isinstance(every, bool) or not hasattr(every, "__index__") or int(every) < 1:
            raise ValueError(f"every must be an int >= 1, got {every!r}")
        if not isinstance(diagnostics, bool):
            raise TypeError(f"diagnostics must be True or False, got {diagnostics!r}")
        self.optimizer, self.every, self.diagnostics = optimizer, int(every), diagnostics
        self.method = methods.create(method, **options)  # the default method of every group
        self.groups: list[SharedGroup] = []
        for spec in _group_specs(shared):
            self._add_group(spec, new_params_allowed=False)
        self._step = 0
        self.last_diagnostics: dict | list | None = None
        self._features: tuple[torch.Tensor, torch.Tensor] | None = None  # (z, its detached leaf), set by features()

    # ----- groups of shared parameters -------------------------------------------------------
    def add_shared_group(self, params, tasks=None, method=None, *, param_group: dict | None = None,
                         **options) -> SharedGroup:
        """Adds a group of shared parameters during training (e.g. a new branch). Parameters the
        wrapped optimizer does not hold yet join it as a new param group (``param_group``: its
        options, e.g. ``{"lr": 1e-3}``); parameters it holds keep their optimizer state, and
        leave the shared group they were in. ``method`` (default: a fresh copy of the
        optimizer's method) combines the gradients of ``tasks`` (None: every task)."""
        spec = {"params": params, "tasks": tasks, **options}
        if method is not None:
            spec["method"] = method
        return self._add_group(spec, new_params_allowed=True, param_group=param_group)

    def _add_group(self, spec: dict, *, new_params_allowed: bool, param_group: dict | None = None) -> SharedGroup:
        spec = dict(spec)
        what = f"shared group {len(self.groups)}"
        params = shared_parameter_list(spec.pop("params"), what)
        tasks = task_list(spec.pop("tasks", None), what)
        method = spec.pop("method", None)
        if method is None and not spec:  # the optimizer's method: itself for the first group, a fresh copy after
            in_use = any(group.method is self.method for group in self.groups)
            group_method = self.method.fresh() if in_use else self.method
        else:
            group_method = methods.create(self.method.name if method is None else method, **spec)
        if self.groups and params[0].device != self.groups[0].params[0].device:
            raise ValueError(f"{what} is on {params[0].device}, the other shared parameters on "
                             f"{self.groups[0].params[0].device}")
        self._check_method(group_method, tasks, what)
        held = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
        new = [p for p in params if id(p) not in held]
        if new and not new_params_allowed:
            raise ValueError("every shared parameter must be in the wrapped optimizer (else it is never updated)")
        moving = {id(p) for p in params}
        for group in self.groups:  # a parameter belongs to one group: it leaves its old one
            group.params = [p for p in group.params if id(p) not in moving]
        self.groups = [group for group in self.groups if group.params]
        if new:
            self.optimizer.add_param_group({**(param_group or {}), "params": new})
        group = SharedGroup(params, tasks, group_method)
        self.groups.append(group)
        return group

    def _check_method(self, method: methods.Method, tasks, what: str) -> None:
        if method.family == "loss" or self.method.family == "loss":
            if method.family != "loss" or tasks is not None or self.groups:
                raise ValueError(f"{what}: a loss-side method ({self.method.name}) builds one loss for all tasks "
                                 "and takes one group of shared parameters")
            if self.every != 1 or self.diagnostics:
                raise ValueError(f"method {method.name!r} works on the losses: every and diagnostics do not apply")
        if self.every > 1 and method.family != "gram":
            raise ValueError(f"every={self.every} needs a Gram-space weighting method, and {method.name!r} is not one")

    def _shared_params(self) -> list[torch.nn.Parameter]:
        return [p for group in self.groups for p in group.trainable()]

    def _heads(self) -> list[torch.nn.Parameter]:
        """The wrapped optimizer's trainable parameters that no shared group holds."""
        shared = {id(p) for group in self.groups for p in group.params}
        return [p for group in self.optimizer.param_groups for p in group["params"]
                if p.requires_grad and id(p) not in shared]

    # ----- the wrapped optimizer's interface, so schedulers, clipping and GradScaler see a plain one
    param_groups = _delegated("param_groups")
    state = _delegated("state")
    defaults = _delegated("defaults")
    _optimizer_step_pre_hooks = _delegated("_optimizer_step_pre_hooks")
    _optimizer_step_post_hooks = _delegated("_optimizer_step_post_hooks")
    _optimizer_state_dict_pre_hooks = _delegated("_optimizer_state_dict_pre_hooks")
    _optimizer_state_dict_post_hooks = _delegated("_optimizer_state_dict_post_hooks")
    _optimizer_load_state_dict_pre_hooks = _delegated("_optimizer_load_state_dict_pre_hooks")
    _optimizer_load_state_dict_post_hooks = _delegated("_optimizer_load_state_dict_post_hooks")

    def __getstate__(self):  # plain attributes; Optimizer's version expects its own fields
        return self.__dict__

    def __setstate__(self, state):
        self.__dict__.update(state)

    def add_param_group(self, param_group: dict) -> None:
        self.optimizer.add_param_group(param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure=None):
        result = self.optimizer.step(closure)
        self._step += 1
        return result

    # ----- backward: collect -> (reduce) -> weight -> combine -> write ------------------------
    def features(self, representation: torch.Tensor) -> torch.Tensor:
        """Feature-level mode for the next ``backward``: pass the shared representation z (the
        encoder's output) through this and feed the heads with what it returns (a detached leaf).
        ``backward`` then takes per-task gradients only down to z (through the heads alone),
        aggregates them there, and back-propagates the result once through the encoder.
        GradDrop then uses its original form: signs of z, purity summed over the batch."""
        if not isinstance(representation, torch.Tensor) or not representation.requires_grad:
            raise ValueError("features() needs the shared representation, a tensor that requires grad")
        if len(self.groups) != 1 or self.groups[0].tasks is not None or self.method.family == "loss":
            raise ValueError("features() works with one shared group used by every task and a gradient method")
        leaf = representation.detach().requires_grad_()
        self._features = (representation, leaf)
        return leaf

    def backward(self, losses, scaler: torch.amp.GradScaler | None = None):
        """Per-task backward passes, then the aggregated gradient added to the shared ``.grad``.
        Returns the aggregated gradient of this call [P] (in feature mode: of the representation,
        flattened; with several groups: a list, one per group; valid until the next call), or,
        for a loss-side method, the loss it built. ``scaler``: a GradScaler to scale the
        (unscaled) losses with; see the module docstring."""
        losses = check_losses(losses)
        features, self._features = self._features, None
        if self.method.family == "loss":
            return self._backward_loss(losses, scaler)
        scale = None
        if scaler is not None:
            losses = [scaler.scale(loss) for loss in losses]
            scale = scaler._get_scale_async()  # a device tensor: no sync
        mode = "parameters" if features is None else "features"
        heads = self._heads()
        with all_or_nothing(self._shared_params(), heads):
            if features is None and self._reuse_weights(len(losses)):
                return self._backward_weighted(losses, heads)
            source = (ParameterGradients(self.groups, heads) if features is None
                      else FeatureGradients(self.groups[0], *features))
            matrices = source.collect(losses)                                   # collect
            combined = []
            for matrix in matrices:
                direction = self._combine(matrix, scale, mode)                   # weight, combine
                source.write(matrix, direction)                                  # write
                combined.append(direction)
        self.last_diagnostics = self._diagnostics()
        return combined[0] if len(combined) == 1 else combined

    def _combine(self, matrix: TaskMatrix, scale: torch.Tensor | None, mode: str) -> torch.Tensor:
        """The combined gradient of one group's G, into its buffer (parameter level)."""
        group, G, method = matrix.group, matrix.G, matrix.group.method
        out = group.combined if matrix.params else None
        K = method.gram(G) if method.family == "gram" else None
        if K is None and self.diagnostics:
            K = functional.gram_for_weights(G)
        if method.family == "gram":
            if scale is not None and not method.scale_linear:
                K = K / scale.to(K.dtype) ** 2  # the weights of the unscaled gradients (Nash-MTL)
            group.weights, group.weights_mode = method.weights(K), mode
            direction = functional.combine(G, group.weights, out=out, impl=method.impl)
        else:
            direction = method(G, signs=matrix.signs, batch=matrix.batch)
            direction = direction if out is None else out.copy_(direction)
        group.diagnostics = diagnostics_of(K, group.weights if method.family == "gram" else None) \
            if self.diagnostics else None
        return direction

    def _diagnostics(self):
        reports = [group.diagnostics for group in self.groups if group.diagnostics is not None]
        return None if not reports else reports[0] if len(self.groups) == 1 else reports

    def _reuse_weights(self, tasks: int) -> bool:
        """Whether this is an every=k step between weight updates, with weights for every group."""
        return self.every > 1 and self._step % self.every != 0 and all(
            group.weights is not None and group.weights_mode == "parameters"
            and group.weights.shape[0] == len(group.task_indices(tasks)) for group in self.groups)

    def _backward_weighted(self, losses, heads: list[torch.nn.Parameter]) -> torch.Tensor:
        """A step between weight updates of every=k: with w fixed, w · G is the gradient of
        Σ w_t L_t, so one backward pass per group replaces the T per-task passes; the heads get
        their plain gradients from Σ L_t."""
        combined = []
        for group in self.groups:
            params = group.trainable()
            if not params:
                continue
            rows = group.task_indices(len(losses))
            weighted = sum(w.to(losses[t].dtype) * losses[t].reshape(()) for w, t in zip(group.weights, rows))
            grads = torch.autograd.grad(weighted, params, retain_graph=True, allow_unused=True)
            combined.append(flat_grads(params, grads))
            for p, grad in zip(params, grads):
                p.grad = grad
        if heads:
            grads = torch.autograd.grad(sum(loss.reshape(()) for loss in losses), heads, allow_unused=True)
            for p, grad in zip(heads, grads):
                p.grad = grad
        self.last_diagnostics = None  # no per-task gradients on this step
        return combined[0] if len(combined) == 1 else combined

    def _backward_loss(self, losses, scaler) -> torch.Tensor:
        with all_or_nothing(self._shared_params(), self._heads()):
            total = self.method.loss(losses, self._shared_params())
            (scaler.scale(total) if scaler is not None else total).backward()
        return total.detach()

    # ----- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "fastmtl": {"method": self.method.name, "every": self.every, "step": self._step,
                        "groups": [{"tasks": group.tasks, "method": group.method.name,
                                    "method_state": group.method.state_dict(), "weights": group.weights,
                                    "weights_mode": group.weights_mode} for group in self.groups]},
        }

    def load_state_dict(self, state_dict: dict) -> None:
        """Loads a state_dict of this MTLOptimizer, or of the plain optimizer it wraps (e.g. a
        checkpoint from before fastmtl: the method state then starts afresh)."""
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        if "fastmtl" not in state_dict:
            if {"state", "param_groups"} <= set(state_dict):
                self.optimizer.load_state_dict(state_dict)
                return
            raise ValueError("state_dict is neither an MTLOptimizer's nor a torch optimizer's (keys: "
                             f"{sorted(state_dict)})")
        ours = state_dict["fastmtl"]
        if ours["method"] != self.method.name:
            raise ValueError(f"state_dict is for method {ours['method']!r}, this optimizer uses {self.method.name!r}")
        saved = ours["groups"]
        if [(g["tasks"], g["method"]) for g in saved] != [(g.tasks, g.method.name) for g in self.groups]:
            raise ValueError(f"state_dict holds shared groups {[(g['tasks'], g['method']) for g in saved]}, this "
                             f"optimizer {[(g.tasks, g.method.name) for g in self.groups]}: add the same groups first")
        self.optimizer.load_state_dict(state_dict["optimizer"])
        self._step = ours["step"]
        for group, state in zip(self.groups, saved):
            group.method.load_state_dict(state["method_state"])
            weights = state["weights"]
            group.weights = None if weights is None else weights.to(group.params[0].device).clone()
            group.weights_mode = state["weights_mode"]

    def __repr__(self) -> str:
        return (f"MTLOptimizer(method={self.method!r}, every={self.every}, groups={len(self.groups)}, "
                f"optimizer={self.optimizer!r})")


def _group_specs(shared) -> list[dict]:
    """``shared`` as a list of group dicts: parameters (or a module) are the one-group case."""
    if isinstance(shared, (list, tuple)) and shared and all(isinstance(item, dict) for item in shared):
        for index, spec in enumerate(shared):
            if "params" not in spec:
                raise ValueError(f"shared group {index} has no 'params'")
        return list(shared)
    return [{"params": shared}]


def backward(losses, shared, method="pcgrad", **options) -> torch.Tensor:
    """Functional twin of ``MTLOptimizer.backward`` for custom loops: per-task gradients of
    ``shared``, aggregated with ``method`` and added to their ``.grad``; returns the aggregated
    [P]. On failure the shared ``.grad`` are left as they were. (Allocates its [T, P] buffer per
    call; MTLOptimizer keeps one.)"""
    losses = check_losses(losses)
    method = methods.create(method, **options)
    if method.family == "loss":
        raise ValueError(f"method {method.name!r} works on the losses: use MTLOptimizer, or back-propagate "
                         "the loss it builds")
    group = SharedGroup(shared_parameter_list(shared), None, method)
    source = ParameterGradients([group], [])
    with all_or_nothing(group.trainable(), []):
        (matrix,) = source.collect(losses)
        G = matrix.G
        if method.family == "gram":
            direction = functional.combine(G, method.weights(method.gram(G)), out=group.combined, impl=method.impl)
        else:
            direction = group.combined.copy_(method(G))
        source.write(matrix, direction)
    return direction
