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
``shared="auto"``: one group used by every task, found at the first ``backward`` from the losses'
autograd graphs: the wrapped optimizer's trainable parameters that two or more task losses reach
(``opt.shared_parameters()`` lists them; ``engine/autoshare.py`` walks the graphs).

On several processes (``process_group=torch.distributed.group.WORLD``, an unwrapped model, each
process with its shard of the batch): every gradient the optimizer writes is the average over
the processes, so training equals one process on the whole batch (``engine/distributed.py``).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from fastmtl import functional, methods
from fastmtl._numerics import cosine_from_gram
from fastmtl.engine.distributed import REDUCTIONS
from fastmtl.methods import _options
from fastmtl.engine import (
    FeatureGradients,
    FsdpGradients,
    ProcessAverage,
    ParameterGradients,
    SharedGroup,
    TaskMatrix,
    all_or_nothing,
    check_losses,
    flat_grads,
    point_grads_at,
    shared_parameter_list,
    sharded_by_fsdp,
    task_list,
)
from fastmtl.engine.autoshare import reaching_losses


def diagnostics_of(K: torch.Tensor, weights: torch.Tensor | None) -> dict:
    """Task weights (Gram-space methods), cosine matrix and number of conflicting task pairs
    (negative cosine), as device tensors: reading them is the caller's choice of sync point."""
    cosine = cosine_from_gram(K, 1e-8)
    conflicts = (torch.triu(cosine, diagonal=1) < 0).sum()
    return {"weights": weights, "cosine": cosine, "conflicts": conflicts}


_ALONE = object()  # MTLOptimizer's default process_group: this process alone


def _delegated(name: str) -> property:
    return property(lambda self: getattr(self.optimizer, name), doc=f"The wrapped optimizer's {name}.")


