"""Where the per-task gradient matrices G come from, and where the combined gradients go.

A source ``collect``s one ``TaskMatrix`` per group from the task losses and later ``write``s
each group's combined gradient back. Parameter level: one backward pass per task, each writing
its gradient straight into the group's buffer row (``.grad`` views). Feature level: per-task
gradients of a shared representation z, and one backward of the combined gradient through the
encoder. With a process group (``engine.distributed``), the parameter-level source averages each
task's rows over the processes as soon as its pass ends, and the heads' gradients at the end.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fastmtl.engine.distributed import ProcessAverage
from fastmtl.engine.groups import SharedGroup, point_grads_at


@dataclass
class TaskMatrix:
    group: SharedGroup
    params: list  # the trainable parameters G's columns belong to (empty at the feature level)
    G: torch.Tensor  # [tasks of the group, P]
    signs: torch.Tensor | None = None  # feature level: the activation, for element-wise methods
    batch: int | None = None  # feature level: the batch size (G's columns are batch-major)
    partial: bool = False  # G holds this rank's columns of the whole G (its Gram matrix is summed over the ranks)
    column_offset: int | None = None  # the sharded reduction: the first of those columns


class ParameterGradients:
    """Per-task gradients of the groups' parameters. ``heads``: the other trainable parameters
    of the optimizer; they get the plain gradients of the losses that reach them. With heads
    given (None: a plain ``loss.backward()`` per task), each pass is restricted to them and to
    the groups of its task, so only parameters the optimizer holds receive gradients, on every
    kind of step. ``average``: the processes to average G's rows and the heads' gradients over
    (None: this process alone)."""

    def __init__(self, groups: list[SharedGroup], heads: list[torch.nn.Parameter] | None,
                 average: ProcessAverage | None = None):
        self.groups, self.heads, self.average = groups, heads, average

    def collect(self, losses: list[torch.Tensor]) -> list[TaskMatrix]:
        T = len(losses)
        sharded = self.average is not None and self.average.reduce == "sharded"
        matrices, full_rows = [], []
        for group in self.groups:
            params = group.trainable()
            if params:  # a group frozen as a whole takes no part
                tasks = len(group.task_indices(T))
                rows = group.rows(tasks, params, self.average.size if sharded else 1)
                full_rows.append(rows)
                if sharded:  # this rank's columns of the averaged rows, filled by reduce-scatter
                    width = group.buffer.shape[1] // self.average.size
                    shard = rows.new_empty(tasks, width)
                    matrices.append(TaskMatrix(group, params, shard, partial=True,
                                               column_offset=self.average.rank * width))
                else:
                    matrices.append(TaskMatrix(group, params, rows))
        row_of = [{t: r for r, t in enumerate(m.group.task_indices(T))} for m in matrices]
        try:
            for t, loss in enumerate(losses):
                inputs = [] if self.heads is None else list(self.heads)
                for matrix, full, rows in zip(matrices, full_rows, row_of):
                    if t in rows:  # a group that task t does not share never sees its gradient
                        point_grads_at(matrix.params, full[rows[t]])
                        inputs += matrix.params
                retain = t < T - 1
                if self.heads is None:
                    loss.backward(retain_graph=retain)
                elif inputs:
                    loss.backward(retain_graph=retain, inputs=inputs)
                if self.average is not None:  # task t's rows are complete: overlap their sum with the next pass
                    for matrix, rows in zip(matrices, row_of):
                        if t not in rows:
                            continue
                        if sharded:
                            self.average.start_scatter(matrix.group.buffer[rows[t]], matrix.G[rows[t]])
                        else:
                            self.average.start(matrix.G[rows[t]])
        except BaseException:
            if self.average is not None:
                self.average.cancel()
            raise
        if self.average is not None:
            self.average.finish()
            self.average.average_grads_(self.heads or [])
        return matrices

    def write(self, matrix: TaskMatrix, combined: torch.Tensor) -> None:
        point_grads_at(matrix.params, combined)


class FsdpGradients:
    """Per-task gradients of shared parameters sharded by FSDP2 (``fully_shard``: DTensor
    parameters). Each task's plain backward pass lets FSDP2 reduce-scatter (and average) its
    gradient into every rank's shard of each parameter; the engine copies the local shards into a
    row of this rank's G [T, P_local] (the zero-copy row views do not apply to DTensor gradients)
    and clears them for the next pass. G holds this rank's columns of the whole G (``partial``:
    its Gram matrix is summed over the ranks); the combined gradient's local part is written back
    as each parameter's DTensor gradient. The heads get the sum of the tasks' gradients (FSDP2
    averages the ones it shards; plain ones are averaged over ``average``)."""

    def __init__(self, group: SharedGroup, heads: list[torch.nn.Parameter], average: ProcessAverage):
        self.group, self.heads, self.average = group, heads, average

    def collect(self, losses: list[torch.Tensor]) -> list[TaskMatrix]:
        params = self.group.trainable()
        if not params:
            return []
        sizes = [p.to_local().numel() for p in params]
        G = torch.zeros(len(losses), sum(sizes), dtype=params[0].dtype, device=params[0].to_local().device)
        for t, loss in enumerate(losses):
            for p in params:
                p.grad = None
            # A plain backward: FSDP2's hooks do not run for backward(inputs=...).
            loss.backward(retain_graph=t < len(losses) - 1)
            for p, row in zip(params, G[t].split(sizes)):
                if p.grad is not None:  # None: the task does not reach it (zeros)
                    row.copy_(p.grad.to_local().reshape(-1))
        for p in params:
            p.grad = None
        self.average.average_grads_([p for p in self.heads if not _is_dtensor(p)])  # FSDP2 averages its own
        return [TaskMatrix(self.group, [], G, partial=True)]

    def write(self, matrix: TaskMatrix, combined: torch.Tensor) -> None:
        from torch.distributed.tensor import DTensor

        params = self.group.trainable()
        sizes = [p.to_local().numel() for p in params]
        for p, part in zip(params, combined.split(sizes)):
            local = part.view(p.to_local().shape).to(p.dtype)
            p.grad = DTensor.from_local(local, p.device_mesh, p.placements, shape=p.shape, stride=p.stride())


def _is_dtensor(tensor) -> bool:
    return type(tensor).__name__ == "DTensor" and hasattr(tensor, "to_local")


def sharded_by_fsdp(params) -> bool:
    """Whether the parameters are FSDP2's (DTensor) shards."""
    return any(_is_dtensor(p) for p in params)


