"""Averaging across processes (torch.distributed): what MTLOptimizer runs between collect and
write when it is given a process group.

Training on N processes, each with an equal shard of the batch and mean losses, must equal one
process on the whole batch. The whole batch's task gradient is the mean of the shards' task
gradients, so each group's per-task matrix G is averaged over the processes before its Gram
matrix, weights and combination: every rank then holds the same G, computes the same weights and
writes the same update (bit for bit: the same kernels on the same numbers). The heads' plain
gradients are averaged too. Each task's rows are all-reduced as soon as its backward pass ends,
asynchronously, so the communication overlaps the next task's pass.

Two reductions (``reduce``):

* "full": each row is all-reduced, every rank then weights and combines the whole G. Ring volume
  per rank and step: 2(N-1)/N · T · P for the shared parameters (plain DDP: 2(N-1)/N · P).
* "sharded": each row is reduce-scattered, so rank r holds columns [r·C, (r+1)·C) of the averaged
  G (C = ceil(P / N); the last shard is zero-padded); K is the sum of the ranks' local Gram
  matrices (a T × T all-reduce), the weights are computed from it on every rank, each rank
  combines its columns, and an all-gather assembles the update: (N-1)/N · (T+1) · P per rank,
  and each rank's Gram and combine passes read P / N columns instead of P. Element-wise methods
  (GradDrop) work on the shard with its column offset, so they draw the unsharded masks.
"""

from __future__ import annotations

import hashlib

import torch
import torch.distributed as dist


REDUCTIONS = ("full", "sharded")


class ProcessAverage:
    """Averages tensors over the processes of ``process_group`` (a ProcessGroup, or
    ``torch.distributed.group.WORLD``); the default process group must be initialised.
    ``reduce``: "full" or "sharded" (module docstring)."""

    def __init__(self, process_group, reduce: str = "full"):
        if reduce not in REDUCTIONS:
            raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("process_group: torch.distributed is not initialised (call "
                               "torch.distributed.init_process_group first, e.g. under torchrun; until then "
                               "torch.distributed.group.WORLD is None)")
        if process_group is None or isinstance(process_group, (str, int)):
            raise TypeError("process_group must be a torch.distributed ProcessGroup (or "
                            f"torch.distributed.group.WORLD), got {process_group!r}")
        self.group, self.reduce = process_group, reduce
        self.size = dist.get_world_size(process_group)
        self.rank = dist.get_rank(process_group)
        if self.rank < 0:
            raise ValueError("process_group: this process is not a member of that group")
        self.source = dist.get_global_rank(process_group, 0)  # the global rank of the group's rank 0
        self._pending: list = []  # (work, tensor) of asynchronous all-reduces not yet waited for

    def broadcast_(self, tensors) -> None:
        """Every tensor takes the value it has on the group's rank 0."""
        for tensor in tensors:
            dist.broadcast(tensor, src=self.source, group=self.group)

    def check_fsdp_mesh(self, params) -> None:
        """FSDP2 parameters must be sharded over exactly this group (a 1-D mesh): with replicas
        (HSDP) or another group, summing the ranks' Gram matrices would count columns twice."""
        ranks = dist.get_process_group_ranks(self.group)
        for p in params:
            mesh = getattr(p, "device_mesh", None)
            if mesh is None:
                continue
            if mesh.ndim != 1 or dist.get_process_group_ranks(mesh.get_group()) != ranks:
                raise ValueError("FSDP2-sharded shared parameters must be sharded over a 1-D mesh of exactly the "
                                 "process_group's ranks (HSDP or another group is not supported)")

    def start(self, tensor: torch.Tensor) -> None:
        """Starts summing ``tensor`` over the processes in place (see ``finish``)."""
        self._pending.append((dist.all_reduce(tensor, group=self.group, async_op=True), tensor))

    def finish(self) -> None:
        """Waits for the started sums and divides them by the number of processes."""
        pending, self._pending = self._pending, []
        for work, tensor in pending:
            work.wait()
            tensor.div_(self.size)

    def cancel(self) -> None:
        """Waits for the started sums and drops them (a failed backward: nothing is written)."""
        pending, self._pending = self._pending, []
        for work, _ in pending:
            work.wait()

    def start_scatter(self, row: torch.Tensor, shard: torch.Tensor) -> None:
        """Starts summing the padded ``row`` [N · C] over the processes into this rank's ``shard``
        [C] (columns rank · C ...); ``finish`` divides it by N."""
        self._pending.append((dist.reduce_scatter_tensor(shard, row, group=self.group, async_op=True), shard))

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(tensor, group=self.group)
        return tensor

    def gather(self, shard: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The ranks' shards [C] laid end to end, cut to ``out``'s length and written there."""
        whole = shard.new_empty(shard.numel() * self.size)
        dist.all_gather_into_tensor(whole, shard.contiguous(), group=self.group)
        return out.copy_(whole[:out.numel()])

    def average_(self, tensors) -> None:
        for tensor in tensors:
            self.start(tensor)
        self.finish()

    def average_grads_(self, params, op: str = "mean") -> None:
        """Averages (``op="sum"``: sums) the ``.grad`` of ``params`` over the processes. A None
        gradient counts as zeros (and becomes them): a task may reach a head on one shard and not
        on another, and every rank must run the same collectives. (Telling "None on every rank"
        apart would need a host read of the ranks' flags: a sync per step on a GPU.)"""
        grads = []
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        if op == "sum":
            for grad in grads:
                self.sum_(grad)
        else:
            self.average_(grads)

    def shared_seed(self, device: torch.device) -> int:
        """A random 63-bit seed drawn on rank 0, the same on every rank (exchanged on ``device``,
        the parameters': an NCCL group serves CUDA tensors only)."""
        seed = torch.randint(0, 2**63 - 1, (1,), dtype=torch.int64).to(device)
        dist.broadcast(seed, src=self.source, group=self.group)
        return int(seed)

    def check_same(self, data: bytes, what: str, device: torch.device,
                   advice: str = "every rank must draw the same random numbers (seed it identically on every "
                                 "rank, or leave it to the optimizer)") -> None:
        """Raises unless ``data`` is the same on every rank (compared by a SHA-256 digest, on
        ``device``), on every rank alike; ``advice`` ends the message."""
        digest = torch.frombuffer(bytearray(hashlib.sha256(data).digest()), dtype=torch.uint8).to(torch.int64)
        low, high = digest.to(device).clone(), digest.to(device).clone()  # two tensors (to() may not copy)
        dist.all_reduce(low, op=dist.ReduceOp.MIN, group=self.group)
        dist.all_reduce(high, op=dist.ReduceOp.MAX, group=self.group)
        if not torch.equal(low, high):
            raise ValueError(f"{what} differs between the processes: {advice}")