class MTLOptimizer(torch.optim.Optimizer):
    """Multi-task wrapper around ``optimizer``; see the module docstring.

    ``method``: a name of ``fastmtl.methods.available()`` or a method object; ``options`` go to
    the method. A loss-side method (e.g. "cosreg", "go4align", "uw") builds one loss to back-propagate.
    A method's learnable tensors (UW's log-variances, IMTL's loss scales) join the wrapped
    optimizer as a param group of their own, moved to the shared parameters' device.
    ``every=k`` recomputes the task weights of a Gram-space method only every k steps; in
    between, with w fixed, w · G is the gradient of Σ w_t L_t, so those steps run one backward
    pass per group instead of T (the heads still get their plain gradients).
    ``diagnostics=True`` keeps ``last_diagnostics`` after each full backward: task weights,
    cosine matrix, number of conflicting pairs (a list, one per group, with several groups).
    ``shared="auto"``: the shared group is derived from the graphs of the first ``backward``'s
    losses, then cached for as long as the model's forward reaches the same parameters: it is
    derived again when the number of losses changes, when a parameter of the wrapped optimizer
    is frozen or unfrozen (requires_grad), and when feature mode is switched on or off. A model
    whose tasks reach other parameters from step to step with none of those changing (a forward
    that picks a path at random, say) must pass ``shared`` explicitly. In feature mode the group is
    what the representation reaches (its gradient is the one aggregated); parameters after the
    representation stay with the heads (plain gradients). A state_dict stores the group (its
    parameters' positions in the wrapped optimizer), so a restored optimizer reports it and loads
    its method's state before any backward; its first backward derives the group again from the
    graphs. ``add_shared_group`` and ``branch`` need the group first (a backward); after them the
    groups are explicit (no longer derived). With a process group, every rank must find the same
    parameters (checked). Not with FSDP2-sharded parameters (the forward runs on unsharded copies:
    give ``shared`` explicitly) nor with reentrant activation checkpointing (raises; use
    ``use_reentrant=False``, which the per-task passes need anyway). It decides per parameter
    tensor: a fused head sliced per task, or a penalty on every parameter added to each task's
    loss, makes those tensors shared (check ``shared_parameters()``).
    ``process_group``: average over these processes (see the module docstring; a
    DistributedDataParallel model stands for its process group, and its forward must then run
    under ``model.no_sync()``: DDP's own reducer supports one backward per forward), with ``reduce``
    "full" (all-reduce each task's rows) or "sharded" (reduce-scatter them, all-reduce the T × T
    Gram matrix, combine this rank's columns, all-gather the update: fewer bytes for T > 1, and
    each rank's passes over G read P / N columns; ``engine/distributed.py``). At construction
    the optimizer's parameters take rank 0's values, and a method that draws random numbers
    without a generator of its own (PCGrad's order, GradDrop's masks) gets the optimizer's
    ``generator``, seeded from rank 0 and saved in ``state_dict``; a generator of the method's
    own must be in the same state on every rank (checked). Gradients already in ``.grad`` before
    a ``backward`` must be equal on every rank (``zero_grad``, or earlier ``backward`` calls).

    It is a ``torch.optim.Optimizer`` (so LR schedulers and GradScaler accept it) that delegates
    ``param_groups``, ``state``, ``defaults``, ``step`` and its hooks to the wrapped optimizer; it
    does not call ``Optimizer.__init__``, which would build a second set of parameter groups.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, method="pcgrad", shared=None, *, every: int = 1,
                 diagnostics: bool = False, process_group=_ALONE, reduce: str = "full", **options):
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if shared is None:
            raise ValueError("shared: give the parameters shared by the tasks (e.g. model.encoder.parameters()), "
                             "a list of {'params': ..., 'tasks': [...]} groups, or 'auto'")
        if isinstance(shared, str) and shared != "auto":
            raise ValueError(f"shared: the one name accepted is 'auto' (derive the shared parameters from the "
                             f"losses' graphs), got {shared!r}")
        if isinstance(every, bool) or not hasattr(every, "__index__") or int(every) < 1:
            raise ValueError(f"every must be an int >= 1, got {every!r}")
        diagnostics = _options.flag("MTLOptimizer", "diagnostics", diagnostics)
        self.optimizer, self.every, self.diagnostics = optimizer, int(every), diagnostics
        self.method = methods.create(method, **options)  # the default method of every group
        # Not None as the default: torch.distributed.group.WORLD is None until the default process
        # group is initialised, and passing it then must raise, not train alone silently.
        if reduce not in REDUCTIONS:
            raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
        if process_group is _ALONE and reduce != "full":
            raise ValueError(f"reduce={reduce!r} applies across processes: give process_group too")
        self._ddp = None  # a DistributedDataParallel model given as process_group: its forward is checked
        if isinstance(process_group, torch.nn.parallel.DistributedDataParallel):
            if process_group.static_graph:
                raise ValueError("a DistributedDataParallel model with static_graph=True cannot serve several "
                                 "backward passes per forward (pytorch/pytorch#143580): wrap it without static_graph")
            self._ddp, process_group = process_group, process_group.process_group
        self.processes = None if process_group is _ALONE else ProcessAverage(process_group, reduce)
        self.generator: torch.Generator | None = None  # the methods' random numbers, with a process group
        self.groups: list[SharedGroup] = []
        self._learnt_ids: set[int] = set()  # ids of the methods' learnt tensors in the wrapped optimizer
        self.auto = shared == "auto"  # the group is derived from the losses' graphs (see _derive_shared)
        self._derived_for: tuple | None = None  # what the derived group was found for (losses, mode, trainable)
        if self.auto:
            self._start_auto()
        else:
            for spec in _group_specs(shared):
                self._add_group(spec)
        if self.processes is not None:  # FSDP2's shards are the user's to initialise alike (as FSDP2 requires)
            self.processes.broadcast_([p.detach() for group in optimizer.param_groups for p in group["params"]
                                       if not sharded_by_fsdp([p])])
        self._step = 0
        self.last_diagnostics: dict | list | None = None
        self._features: tuple[torch.Tensor, torch.Tensor] | None = None  # (z, its detached leaf), set by features()

    # ----- groups of shared parameters -------------------------------------------------------
    def shared_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters of the shared groups, in the wrapped optimizer's parameter order (with
        ``shared="auto"``: those found at the last derivation; frozen ones given explicitly are
        listed too)."""
        if self.auto and not self.groups:
            raise RuntimeError("shared='auto': the shared parameters are determined at the first backward, from the "
                               "losses' graphs; call shared_parameters() after opt.backward(losses)")
        grouped = {id(p) for group in self.groups for p in group.params}
        return [p for group in self.optimizer.param_groups for p in group["params"] if id(p) in grouped]

    def _start_auto(self) -> None:
        """shared='auto' at construction: the checks that do not need the group, and the method's
        learnable tensors joining the optimizer now (on its first parameter's device), so that the
        param groups, and a state_dict saved before the first backward, are those of later steps."""
        held = [p for group in self.optimizer.param_groups for p in group["params"]]
        if sharded_by_fsdp(held):
            raise ValueError("shared='auto' cannot see FSDP2-sharded parameters in the graph (the forward runs on "
                             "unsharded copies): give shared explicitly")
        self._check_method(self.method, None, "shared='auto'")
        self._same_random_numbers(self.method, held[0].device)
        self._adopt_parameters(self.method, held[0].device)

    def _derive_shared(self, losses: list[torch.Tensor], features) -> None:
        """shared='auto': (re)derives the group unless it was derived for the same number of losses,
        mode and trainable parameters. The group object (and its method's state) is kept; only its
        parameters change. With a process group every rank runs the same collective check before
        any error, so none is left waiting."""
        if not self.auto:
            return
        held = [p for group in self.optimizer.param_groups for p in group["params"]]
        key = (len(losses), features is None, tuple((id(p), p.requires_grad) for p in held))
        if key == self._derived_for:
            return
        T = len(losses)
        if T < 2:
            raise ValueError(f"shared='auto' finds the parameters that two or more task losses reach; backward got "
                             f"{T} loss: give shared explicitly to train one task")
        learnable = {id(p) for p in self.method.parameters()}  # UW's log-variances etc. are the method's own
        candidates = [(i, p) for i, p in enumerate(held) if p.requires_grad and id(p) not in learnable]
        roots, through = list(losses), None
        if features is not None:  # the tasks reach the encoder through the detached leaf
            representation, leaf = features
            roots.append(representation)
            through = {id(leaf): representation}
        masks = reaching_losses(roots, [p for _, p in candidates], through)
        every_task = (1 << T) - 1
        found = [i for (i, _), mask in zip(candidates, masks)
                 if (mask & every_task).bit_count() >= 2 and (features is None or mask >> T & 1)]
        if self.processes is not None:
            device = held[found[0]].device if found else held[0].device
            self.processes.check_same(repr(found).encode(), "the parameters shared='auto' found (their positions in "
                                      "the optimizer)", device, advice="every rank's forward must reach the same "
                                      "parameters from each task (or give shared explicitly)")
        if not found:
            raise ValueError(self._nothing_shared(masks, T, features is not None))
        found_masks = [mask for (i, _), mask in zip(candidates, masks) if i in set(found)]
        apart = [t for t in range(T) if not any(mask >> t & 1 for mask in found_masks)]
        if apart:  # a zero row in G: MGDA and the like would stop the shared parameters for it
            raise ValueError(f"shared='auto': task(s) {apart} reach none of the parameters the other tasks share (the "
                             "group would give them zero gradient rows): give shared explicitly, with task-subset "
                             "groups ({'params': ..., 'tasks': [...]}) for the parts only some tasks use")
        params = shared_parameter_list([held[i] for i in found], "shared='auto' (the parameters two or more task "
                                       "losses reach)")
        if self.groups:
            if [id(p) for p in self.groups[0].params] != [id(p) for p in params]:
                self.groups[0].weights = None  # every=k's weights were for the old parameters' K
            self.groups[0].params = params
        else:
            self.groups = [SharedGroup(params, None, self.method)]
        self._derived_for = key

    @staticmethod
    def _nothing_shared(masks: list[int], T: int, feature_mode: bool) -> str:
        reached = [sum(mask >> t & 1 for mask in masks) for t in range(T)]
        apart = ", ".join(f"task {t} reaches {count}" for t, count in enumerate(reached))
        where = (" through the tensor returned by opt.features(z) (feature mode: the parameters the representation "
                 "reaches)") if feature_mode else ""
        return (f"shared='auto': no trainable parameter of the wrapped optimizer is reached by two or more of the {T} "
                f"task losses{where} ({apart} of its parameters, none reached by two tasks: each task reaches only "
                "its own parameters). Check that the tasks share an encoder and that it trains (requires_grad), or "
                "give shared explicitly (also for flat-parameter wrappers such as FSDP1, whose forward hides the "
                "optimizer's parameters from the graph)")

    def _no_auto_yet(self, what: str) -> None:
        """add_shared_group and branch rework the groups: with shared='auto' they need the derived
        group, and then make the groups explicit (they are not derived again)."""
        if not self.auto:
            return
        if not self.groups:
            raise ValueError(f"{what}: with shared='auto' the shared group is determined at the first backward; call "
                             f"{what} after it (the groups are then explicit: no longer derived from the graphs)")

    def add_shared_group(self, params, tasks=None, method=None, *, param_group: dict | None = None,
                         **options) -> SharedGroup:
        """Adds a group of shared parameters during training (e.g. a new branch). Parameters the
        wrapped optimizer does not hold yet join it as a new param group (``param_group``: its
        options, e.g. ``{"lr": 1e-3}``); parameters it holds keep their optimizer state, and
        leave the shared group they were in. ``method`` (default: the optimizer's method with its
        options, and ``options`` on top; its state starts empty) combines the gradients of
        ``tasks`` (None: every task)."""
        self._no_auto_yet("add_shared_group")
        spec = {"params": params, "tasks": tasks, **options}
        if method is not None:
            spec["method"] = method
        group = self._add_group(spec, moving_allowed=True, param_group=param_group)
        self.auto = False
        return group

    def _add_group(self, spec: dict, *, moving_allowed: bool = False, param_group: dict | None = None) -> SharedGroup:
        spec = dict(spec)
        what = f"shared group {len(self.groups)}"
        params = shared_parameter_list(spec.pop("params"), what)
        tasks = task_list(spec.pop("tasks", None), what)
        group_method = self._group_method(spec.pop("method", None), spec, what)
        self._check_method(group_method, tasks, what)
        if self.groups and params[0].device != self.groups[0].params[0].device:
            raise ValueError(f"{what} is on {params[0].device}, the other shared parameters on "
                             f"{self.groups[0].params[0].device}")
        held = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
        new = [p for p in params if id(p) not in held]
        if new and not moving_allowed:
            raise ValueError("every shared parameter must be in the wrapped optimizer (else it is never updated)")
        if param_group is not None and not new:
            raise ValueError("param_group: the wrapped optimizer holds every parameter of this group already, so no "
                             "param group is added (its options would be ignored)")
        grouped = {id(p) for group in self.groups for p in group.params}
        if not moving_allowed and any(id(p) in grouped for p in params):
            raise ValueError(f"{what} lists a parameter that an earlier group holds: each belongs to one group")
        self._same_random_numbers(group_method, params[0].device)  # may raise: before anything changes
        moving = {id(p) for p in params}
        for group in self.groups:  # a parameter belongs to one group: it leaves its old one
            group.params = [p for p in group.params if id(p) not in moving]
        self.groups = [group for group in self.groups if group.params]
        if group_method is self.method and any(group.method is self.method for group in self.groups):
            group_method = self.method.fresh()  # a second group on the optimizer's method: its own state
        if new:
            self.optimizer.add_param_group({**(param_group or {}), "params": new})
            if self.processes is not None and self.groups:  # added during training: rank 0's values
                self.processes.broadcast_([p.detach() for p in new if not sharded_by_fsdp([p])])
        group = SharedGroup(params, tasks, group_method)
        self.groups.append(group)
        self._adopt_parameters(group_method)
        return group

    def _adopt_parameters(self, method: methods.Method, device: torch.device | None = None) -> None:
        """A method's learnable tensors (UW's log-variances, IMTL's loss scales) train with the
        model, as in LibMTL: they join the wrapped optimizer as a param group of their own (its
        defaults: lr, weight decay), on the shared parameters' device (or ``device``)."""
        held = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
        if not method.parameters() or any(id(p) in held for p in method.parameters()):
            return
        method.move_parameters_(self.groups[0].params[0].device if device is None else device)
        self.optimizer.add_param_group({"params": method.parameters()})
        # Never heads, even once their group is gone (a branch replaced it): nothing reaches them then.
        self._learnt_ids |= {id(p) for p in method.parameters()}

    def _columns_multiple(self) -> int:
        """What the group buffers' width is padded to: the number of shards of the sharded reduction."""
        return self.processes.size if self.processes is not None and self.processes.reduce == "sharded" else 1

    def _same_random_numbers(self, method: methods.Method, device: torch.device) -> None:
        """With a process group, every rank must draw the same random numbers: a method without a
        generator gets the optimizer's (seeded from rank 0); one with its own is checked."""
        if self.processes is None or "generator" not in method.options:
            return
        if method.options["generator"] is None:
            if self.generator is None:
                self.generator = torch.Generator(device=device)
                self.generator.manual_seed(self.processes.shared_seed(device))
            method.options["generator"] = self.generator
        elif method.options["generator"] is not self.generator:
            state = method.options["generator"].get_state().numpy().tobytes()
            self.processes.check_same(state, f"{method.name}'s generator", device)

    def branch(self, params, branches, method=None, **options) -> list[SharedGroup]:
        """Replaces shared parameters by copies, one set per branch (e.g. FairBranch's branch
        formation). ``params``: the parameters replaced; ``branches``: a list of ``(copies,
        tasks)``, ``copies[i]`` standing in for ``params[i]`` (same shape, dtype and device) for
        ``tasks`` (disjoint across branches). Each copy joins the wrapped optimizer's param group
        of the parameter it replaces, so that group's options (lr, weight decay) and an LR
        scheduler's hold on it carry over, with empty optimizer state; the replaced parameters
        leave the wrapped optimizer (their state is dropped) and their shared group; every other
        parameter keeps its state. Each branch becomes a shared group of its tasks, combined by
        ``method`` (default: the optimizer's, with ``options`` on top). All checks run before
        anything changes. Returns the new groups."""
        self._no_auto_yet("branch")
        old = shared_parameter_list(params, "branch: params")
        specs, seen_tasks, seen_copies = [], set(), {id(p) for p in old}
        held = {id(p): index for index, group in enumerate(self.optimizer.param_groups) for p in group["params"]}
        missing = [i for i, p in enumerate(old) if id(p) not in held]
        if missing:
            raise ValueError(f"branch: params {missing} are not in the wrapped optimizer, so there is no param group "
                             "for their copies to join")
        if not branches:
            raise ValueError("branch: give at least one (copies, tasks) branch")
        for number, (copies, tasks) in enumerate(branches):
            copies = shared_parameter_list(copies, f"branch {number}: copies")
            tasks = task_list(tasks, f"branch {number}")
            if len(copies) != len(old) or any(c.shape != p.shape or c.dtype != p.dtype or c.device != p.device
                                               for c, p in zip(copies, old)):
                raise ValueError(f"branch {number}: copies must match params one to one in shape, dtype and device "
                                 f"(got {[tuple(c.shape) for c in copies]} for {[tuple(p.shape) for p in old]})")
            if any(id(c) in held or id(c) in seen_copies for c in copies):
                raise ValueError(f"branch {number}: a copy is a parameter the optimizer or another branch holds already")
            if tasks is None or seen_tasks & set(tasks):
                raise ValueError(f"branch {number}: name the tasks of each branch, no task in two branches")
            seen_copies |= {id(c) for c in copies}
            seen_tasks |= set(tasks)
            specs.append((copies, tasks))
        group_method = self._group_method(method, options, "branch")
        for number, (_, tasks) in enumerate(specs):
            self._check_method(group_method, tasks, f"branch {number}")
        self._same_random_numbers(group_method, old[0].device)  # may raise: before anything changes
        # Every check passed. In each param group, the copies take the place of the first parameter
        # they replace there, branch by branch (copy 0's parameters, then copy 1's, ...): the order
        # in which a rebuilt model's parameters() lists them, so a saved state_dict loads into an
        # optimizer built afresh on the branched model.
        index_of = {id(p): i for i, p in enumerate(old)}
        for number in sorted({held[id(p)] for p in old}):
            group = self.optimizer.param_groups[number]
            mine = [i for i, p in enumerate(old) if held[id(p)] == number]
            at = next(k for k, q in enumerate(group["params"]) if id(q) in index_of)
            kept = [q for q in group["params"] if id(q) not in index_of]
            group["params"][:] = kept[:at] + [copies[i] for copies, _ in specs for i in mine] + kept[at:]
        for p in old:
            self.optimizer.state.pop(p, None)
        # The new shared groups take the place of the first group that held a replaced parameter.
        gone = {id(p) for p in old}
        place = next((k for k, group in enumerate(self.groups) if any(id(p) in gone for p in group.params)),
                     len(self.groups))
        for group in self.groups:
            group.params = [p for p in group.params if id(p) not in gone]
        before = [group for group in self.groups[:place] if group.params]
        after = [group for group in self.groups[place:] if group.params]
        added = []
        for number, (copies, tasks) in enumerate(specs):
            branch_method = group_method if number == 0 and not any(g.method is group_method for g in self.groups) \
                else group_method.fresh()
            added.append(SharedGroup(copies, tasks, branch_method))
            self._adopt_parameters(branch_method, old[0].device)
        self.groups = before + added + after
        if self.processes is not None:  # the copies start from rank 0's values
            self.processes.broadcast_([c.detach() for copies, _ in specs for c in copies if not sharded_by_fsdp([c])])
        self.auto = False
        return added

    def _group_method(self, method, options: dict, what: str) -> methods.Method:
        """A group's method: the optimizer's (itself, with no options of the group's own), the
        optimizer's with the group's options on top, another name with its options, or an object
        no other group uses (a method object holds one group's state)."""
        if method is None or method == self.method.name:
            if not options:
                return self.method
            return methods.create(self.method.name, **{**self.method.options, **options})
        if isinstance(method, methods.Method) and any(group.method is method for group in self.groups):
            raise ValueError(f"{what}: this method object serves another group already; its state belongs to that "
                             "group (pass a name, or method.fresh())")
        return methods.create(method, **options)

    def _check_method(self, method: methods.Method, tasks, what: str) -> None:
        if method.family == "loss" or self.method.family == "loss":
            if method.family != self.method.family or tasks is not None or self.groups:
                raise ValueError(f"{what}: a loss-side method ({self.method.name}) builds one loss for all tasks "
                                 "and takes one group of shared parameters")
            if self.every != 1 or self.diagnostics:
                raise ValueError(f"method {method.name!r} works on the losses: every and diagnostics do not apply")
            if self.processes is not None:
                raise ValueError(f"method {method.name!r} builds its loss from this process's gradients (a non-linear "
                                 "function of them), so averaging over processes would not equal one process on the "
                                 "whole batch: loss-side methods are not supported with a process group")
        if self.every > 1 and method.family != "gram":
            raise ValueError(f"every={self.every} needs a Gram-space weighting method, and {method.name!r} is not one")
        if method.needs_losses and (self.every > 1 or self.processes is not None):
            raise ValueError(f"method {method.name!r} uses the values of each step's losses: every > 1 (weights reused "
                             "across steps) and process groups (each rank's losses differ) are not supported with it")
        if not method.feature_level and self.processes is not None and self.processes.reduce == "sharded":
            raise ValueError(f"method {method.name!r} needs whole rows of G, and reduce='sharded' gives each rank a "
                             "column shard: use reduce='full'")
        n_tasks = method.options.get("n_tasks")
        if tasks is not None and n_tasks is not None and len(tasks) != n_tasks:
            raise ValueError(f"{what}: method {method.name!r} has n_tasks={n_tasks} but the group has {len(tasks)} "
                             f"tasks {list(tasks)}")

    def _shared_params(self) -> list[torch.nn.Parameter]:
        return [p for group in self.groups for p in group.trainable()]

    def _heads(self) -> list[torch.nn.Parameter]:
        """The wrapped optimizer's trainable parameters that no shared group or method holds."""
        shared = {id(p) for group in self.groups for p in group.params} | self._learnt_ids
        return [p for group in self.optimizer.param_groups for p in group["params"]
                if p.requires_grad and id(p) not in shared]

    def _method_parameters(self) -> list[torch.Tensor]:
        """The methods' learnable tensors (one list; each method's own, once)."""
        found = {}
        for group in self.groups:
            for p in group.method.parameters():
                found.setdefault(id(p), p)
        return list(found.values())

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

    def __getstate__(self):
        # Our own attributes (Optimizer's version expects its fields), less what must not travel:
        # the bound `step` an LR scheduler patches onto the instance (a copy would step the
        # original's parameters) and a pending features() call.
        state = dict(self.__dict__)
        for name in ("step", "_opt_called", "_features"):
            state.pop(name, None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._features = None

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
        if self.method.family == "loss" or not self.auto and (len(self.groups) != 1 or self.groups[0].tasks is not None):
            raise ValueError("features() works with one shared group used by every task and a gradient method")
        method = self.groups[0].method if self.groups else self.method  # shared='auto': one group, the method
        if not method.feature_level:
            raise ValueError(f"method {method.name!r} works on the parameters' gradients only, not at "
                             "the feature level")
        leaf = representation.detach().requires_grad_()
        self._features = (representation, leaf)
        return leaf

    def backward(self, losses, scaler: torch.amp.GradScaler | None = None):
        """Per-task backward passes, then the aggregated gradient added to the shared ``.grad``.
        Returns the aggregated gradient of this call [P] (in feature mode: of the representation,
        flattened; with several groups: a list, one per group, None for a group frozen as a
        whole; valid until the next call), or, for a loss-side method, the loss it built.
        ``scaler``: a GradScaler to scale the (unscaled) losses with; see the module docstring."""
        features, self._features = self._features, None  # feature mode is for this call only, even if it fails
        losses = check_losses(losses)
        if self._ddp is not None and self._ddp.require_forward_param_sync:
            raise ValueError("the DistributedDataParallel model's forward ran with its gradient sync armed, which "
                             "allows one backward pass; run the forward (and this backward) inside "
                             "`with model.no_sync():`: MTLOptimizer averages the gradients itself")
        self._derive_shared(losses, features)
        if features is not None and self.processes is not None and self.groups[0].method.family != "gram":
            raise ValueError(f"feature mode with a process group needs a Gram-space method: {self.method.name} works "
                             "on the feature gradients coordinate by coordinate, and the ranks hold different samples")
        if self.method.family == "loss":
            return self._backward_loss(losses, scaler)
        unscaled, scale = losses, None
        if scaler is not None and scaler.is_enabled():
            losses = [scaler.scale(loss) for loss in losses]
            scale = scaler._get_scale_async()  # a device tensor: no sync
        for group in self.groups:  # the unscaled values, and the scale for the .grad a method writes itself
            if group.method.needs_losses:
                group.method.take_losses([unscaled[t] for t in group.task_indices(len(losses))], scale=scale)
        mode = "parameters" if features is None else "features"
        heads = self._heads()
        for group in self.groups:
            group.diagnostics = None
        with all_or_nothing(self._shared_params(), heads + self._method_parameters()), \
                self._method_states_kept_on_error():
            if features is None and self._reuse_weights(len(losses)):
                return self._backward_weighted(losses, heads)
            source = self._source(features, heads)
            combined = {}
            for matrix in source.collect(losses):                                # collect
                direction = combine_group(matrix, scale, mode, self.diagnostics, self.processes)  # weight, combine
                source.write(matrix, direction)                                   # write
                combined[id(matrix.group)] = direction
        self.last_diagnostics = self._diagnostics()
        return self._per_group(combined)

    def _source(self, features, heads):
        """Where this backward's per-task gradients come from (engine/sources.py)."""
        fsdp = sharded_by_fsdp(self._shared_params())
        if features is not None:
            if fsdp:
                raise ValueError("feature mode is not supported with FSDP2-sharded shared parameters (FSDP2 already "
                                 "reduces the encoder gradient that features() back-propagates)")
            return FeatureGradients(self.groups[0], *features, heads, self.processes)
        if fsdp:
            if self.processes is None or len(self.groups) != 1 or self.groups[0].tasks is not None \
                    or self.groups[0].method.family != "gram" or self.every != 1:
                raise ValueError("shared parameters sharded by FSDP2 (fully_shard) need process_group=..., one shared "
                                 "group used by every task, a Gram-space method and every=1 (the local shards are not "
                                 "contiguous columns of G, and the every=k steps' single pass is not wired for DTensors)")
            self.processes.check_fsdp_mesh(self._shared_params())
            return FsdpGradients(self.groups[0], heads, self.processes)
        return ParameterGradients(self.groups, heads, self.processes)

    def _per_group(self, combined: dict):
        if len(self.groups) == 1:
            return combined.get(id(self.groups[0]))
        return [combined.get(id(group)) for group in self.groups]

    def _diagnostics(self):
        if not self.diagnostics:
            return None
        reports = [group.diagnostics for group in self.groups]
        return reports[0] if len(self.groups) == 1 else reports

    @contextmanager
    def _method_states_kept_on_error(self):
        """A failed backward leaves every group's method state and cached weights as they were
        (an earlier group's GradVac must not advance when a later group raises)."""
        saved = [(group.method.state_dict(), group.weights, group.weights_mode) for group in self.groups]
        own = self.method.state_dict() if self.auto else None  # shared='auto' before its group exists
        try:
            yield
        except BaseException:
            for group, (state, weights, mode) in zip(self.groups, saved):
                group.method.load_state_dict(state)
                group.weights, group.weights_mode = weights, mode
            if own is not None:
                self.method.load_state_dict(own)
            raise

    def _reuse_weights(self, tasks: int) -> bool:
        """Whether this is an every=k step between weight updates, with weights for every group
        that trains (a group frozen as a whole takes no part)."""
        training = [group for group in self.groups if group.trainable()]
        return self.every > 1 and self._step % self.every != 0 and bool(training) and all(
            group.weights is not None and group.weights_mode == "parameters"
            and group.weights.shape[0] == len(group.task_indices(tasks)) for group in training)

    def _backward_weighted(self, losses, heads: list[torch.nn.Parameter]):
        """A step between weight updates of every=k: with w fixed, w · G is the gradient of
        Σ w_t L_t, so one backward pass per group replaces the T per-task passes; the heads get
        their plain gradients from Σ L_t. Written like a full step: into the group's buffer,
        zeros for a parameter no task reaches."""
        combined = {}
        for group in self.groups:
            params = group.trainable()
            if not params:
                continue
            rows = group.task_indices(len(losses))
            weighted = sum(w.to(losses[t].dtype) * losses[t].reshape(()) for w, t in zip(group.weights, rows))
            grads = torch.autograd.grad(weighted, params, retain_graph=True, allow_unused=True)
            group.ensure_buffers(len(rows), params, self._columns_multiple())
            flat_grads(params, grads, out=group.combined)
            point_grads_at(params, group.combined)
            combined[id(group)] = group.combined
        if heads:
            grads = torch.autograd.grad(sum(loss.reshape(()) for loss in losses), heads, allow_unused=True)
            for p, grad in zip(heads, grads):
                p.grad = grad
        if self.processes is not None:  # the same w on every rank: the mean of w · G_r is w · mean G_r
            self.processes.average_([group.combined for group in self.groups if id(group) in combined])
            self.processes.average_grads_(heads)
        self.last_diagnostics = None  # no per-task gradients on this step
        return self._per_group(combined)

    def _backward_loss(self, losses, scaler) -> torch.Tensor:
        with all_or_nothing(self._shared_params(), self._heads() + self._method_parameters()), \
                self._method_states_kept_on_error():
            total = self.method.loss(losses, self._shared_params())
            scaled = scaler.scale(total) if scaler is not None and scaler.is_enabled() else total
            scaled.backward(inputs=self._shared_params() + self._heads() + self.method.parameters())
        return total.detach()

    # ----- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "fastmtl": {"method": self.method.name, "every": self.every, "step": self._step,
                        # shared='auto': the derived group, as positions in the wrapped optimizer; before the
                        # first backward there is no group yet to hold the method's state, so it is here
                        "auto": None if not self.auto else {"indices": self._shared_indices()} if self.groups
                        else {"indices": None, "method_state": self.method.state_dict()},
                        "generator": None if self.generator is None else self.generator.get_state(),
                        "groups": [{"tasks": group.tasks, "method": group.method.name,
                                    "method_state": group.method.state_dict(), "weights": group.weights,
                                    "weights_mode": group.weights_mode} for group in self.groups]},
        }

    def _shared_indices(self) -> list[int]:
        grouped = {id(p) for group in self.groups for p in group.params}
        held = [p for group in self.optimizer.param_groups for p in group["params"]]
        return [i for i, p in enumerate(held) if id(p) in grouped]

    def _restored_auto_groups(self, ours: dict) -> list[SharedGroup]:
        """shared='auto': the group a state_dict stores (none if saved before the first backward)."""
        auto = ours.get("auto")
        if not isinstance(auto, dict):
            raise ValueError("state_dict is from an MTLOptimizer with shared parameters given explicitly; this one "
                             "derives them (shared='auto'): build it with the same shared argument")
        indices = auto.get("indices")
        if indices is None:
            if "method_state" not in auto:
                raise ValueError("state_dict['fastmtl']['auto'] has neither the group's indices nor the method's state")
            return []
        held = [p for group in self.optimizer.param_groups for p in group["params"]]
        if not indices or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(held)
                              for i in indices) or sorted(set(indices)) != list(indices):
            raise ValueError(f"state_dict['fastmtl']['auto']['indices'] must be increasing positions of the wrapped "
                             f"optimizer's {len(held)} parameters, got {indices!r}")
        return [SharedGroup(shared_parameter_list([held[i] for i in indices], "state_dict's shared='auto' group"),
                            None, self.method)]

    def load_state_dict(self, state_dict: dict) -> None:
        """Loads a state_dict of this MTLOptimizer (the same shared groups and methods), of the
        previous single-group format, or of the plain optimizer it wraps (e.g. a checkpoint from
        before fastmtl: fastmtl's own state is then left as it is). All or nothing: if any part
        does not fit, nothing is loaded. With shared='auto' the stored group replaces this one's;
        the next backward derives it again from the graphs."""
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        if "fastmtl" not in state_dict:
            if {"state", "param_groups"} <= set(state_dict):
                self.optimizer.load_state_dict(state_dict)
                return
            raise ValueError("state_dict is neither an MTLOptimizer's nor a torch optimizer's (keys: "
                             f"{sorted(state_dict)})")
        ours = dict(state_dict["fastmtl"])
        if "groups" not in ours and "weights" in ours:  # fastmtl 0.1: one group, its fields at the top
            ours["groups"] = [{"tasks": None, "method": ours["method"], "method_state": ours.get("method_state") or {},
                               "weights": ours["weights"], "weights_mode": ours.get("weights_mode")}]
        if ours.get("method") != self.method.name or "groups" not in ours or "step" not in ours:
            raise ValueError(f"state_dict is for method {ours.get('method')!r}, this optimizer uses "
                             f"{self.method.name!r}" if ours.get("method") != self.method.name
                             else f"state_dict['fastmtl'] lacks 'groups' or 'step' (keys: {sorted(ours)})")
        saved = ours["groups"]
        groups = self._restored_auto_groups(ours) if self.auto else self.groups
        if [(g["tasks"], g["method"]) for g in saved] != [(g.tasks, g.method.name) for g in groups]:
            raise ValueError(f"state_dict holds shared groups {[(g['tasks'], g['method']) for g in saved]}, this "
                             f"optimizer {[(g.tasks, g.method.name) for g in groups]}: add the same groups first")
        with self._method_states_kept_on_error():
            if self.auto and not groups:  # saved before the first backward: the method's state as it was then
                self.method.load_state_dict(ours["auto"]["method_state"])
            for group, state in zip(groups, saved):
                group.method.load_state_dict(state["method_state"])
                weights = state["weights"]
                group.weights = None if weights is None else weights.to(group.params[0].device).clone()
                group.weights_mode = state["weights_mode"]
            self.optimizer.load_state_dict(state_dict["optimizer"])
        if ours.get("generator") is not None and self.generator is not None:
            self.generator.set_state(ours["generator"])
        self._step = ours["step"]
        if self.auto:
            self.groups, self._derived_for = groups, None

    def __repr__(self) -> str:
        return (f"MTLOptimizer(method={self.method!r}, every={self.every}, groups={len(self.groups)}, "
                f"optimizer={self.optimizer!r})")


