"""A group of shared parameters: the parameters, the tasks that share them, the method that
combines those tasks' gradients, and the buffers the engine fills for it.

The per-task gradient matrix of a group holds one row per task of the group (all tasks when
``tasks`` is None), in the order of the losses handed to ``backward``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

if TYPE_CHECKING:
    from fastmtl.methods import Method


def task_list(tasks, what: str) -> tuple[int, ...] | None:
    """None (every task) or a sorted tuple of distinct task indices."""
    if tasks is None:
        return None
    if isinstance(tasks, (str, bytes, torch.Tensor)) or not hasattr(tasks, "__iter__"):
        raise TypeError(f"{what}: tasks must be a list of task indices or None, got {type(tasks).__name__}")
    indices = []
    for t in tasks:
        if isinstance(t, bool) or not hasattr(t, "__index__") or int(t) < 0:
            raise ValueError(f"{what}: tasks must be task indices (ints >= 0), got {t!r}")
        indices.append(int(t))
    if not indices or len(set(indices)) != len(indices):
        raise ValueError(f"{what}: tasks must name at least one task, each once, got {list(tasks)!r}")
    return tuple(sorted(indices))


class SharedGroup:
    def __init__(self, params: Sequence[torch.nn.Parameter], tasks: tuple[int, ...] | None, method: Method):
        self.params = list(params)
        self.tasks = tasks
        self.method = method
        self.weights: torch.Tensor | None = None  # the last task weights (Gram-space methods; every=k reuses them)
        self.weights_mode: str | None = None  # "parameters" or "features": where they were computed
        self.diagnostics: dict | None = None
        self._layout: tuple | None = None  # (rows, ids of the trainable params) the buffers were made for
        self.buffer: torch.Tensor | None = None  # [rows, P] per-task gradients
        self.combined: torch.Tensor | None = None  # [P] the combined gradient

    def task_indices(self, T: int) -> list[int]:
        if self.tasks is None:
            return list(range(T))
        if self.tasks[-1] >= T:
            raise ValueError(f"a shared group names task {self.tasks[-1]}, but backward got {T} losses")
        return list(self.tasks)

    def trainable(self) -> list[torch.nn.Parameter]:
        """The parameters that train now (a frozen one keeps its .grad as it is)."""
        return [p for p in self.params if p.requires_grad]

    def ensure_buffers(self, tasks: int, params: list[torch.nn.Parameter], multiple: int = 1) -> None:
        """[tasks, P'] and [P] buffers for these trainable parameters (reused while they stay the
        same); P' is P rounded up to a multiple of ``multiple`` (the sharded reduction splits
        each row into that many equal chunks; the padding stays zero)."""
        layout = (tasks, tuple(id(p) for p in params), multiple)
        if layout != self._layout:
            size = sum(p.numel() for p in params)
            first = params[0]
            padded = -(-size // multiple) * multiple
            self.buffer = torch.empty(tasks, padded, device=first.device, dtype=first.dtype)
            self.combined = torch.empty(size, device=first.device, dtype=first.dtype)
            self._layout = layout

    def rows(self, tasks: int, params: list[torch.nn.Parameter], multiple: int = 1) -> torch.Tensor:
        """The zeroed [tasks, P] per-task gradients (a view of the [tasks, P'] buffer)."""
        self.ensure_buffers(tasks, params, multiple)
        self.buffer.zero_()  # a task whose loss skips a parameter contributes zeros there
        return self.buffer[:, :self.combined.numel()]

    def __repr__(self) -> str:
        tasks = "all" if self.tasks is None else list(self.tasks)
        return f"SharedGroup({len(self.params)} params, tasks={tasks}, method={self.method!r})"


def point_grads_at(params: list[torch.nn.Parameter], flat: torch.Tensor) -> None:
    """Each parameter's .grad becomes a view of its slice of ``flat`` [P]: autograd then
    accumulates a backward pass's gradient straight into it, without a copy."""
    for p, view in zip(params, flat.split([p.numel() for p in params])):
        p.grad = view.view_as(p)


def flat_grads(params: list[torch.nn.Parameter], grads, out: torch.Tensor | None = None) -> torch.Tensor:
    """The gradients of ``params`` as one flat vector (zeros for a None gradient), into ``out`` if given."""
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)],
                     out=out)
