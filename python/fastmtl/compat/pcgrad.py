"""A drop-in for Pytorch-PCGrad (github.com/WeiChengTseng/Pytorch-PCGrad, ``pcgrad.py``):

    from fastmtl.compat.pcgrad import PCGrad     # instead of: from pcgrad import PCGrad
    optimizer = PCGrad(torch.optim.Adam(net.parameters()))
    optimizer.zero_grad()
    optimizer.pc_backward([loss1, loss2])
    optimizer.step()

PCGrad (Yu, Kumar, Gupta, Levine, Hausman & Finn 2020, "Gradient Surgery for Multi-Task
Learning", Alg. 1): each task gradient g_i, over every parameter of the optimizer, meets the
original gradients g_j in a random order and loses its component along g_j whenever it conflicts:
    g_iᴾᶜ -= (g_iᴾᶜ·g_j / |g_j|²) g_j   if g_iᴾᶜ·g_j < 0.
The projections are computed exactly in Gram space by fastmtl (K = G Gᵀ, PCGrad's task weights w
from K, then w · G: one pass over G for K, one for the combination) instead of T² passes over G.

The merge is Pytorch-PCGrad's: a parameter that every objective reaches ("shared": its gradient
is not None after each objective's backward) gets the mean of the projected gradients
(``reduction="mean"``, the default) or their sum (``"sum"``); a parameter that only some reach
(a task head) gets their sum; one that none reach gets a zero gradient (not None), as there.

Task order: as Pytorch-PCGrad, a list of the tasks is shuffled in place with Python's ``random``
before each task's projections (each shuffle starts from the previous order), so after the same
``random.seed`` both draw the same orders. ``generator=`` (a ``torch.Generator``) draws the orders
with torch on the gradients' device instead (fastmtl's ``pcgrad_order``); ``shuffle=False`` uses
the index order (the paper's official TensorFlow code never shuffles).

Differences from Pytorch-PCGrad: its ``reduction="sum"`` is unreachable (any non-empty string
takes the mean branch) and an unknown reduction is not reported; here "sum" sums and anything but
"mean" / "sum" raises ValueError. The per-task gradients come from ``torch.autograd.grad`` (the
graph retained, as there) rather than from T backward passes into ``.grad``, so gradients already
in ``.grad`` before ``pc_backward`` are replaced, as there; tensors outside the optimizer get no
gradient (there, each objective's ``backward`` leaves them Σ_t of theirs). A task is not projected
onto its own gradient (the paper's j ≠ i); Pytorch-PCGrad's loop includes it, which matters only
once an earlier projection has made g_iᴾᶜ · g_i < 0 (T >= 3, rare). Otherwise the result equals
its loop up to floating-point rounding (the Gram-space form accumulates in float64 for float32
gradients).
"""

from __future__ import annotations

import random

import torch

from fastmtl import functional

_REDUCTIONS = ("mean", "sum")


class PCGrad:
    """Wraps ``optimizer`` (any ``torch.optim.Optimizer``); see the module docstring."""

    def __init__(self, optimizer: torch.optim.Optimizer, reduction: str = "mean", *, shuffle: bool = True,
                 generator: torch.Generator | None = None, impl: str = "auto"):
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"PCGrad: optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if reduction not in _REDUCTIONS:
            raise ValueError(f"PCGrad: reduction must be 'mean' or 'sum', got {reduction!r}")
        if not isinstance(shuffle, bool):
            raise TypeError(f"PCGrad: shuffle must be a bool, got {type(shuffle).__name__}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"PCGrad: generator must be a torch.Generator or None, got {type(generator).__name__}")
        self._optim, self._reduction = optimizer, reduction
        self._shuffle, self._generator, self._impl = shuffle, generator, impl

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self._optim

    def zero_grad(self):
        return self._optim.zero_grad(set_to_none=True)

    def step(self):
        return self._optim.step()

    def _params(self) -> list[torch.Tensor]:
        return [p for group in self._optim.param_groups for p in group["params"]]

    def pc_backward(self, objectives) -> None:
        """Sets ``.grad`` of every parameter of the optimizer to the PCGrad merge of the
        objectives' gradients (see the module docstring)."""
        objectives = list(objectives)
        if not objectives:
            raise ValueError("PCGrad.pc_backward: objectives must hold at least one scalar loss")
        params = self._params()
        trainable = [i for i, p in enumerate(params) if p.requires_grad]
        if not params:
            raise ValueError("PCGrad.pc_backward: the optimizer holds no parameters")
        dtype = params[0].dtype
        for p in params[1:]:
            dtype = torch.promote_types(dtype, p.dtype)
        device = params[0].device
        sizes = [p.numel() for p in params]
        offsets = [0]
        for size in sizes:
            offsets.append(offsets[-1] + size)
        T = len(objectives)
        G = torch.zeros((T, offsets[-1]), dtype=dtype, device=device)
        reached = torch.zeros((T, len(params)), dtype=torch.bool)  # host flags: which graph reaches which parameter
        for t, objective in enumerate(objectives):
            grads = torch.autograd.grad(objective, [params[i] for i in trainable], retain_graph=True,
                                        allow_unused=True) if trainable else ()
            for i, grad in zip(trainable, grads):
                if grad is not None:
                    G[t, offsets[i]:offsets[i + 1]] = grad.reshape(-1)
                    reached[t, i] = True
        merged = functional.combine(G, self._task_weights(G), impl=self._impl)
        shared = reached.all(0)
        for i, p in enumerate(params):
            grad = merged[offsets[i]:offsets[i + 1]].view(p.shape)
            if shared[i] and self._reduction == "mean":
                grad = grad / T
            p.grad = grad.to(p.dtype).clone()

    def _task_weights(self, G: torch.Tensor) -> torch.Tensor:
        """PCGrad's weights w (Σ_i g_iᴾᶜ = w · G), with this object's task order."""
        T = G.shape[0]
        K = functional.gram_for_weights(G, impl=self._impl)
        if not self._shuffle:
            order = None
        elif self._generator is not None:
            order = functional.pcgrad_order(T, shuffle=True, generator=self._generator, device=K.device)
        else:
            # Pytorch-PCGrad's draws: one in-place shuffle of the task list before each task.
            tasks, rows = list(range(T)), []
            for _ in range(T):
                random.shuffle(tasks)
                rows.append(list(tasks))
            order = torch.tensor(rows, dtype=torch.int64).to(K.device)
        return functional.pcgrad_weights(K, order, impl=self._impl)


__all__ = ["PCGrad"]