def _group_specs(shared) -> list[dict]:
    """``shared`` as a list of group dicts: parameters (or a module) are the one-group case."""
    if isinstance(shared, (list, tuple)) and shared and all(isinstance(item, dict) for item in shared):
        for index, spec in enumerate(shared):
            if "params" not in spec:
                raise ValueError(f"shared group {index} has no 'params'")
            if isinstance(spec["params"], str):
                raise ValueError(f"shared group {index}: 'params' must be parameters; shared='auto' stands alone (one "
                                 "group used by every task), it cannot be one of several groups")
        return list(shared)
    return [{"params": shared}]


def combine_group(matrix: TaskMatrix, scale: torch.Tensor | None = None, mode: str = "parameters",
                  diagnostics: bool = False, processes: ProcessAverage | None = None) -> torch.Tensor:
    """Weight and combine one group's G with its method: into the group's buffer at the
    parameter level. Gram-space methods cache their weights on the group (every=k reuses them);
    ``scale`` (a GradScaler's) unscales K for a method that is not scale-linear (Nash-MTL).
    A partial G (``matrix.partial``: the sharded reduction over ``processes``, or a rank's
    feature gradients) holds this rank's columns of the whole G: its Gram matrix is summed over the
    ranks (in float64) before the weights, and, at the parameter level, the ranks' combined
    columns are gathered into the group's buffer."""
    group, G, method = matrix.group, matrix.G, matrix.group.method
    partial = matrix.partial
    out = group.combined if matrix.params else None
    K = None
    if method.family == "gram" and method.needs_gram:
        K = method.gram(G)
    elif diagnostics:
        K = functional.gram_for_weights(G, impl=getattr(method, "impl", "auto"))
    if partial and K is not None:
        K = processes.sum_(K.double())  # G Gᵀ is the sum of the column shards' Gram matrices
    if method.family == "gram":
        K_for_weights = method.gram(G) if K is None else K
        if scale is not None and not method.scale_linear:
            K_for_weights = K_for_weights / scale.to(K_for_weights.dtype) ** 2  # the unscaled gradients' weights
        group.weights, group.weights_mode = method.weights(K_for_weights), mode
        direction = functional.combine(G, group.weights, out=None if partial else out, impl=method.impl)
    else:
        unscale = scale is not None and not method.scale_linear  # the method sees the true gradients
        seen = G / scale.to(G.dtype) if unscale else G
        if partial:
            direction = method(seen, signs=matrix.signs, batch=matrix.batch, column_offset=matrix.column_offset)
        else:
            direction = method(seen, signs=matrix.signs, batch=matrix.batch)
        if unscale:
            direction = direction * scale.to(direction.dtype)
        if not partial and out is not None:
            direction = out.copy_(direction)
    if partial and out is not None:  # parameter level; at the feature level each rank keeps its samples' part
        direction = processes.gather(direction, out)
    if diagnostics:
        group.diagnostics = diagnostics_of(K, group.weights if method.family == "gram" else None)
    return direction


def backward(losses, shared, method="pcgrad", **options) -> torch.Tensor:
    """Functional twin of ``MTLOptimizer.backward`` for custom loops: per-task gradients of
    ``shared``, aggregated with ``method`` and added to their ``.grad`` (every other parameter
    gets its plain gradients, as from ``loss.backward()``); returns the aggregated [P]. On
    failure the shared ``.grad`` are left as they were. (Allocates its [T, P] buffer per call;
    MTLOptimizer keeps one.)"""
    losses = check_losses(losses)
    method = methods.create(method, **options)
    if method.family == "loss":
        raise ValueError(f"method {method.name!r} works on the losses: use MTLOptimizer, or back-propagate "
                         "the loss it builds")
    if method.needs_losses:
        method.take_losses(losses)
    group = SharedGroup(shared_parameter_list(shared), None, method)
    if not group.trainable():
        raise ValueError("every shared parameter is frozen (requires_grad=False): there is nothing to aggregate")
    source = ParameterGradients([group], None)
    with all_or_nothing(group.trainable(), []):
        (matrix,) = source.collect(losses)
        direction = combine_group(matrix)
        source.write(matrix, direction)
    return direction
