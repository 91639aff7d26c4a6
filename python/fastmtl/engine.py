"""The per-task gradient engine: T backward passes whose gradients w.r.t. the shared
parameters land, without a copy, in the rows of one preallocated [T, P] buffer, and a writer
that puts the combined [P] gradient into the shared parameters' ``.grad``.

Autograd accumulates in place into an existing ``.grad``; pointing each shared parameter's
``.grad`` at a view of row t of the buffer before loss t's backward pass makes autograd write
task t's gradient straight into G[t]. Parameters that are not shared (task heads) receive their
plain gradients as usual.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch


def shared_parameter_list(shared) -> list[torch.nn.Parameter]:
    """The shared parameters that train, from parameters, a module or an iterable of either."""
    if isinstance(shared, torch.nn.Module):
        shared = shared.parameters()
    params = [p for p in shared if p.requires_grad]
    if not params:
        raise ValueError("shared must contain at least one parameter that requires grad")
    devices, dtypes = {p.device for p in params}, {p.dtype for p in params}
    if len(devices) != 1 or len(dtypes) != 1:
        raise ValueError(f"shared parameters must share one device and dtype, got {devices} and {dtypes}")
    if len({id(p) for p in params}) != len(params):
        raise ValueError("shared lists a parameter twice")
    return params


def check_losses(losses) -> list[torch.Tensor]:
    losses = list(losses) if not isinstance(losses, torch.Tensor) else list(losses.unbind())
    if not losses:
        raise ValueError("losses is empty: give one scalar loss per task")
    for t, loss in enumerate(losses):
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ValueError(f"loss {t} must be a scalar tensor, got {getattr(loss, 'shape', type(loss).__name__)}")
        if not loss.requires_grad:
            raise ValueError(f"loss {t} does not require grad: it depends on no trainable parameter")
    return losses


class TaskGradients:
    """Owns the [T, P] buffer of per-task gradients of ``params`` and the [P] combined gradient."""

    def __init__(self, params: Sequence[torch.nn.Parameter]):
        self.params = list(params)
        self.sizes = [p.numel() for p in self.params]
        self.size = sum(self.sizes)
        self.buffer: torch.Tensor | None = None  # [T, P], grown on demand
        self.combined: torch.Tensor | None = None  # [P]
        self._previous: torch.Tensor | None = None  # the shared .grad found before this backward

    def _rows(self, tasks: int) -> torch.Tensor:
        first = self.params[0]
        if self.buffer is None or self.buffer.shape[0] != tasks:
            self.buffer = torch.empty(tasks, self.size, device=first.device, dtype=first.dtype)
            self.combined = torch.empty(self.size, device=first.device, dtype=first.dtype)
        return self.buffer

    def _point_grads_at(self, flat: torch.Tensor) -> None:
        for p, view in zip(self.params, flat.split(self.sizes)):
            p.grad = view.view_as(p)

    def compute(self, losses: Iterable[torch.Tensor]) -> torch.Tensor:
        """Runs one backward pass per loss and returns G [T, P] (a view of the buffer, valid until
        the next call). Gradients of non-shared parameters accumulate into their ``.grad``."""
        losses = check_losses(losses)
        self._previous = None
        if any(p.grad is not None for p in self.params):  # accumulate, as loss.backward() would
            self._previous = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                                        for p in self.params])  # a copy: it may view self.combined
        G = self._rows(len(losses))
        G.zero_()  # a task whose loss ignores a shared parameter contributes zeros there
        for t, loss in enumerate(losses):
            self._point_grads_at(G[t])
            loss.backward(retain_graph=t < len(losses) - 1)
        return G

    def write_combined(self, combine) -> torch.Tensor:
        """``combine(out)`` writes the combined gradient into ``out`` [P], which it returns; the
        shared parameters' ``.grad`` view it (no copy), or its sum with the gradient they held
        before ``compute`` (accumulation, a new tensor)."""
        combine(self.combined)
        self._point_grads_at(self.combined if self._previous is None else self.combined + self._previous)
        self._previous = None
        return self.combined
