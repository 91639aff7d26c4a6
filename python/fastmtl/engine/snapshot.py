"""All or nothing for ``.grad``: a backward that fails half-way (a method raising on bad
gradients, a loss that cannot be differentiated) must not leave a task's raw gradient in
``.grad`` for the next ``step()`` to apply.

Before the passes every trainable parameter's ``.grad`` is set aside and set to None, so the
passes write only fresh tensors. On success the set-aside gradients are added back (so
``backward`` accumulates like ``loss.backward()``); on failure they are put back as they were.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


class GradSnapshot:
    def __init__(self, shared: list[torch.nn.Parameter], others: list[torch.nn.Parameter]):
        # A shared gradient may view the engine's combined buffer, which this backward
        # overwrites: keep a copy. The others are only set aside (nothing writes into them).
        self.saved = [(p, None if p.grad is None else p.grad.clone()) for p in shared]
        self.saved += [(p, p.grad) for p in others]
        for p, _ in self.saved:
            p.grad = None

    def restore(self) -> None:
        for p, grad in self.saved:
            p.grad = grad

    def commit(self) -> None:
        for p, grad in self.saved:
            if grad is not None:
                p.grad = grad if p.grad is None else p.grad + grad


@contextmanager
def all_or_nothing(shared: list[torch.nn.Parameter], others: list[torch.nn.Parameter]):
    snapshot = GradSnapshot(shared, others)
    try:
        yield
    except BaseException:
        snapshot.restore()
        raise
    snapshot.commit()
