"""FairBranch (Roy et al. 2024, Algorithm 1): a shared trunk that branches top-down where the
tasks' own parameters stop being similar, trained on each task's accuracy loss plus its
λ-weighted fairness loss, with conflicting fairness gradients of merged branches projected
apart (FBGrad).

    fb = fastmtl.FairBranch(trunk=[layer1, layer2, layer3, layer4], heads=[head_1, ..., head_T],
                            tau=0.7, branch_every=steps_per_epoch, warmup=steps_per_epoch)
    opt = fb.make_optimizer(torch.optim.AdamW(fb.parameters()))
    for x, y, s in batches:
        outs = fb(x)                                   # one output per task
        opt.zero_grad()
        fb.backward([ce(o, y[:, t]) for t, o in enumerate(outs)],
                    [fastmtl.fairness_loss(o, y[:, t], s, num_groups=2) for t, o in enumerate(outs)])
        opt.step()
        fb.after_step()                                # branches when a check is due

Structure. Every layer of the trunk starts as one module shared by all tasks; ``layers[l][c]``
is copy c of layer l and ``route[l][t]`` the copy task t uses. The task groups TG start as one
group per task. A branching check (every ``branch_every`` steps once ``warmup`` steps are done)
measures the linear CKA between the groups' exclusive parameters one level up (the heads at
first, then the copies of the previous branching), groups them (``pair_tasks`` with τ, or
``cluster_tasks`` single linkage), and, when that gives at least two groups and the layer is
not the first, replaces the topmost still-shared layer by one copy per new group. Each layer
branches at most once, top-down. The copies join the optimizer through
``MTLOptimizer.branch``: every existing parameter keeps its optimizer state, the copies join the
replaced layer's param group with fresh state.

A layer's similarity (and FBGrad) weight is its first parameter with two or more dimensions
(an nn.Linear's weight; θ = Wᵀ, one row per input unit); the other parameters of a merged child
follow that weight's conflict test in FBGrad.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from fastmtl import _validate, functional
from fastmtl.branching.fbgrad import fbgrad as project_apart
from fastmtl.branching.similarity import pair_tasks, parameter_similarity
from fastmtl.engine import all_or_nothing, check_losses
from fastmtl.losses.fairness import fairness_weights

GROUPINGS = ("pairs", "cluster")
FBGRAD_MODES = ("merged", "within_branch")


@dataclass
class BranchEvent:
    """One branching: after optimiser step ``step``, trunk layer ``layer`` (0-based) was split
    into one copy per group of ``groups`` (task indices). ``members[i]``: the indices, into
    ``groups_before``, of the groups merged into ``groups[i]``; ``similarity``: the CKA matrix
    between ``groups_before`` it was decided on, with threshold ``tau``."""

    step: int
    layer: int
    groups_before: list[tuple[int, ...]]
    groups: list[tuple[int, ...]]
    members: list[tuple[int, ...]]
    similarity: list[list[float]]
    tau: float
    children: list[list[tuple]] = field(default_factory=list)  # per merge: the merged children (see _child)


def _weight(module: nn.Module, what: str) -> nn.Parameter:
    """The module's similarity/FBGrad weight: its first parameter with >= 2 dimensions."""
    for p in module.parameters():
        if p.dim() >= 2:
            return p
    raise ValueError(f"{what} has no weight matrix (a parameter with 2 or more dimensions) to measure the similarity "
                     "of tasks on")


def _shapes(module: nn.Module) -> tuple:
    return tuple(tuple(p.shape) for p in module.parameters())


def _theta(module: nn.Module) -> torch.Tensor:
    """θ = Wᵀ with W flattened to [out, fan_in]: one row per input unit."""
    weight = _weight(module, type(module).__name__).detach()
    return weight.reshape(weight.shape[0], -1).T


def _layer_list(trunk) -> list[nn.Module]:
    if isinstance(trunk, nn.Module) and not isinstance(trunk, (nn.Sequential, nn.ModuleList)):
        raise TypeError(f"trunk must be a sequence of layers (nn.Sequential, nn.ModuleList or a list of modules), got "
                        f"one {type(trunk).__name__}: branching splits the trunk layer by layer")
    if isinstance(trunk, (str, bytes, torch.Tensor)) or not hasattr(trunk, "__iter__"):
        raise TypeError(f"trunk must be a sequence of layers (nn.Sequential, nn.ModuleList or a list of modules), got "
                        f"{type(trunk).__name__}")
    layers = list(trunk)
    if not layers or not all(isinstance(layer, nn.Module) for layer in layers):
        raise TypeError("trunk must be a non-empty sequence of nn.Module layers")
    return layers