class FeatureGradients:
    """Per-task gradients of the representation z handed to ``MTLOptimizer.features``: the
    heads run on ``leaf`` (z detached), so each task's pass stops there.

    With ``average`` (processes, each with its shard of the batch and mean losses): the whole
    batch's feature-gradient matrix is the ranks' matrices side by side, each divided by N (a
    rank's mean loss weighs its samples N times more than the whole batch's). So this rank's G is
    divided by N and marked as its columns of the whole G (``partial``: its Gram matrix is
    summed over the ranks before the weights); the encoder gradient its combined gradient yields is
    then summed over the ranks, and the heads' gradients averaged."""

    def __init__(self, group: SharedGroup, representation: torch.Tensor, leaf: torch.Tensor,
                 heads: list[torch.nn.Parameter] | None = None, average: ProcessAverage | None = None):
        self.group, self.representation, self.leaf = group, representation, leaf
        self.heads, self.average = heads or [], average

    def collect(self, losses: list[torch.Tensor]) -> list[TaskMatrix]:
        T, leaf = len(losses), self.leaf
        G = torch.zeros(T, leaf.numel(), dtype=leaf.dtype, device=leaf.device)
        reached = []
        handles = [leaf.register_hook(lambda grad: reached.append(True)),  # a pass reached the leaf
                   self.representation.register_hook(_reads_z_itself)]
        try:
            for t, loss in enumerate(losses):
                leaf.grad = G[t].view_as(leaf)
                loss.backward(retain_graph=t < T - 1)
        finally:
            for handle in handles:
                handle.remove()
            leaf.grad = None
        if not reached:
            raise ValueError("no loss uses the tensor returned by opt.features(z): feed the heads with that tensor, "
                             "not with z itself (else the per-task gradients never reach the representation)")
        z = self.representation
        signs = z.detach().reshape(-1).to(leaf.dtype)
        if self.average is not None:
            G.div_(self.average.size)
            self.average.average_grads_(self.heads)
        return [TaskMatrix(self.group, [], G, signs=signs, batch=z.shape[0] if z.dim() > 1 else 1,
                           partial=self.average is not None)]

    def write(self, matrix: TaskMatrix, combined: torch.Tensor) -> None:
        self.representation.backward(combined.view_as(self.representation).to(self.representation.dtype))
        if self.average is not None:  # each rank back-propagated its samples' share: the sum is the whole batch's
            self.average.average_grads_(self.group.trainable(), op="sum")


def _reads_z_itself(grad):
    """A task's pass reached z by another way than the leaf: its raw gradient would flow into
    the encoder next to the combined one."""
    raise ValueError("a loss uses the representation z itself: in feature mode feed every head with the tensor "
                     "returned by opt.features(z)")