class FairBranch(nn.Module):
    """See the module docstring. Options: ``tau`` in [0, 1] (0.7 tabular, 0.8 vision in the
    paper); ``grouping`` "pairs" (Eq. 10-11) or "cluster" (``cluster_tasks``, single linkage,
    threshold τ: groups of any size); ``fbgrad`` "merged" (between the children of each merge,
    the authors' code) or "within_branch" (PCGrad between the fairness gradients of the tasks
    that share each branch copy, §IV-B's text; T backward passes); ``lambda_lag`` 0 (λ_t of the
    same step, the paper) or 1 (the previous step's test, the code's: on the head's fairness gradient
    as written, so a step with λ_t = 0 writes none and the next test passes; λ_t never stays 0
    two steps running, as in the code); ``fair_from_start`` True
    (the paper) or False (fairness losses only after the first branching, the code)."""

    def __init__(self, trunk, heads, *, tau: float = 0.7, branch_every: int = 1, warmup: int = 0,
                 grouping: str = "pairs", fbgrad: str = "merged", lambda_lag: int = 0, fair_from_start: bool = True):
        super().__init__()
        layers = _layer_list(trunk)
        if isinstance(heads, nn.Module) and not isinstance(heads, nn.ModuleList):
            raise TypeError("heads must be a list of task heads (one nn.Module per task)")
        heads = list(heads)
        if not heads or not all(isinstance(head, nn.Module) for head in heads):
            raise TypeError("heads must be a non-empty list of nn.Module task heads")
        self.tau = _validate.unit_interval(tau, "tau")
        self.branch_every = _validate.integer(branch_every, "branch_every")
        self.warmup = _validate.integer(warmup, "warmup")
        if self.branch_every < 1 or self.warmup < 0:
            raise ValueError(f"branch_every must be >= 1 and warmup >= 0, got {self.branch_every} and {self.warmup}")
        self.grouping = _validate.choice(grouping, GROUPINGS, "grouping")
        self.fbgrad = _validate.choice(fbgrad, FBGRAD_MODES, "fbgrad")
        if _validate.is_bool(lambda_lag):
            raise TypeError(f"lambda_lag must be 0 or 1 (steps of lag), got {lambda_lag!r}")
        self.lambda_lag = _validate.choice(lambda_lag, (0, 1), "lambda_lag")
        if not _validate.is_bool(fair_from_start):
            raise TypeError(f"fair_from_start must be True or False, got {fair_from_start!r}")
        self.fair_from_start = bool(fair_from_start)
        for index, head in enumerate(heads):
            _weight(head, f"head {index}")
        if len({_shapes(head) for head in heads}) != 1:  # merged heads are projected against each other
            raise ValueError("every head must have the same parameter shapes (FBGrad projects the heads of merged "
                             f"tasks against each other), got {[list(_shapes(head)) for head in heads]}")
        for index, layer in enumerate(layers[2:], start=2):  # layers 0 and 1 are never compared
            _weight(layer, f"trunk layer {index}")
        self.layers = nn.ModuleList(nn.ModuleList([layer]) for layer in layers)
        self.heads = nn.ModuleList(heads)
        self._reset_structure()
        self.optimizer = None  # the MTLOptimizer of make_optimizer, which branching extends

    def _reset_structure(self) -> None:
        T = len(self.heads)
        self.route = [[0] * T for _ in self.layers]  # route[l][t]: the copy of layer l task t uses
        self.task_groups: list[tuple[int, ...]] = [(t,) for t in range(T)]
        self.next_layer = len(self.layers) - 1  # the topmost layer still shared by every task
        self.steps = 0
        self.events: list[BranchEvent] = []
        self.last_lambdas: torch.Tensor | None = None
        self._lambda_next: torch.Tensor | None = None  # lambda_lag=1: the λ of the next step

    @property
    def tasks(self) -> int:
        return len(self.heads)

    # ----- forward ------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """One output per task; each copy runs once, on the activation of the copy below it."""
        activations, node = {0: x}, [0] * self.tasks
        for copies, route in zip(self.layers, self.route):
            computed = {}
            for t, c in enumerate(route):
                if c not in computed:
                    computed[c] = copies[c](activations[node[t]])
                node[t] = c
            activations = computed
        return [head(activations[node[t]]) for t, head in enumerate(self.heads)]

    # ----- optimiser ----------------------------------------------------------------------------
    def shared_groups(self) -> list[dict]:
        """The MTLOptimizer groups of the trunk: one per layer copy, with the tasks it serves."""
        groups = []
        for l, (copies, route) in enumerate(zip(self.layers, self.route)):
            for c, module in enumerate(copies):
                params = list(module.parameters())
                if params:
                    groups.append({"params": params, "tasks": [t for t, r in enumerate(route) if r == c],
                                   **self._group_method(branched=len(copies) > 1)})
        return groups

    def _group_method(self, branched: bool) -> dict:
        if self.fbgrad == "within_branch" and branched:
            return {"method": "pcgrad", "shuffle": False}
        return {"method": "sum"}

    def make_optimizer(self, optimizer: torch.optim.Optimizer):
        """Wraps ``optimizer`` (which must hold every parameter of this model) in the
        MTLOptimizer whose task-subset groups follow the branches; branching adds to it."""
        from fastmtl.optim import MTLOptimizer

        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        if any(id(p) not in held for p in self.parameters()):
            raise ValueError("the optimizer must hold every parameter of the FairBranch model (e.g. "
                             "torch.optim.AdamW(model.parameters()))")
        self.optimizer = MTLOptimizer(optimizer, "sum", shared=self.shared_groups())
        return self.optimizer

    # ----- backward -----------------------------------------------------------------------------
    def _head_weights(self) -> list[nn.Parameter]:
        return [_weight(head, f"head {t}") for t, head in enumerate(self.heads)]

    def _fairness_on(self) -> bool:
        return self.fair_from_start or bool(self.events)

    def backward(self, accuracy_losses, fairness_losses) -> torch.Tensor:
        """Algorithm 1, lines 2-4 before the step: λ_t (same step, or the previous step's with
        ``lambda_lag=1``), the gradients of Σ λ_t F_t with FBGrad applied, plus those of Σ L_t,
        added to ``.grad`` (as ``loss.backward()`` would; all or nothing on error). Returns λ [T]
        (zeros while fairness is off, with ``fair_from_start=False``)."""
        accuracy, fairness = check_losses(accuracy_losses), check_losses(fairness_losses)
        if len(accuracy) != self.tasks or len(fairness) != self.tasks:
            raise ValueError(f"give one accuracy and one fairness loss per task ({self.tasks}), got {len(accuracy)} "
                             f"and {len(fairness)}")
        if self.fbgrad == "within_branch" and self.optimizer is None:
            raise RuntimeError("fbgrad='within_branch' combines through the optimizer's groups: call "
                               "make_optimizer first")
        params = [p for p in self.parameters() if p.requires_grad]
        heads = self._head_weights()
        lambda_next = self._lambda_next  # committed with the gradients: a failed call changes nothing
        with all_or_nothing(params, []):
            accuracy_heads = torch.autograd.grad(sum(accuracy), heads, retain_graph=True)
            if not self._fairness_on():
                lambdas = torch.zeros(self.tasks, device=heads[0].device)
                torch.autograd.backward(sum(accuracy), inputs=params)
            else:
                lambdas = self._lambdas(accuracy_heads, fairness, heads)
                weighted = [lam * loss.reshape(()) for lam, loss in zip(lambdas.to(fairness[0].dtype), fairness)]
                if self.fbgrad == "within_branch":
                    # The optimizer's per-task passes free the graph after the last one: the accuracy
                    # gradients go first, and its backward adds the fairness gradients to them. The
                    # heads' fairness gradients are the plain ones of the weighted losses.
                    torch.autograd.backward(sum(accuracy), inputs=params, retain_graph=True)
                    if self.lambda_lag:  # the code's test: the head's fairness gradient as written this step
                        lambda_next = fairness_weights(accuracy_heads, self._head_gradients(weighted, heads))
                    self.optimizer.backward(weighted)
                else:
                    written = self._fairness_backward(weighted, params, heads)
                    if self.lambda_lag:  # before the accuracy gradients accumulate into these very tensors
                        lambda_next = fairness_weights(accuracy_heads, written)
                    torch.autograd.backward(sum(accuracy), inputs=params)
        self._lambda_next = lambda_next
        self.last_lambdas = lambdas.detach()
        return self.last_lambdas

    def _lambdas(self, accuracy_heads, fairness, heads) -> torch.Tensor:
        if self.lambda_lag:
            if self._lambda_next is None:
                return torch.ones(self.tasks, device=heads[0].device)
            return self._lambda_next
        fairness_heads = torch.autograd.grad(sum(fairness), heads, retain_graph=True)
        return fairness_weights(accuracy_heads, fairness_heads)

    @staticmethod
    def _head_gradients(weighted, heads) -> list[torch.Tensor]:
        grads = torch.autograd.grad(sum(weighted), heads, retain_graph=True, allow_unused=True)
        return [g if g is not None else torch.zeros_like(head) for g, head in zip(grads, heads)]

    def _fairness_backward(self, weighted, params, heads) -> list[torch.Tensor]:
        """fbgrad="merged": writes the fairness gradients, FBGrad applied, into ``.grad`` (which
        the caller set aside); returns the heads' fairness gradients as written."""
        grads = torch.autograd.grad(sum(weighted), params, retain_graph=True, allow_unused=True)
        grads = {id(p): (g if g is not None else torch.zeros_like(p)) for p, g in zip(params, grads)}
        for event in self.events:
            for children in event.children:
                self._project_children([self._child_module(child) for child in children], grads)
        for p in params:
            p.grad = grads[id(p)]
        return [grads[id(head)] for head in heads]

    @staticmethod
    def _project_children(modules: list[nn.Module], grads: dict) -> None:
        """FBGrad on the merged children's fairness gradients, in ``grads`` (by parameter id):
        each child's weight, and each of its other parameters following the weights' test (all
        children are copies of one layer, or heads of one shape: their parameters line up)."""
        children = []  # per trainable child: its weight, then its other parameters in order
        for m in modules:
            weight = _weight(m, "a merged child")
            if weight.requires_grad:  # a frozen child takes no part
                children.append([weight] + [p for p in m.parameters() if p is not weight])
        if len(children) < 2:
            return
        # One column per parameter position (the children are copies of one layer, or heads of one
        # shape): the weights, then each follower that trains in every child.
        columns = [list(column) for k, column in enumerate(zip(*children))
                   if k == 0 or all(p.requires_grad for p in column)]
        projected = project_apart(*(torch.stack([grads[id(p)].reshape(-1) for p in column]) for column in columns))
        projected = projected if len(columns) > 1 else (projected,)
        for rows, column in zip(projected, columns):
            for row, p in zip(rows, column):
                grads[id(p)] = row.view_as(p)

    # ----- branching ----------------------------------------------------------------------------
    def _child(self, group: tuple[int, ...]) -> tuple:
        """A task group's exclusive parameters one level above the next layer to branch: its
        head before any branching, its copy of the layer branched last after."""
        above = self.next_layer + 1
        if above == len(self.layers):
            return ("head", group[0])
        return ("layer", above, self.route[above][group[0]])

    def _child_module(self, child: tuple) -> nn.Module:
        return self.heads[child[1]] if child[0] == "head" else self.layers[child[1]][child[2]]

    def similarity(self) -> torch.Tensor:
        """The CKA matrix between the current task groups' exclusive parameters (Eq. 7-9)."""
        return parameter_similarity([_theta(self._child_module(self._child(g))) for g in self.task_groups])

    def propose(self, S: torch.Tensor) -> list[tuple[int, ...]]:
        """The grouping of the current task groups (indices into ``task_groups``) from S."""
        if self.grouping == "pairs":
            return pair_tasks(S, self.tau)
        labels = functional.cluster_tasks(S, threshold=self.tau, linkage="single").tolist()
        return [tuple(i for i, label in enumerate(labels) if label == value) for value in sorted(set(labels))]

    def after_step(self) -> BranchEvent | None:
        """Counts one optimiser step; runs the branching check when one is due (every
        ``branch_every`` steps once ``warmup`` steps are done). Returns the event if it branched."""
        self.steps += 1
        due = self.steps >= self.warmup and (self.steps - self.warmup) % self.branch_every == 0
        return self.branch() if due else None

    def branch(self) -> BranchEvent | None:
        """The branching check now (Algorithm 1, lines 5-7): branches the topmost shared layer
        when it is not the first and the grouping gives at least two groups. Returns the event,
        or None. Needs the optimizer of ``make_optimizer`` (the copies must train)."""
        if self.next_layer < 1 or len(self.task_groups) < 2:
            return None
        if self.optimizer is None:
            raise RuntimeError("FairBranch.branch needs the optimizer from make_optimizer, which the copies join")
        S = self.similarity()
        proposal = self.propose(S)
        if len(proposal) < 2:
            return None
        layer = self.next_layer
        groups = [tuple(sorted(t for g in members for t in self.task_groups[g])) for members in proposal]
        children = [[self._child(self.task_groups[g]) for g in members] for members in proposal if len(members) > 1]
        old = self.layers[layer][0]
        copies = [self._copy(old) for _ in groups]
        if list(old.parameters()):  # a layer without parameters (an activation) has nothing to train
            self.optimizer.branch(list(old.parameters()),
                                  [(list(c.parameters()), g) for c, g in zip(copies, groups)],
                                  **self._group_method(branched=True))
        self.layers[layer] = nn.ModuleList(copies)
        for c, group in enumerate(groups):
            for t in group:
                self.route[layer][t] = c
        event = BranchEvent(step=self.steps, layer=layer, groups_before=list(self.task_groups), groups=groups,
                            members=[tuple(m) for m in proposal], similarity=S.double().cpu().tolist(), tau=self.tau,
                            children=children)
        self.events.append(event)
        self.task_groups = groups
        self.next_layer -= 1
        return event

    @staticmethod
    def _copy(module: nn.Module) -> nn.Module:
        duplicate = copy.deepcopy(module)
        for p in duplicate.parameters():
            p.grad = None
        return duplicate

    # ----- state --------------------------------------------------------------------------------
    def get_extra_state(self) -> dict:
        return {"version": 1, "route": [list(r) for r in self.route], "task_groups": [list(g) for g in self.task_groups],
                "next_layer": self.next_layer, "steps": self.steps,
                "events": [asdict(event) for event in self.events],
                "copies": [len(copies) for copies in self.layers],
                "lambda_next": None if self._lambda_next is None else self._lambda_next.cpu()}

    def set_extra_state(self, state: dict) -> None:
        """Rebuilds the branched structure (copies of each layer) before the parameters load.
        Every check runs first: a state that does not fit leaves the model as it was."""
        if not isinstance(state, dict) or state.get("version") != 1:
            raise ValueError("this is not a FairBranch state (version 1)")
        route, groups = state["route"], state["task_groups"]
        if len(state["copies"]) != len(self.layers) or len(route) != len(self.layers) \
                or any(len(r) != self.tasks for r in route) \
                or sorted(t for g in groups for t in g) != list(range(self.tasks)) \
                or any(not 0 <= c < count for r, count in zip(route, state["copies"]) for c in r):
            raise ValueError(f"this FairBranch state is for another trunk or task count (it has {len(route)} layers "
                             f"and tasks {sorted(t for g in groups for t in g)}; this model {len(self.layers)} layers "
                             f"and {self.tasks} tasks)")
        for l, count in enumerate(state["copies"]):
            if count != len(self.layers[l]) and len(self.layers[l]) != 1:
                raise ValueError(f"layer {l} is branched already into {len(self.layers[l])} copies; the state "
                                 f"has {count}: load into a model built like the saved one, before it branches")
        for l, count in enumerate(state["copies"]):
            if count != len(self.layers[l]):
                self.layers[l] = nn.ModuleList(self._copy(self.layers[l][0]) for _ in range(count))
        self.route = [list(r) for r in state["route"]]
        self.task_groups = [tuple(g) for g in state["task_groups"]]
        self.next_layer, self.steps = int(state["next_layer"]), int(state["steps"])
        self.events = [BranchEvent(**{**event, "groups_before": [tuple(g) for g in event["groups_before"]],
                                      "groups": [tuple(g) for g in event["groups"]],
                                      "members": [tuple(m) for m in event["members"]],
                                      "children": [[tuple(c) for c in merge] for merge in event["children"]]})
                       for event in state["events"]]
        lam = state["lambda_next"]
        self._lambda_next = None if lam is None else lam.to(_weight(self.heads[0], "head 0").device)

    def extra_repr(self) -> str:
        return (f"tasks={self.tasks}, tau={self.tau}, grouping={self.grouping!r}, fbgrad={self.fbgrad!r}, "
                f"branched_layers={[l for l, c in enumerate(self.layers) if len(c) > 1]}")
