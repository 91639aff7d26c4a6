"""The demo on several processes: ``torchrun --nproc-per-node N -m fastmtl demo``.

torchrun starts N copies of the command with WORLD_SIZE, RANK, LOCAL_RANK (and the rendezvous
address) in the environment. ``session`` turns that into a default process group (gloo on the
CPU, nccl with CUDA, one GPU per local rank) for the length of the run, and into nothing at all
when the command runs alone, so the demo has one code path.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Session:
    """Where this process trains: ``group`` is None when it runs alone."""

    rank: int
    size: int
    device: torch.device
    backend: str | None
    group: object | None

    @property
    def lead(self) -> bool:
        """Rank 0 alone evaluates, prints and writes files (every rank holds the same parameters)."""
        return self.rank == 0


def launched_processes() -> int:
    """The number of processes torchrun (or any env:// launcher) started; 1 when run alone."""
    return int(os.environ.get("WORLD_SIZE", "1"))


@contextmanager
def session(device: str = "cpu"):
    """Yields the Session; under a launcher, with the default process group initialised from the
    environment and destroyed at the end (after a barrier, so no rank tears the backend down while
    another still talks to it)."""
    size = launched_processes()
    cuda = torch.device(device).type == "cuda"
    if size <= 1:
        yield Session(0, 1, torch.device(device), None, None)
        return
    if not dist.is_available():
        raise RuntimeError(f"WORLD_SIZE={size} but this torch build has no torch.distributed")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        # One GPU per process: NCCL needs each rank on its own device, set before the first collective.
        torch.cuda.set_device(local_rank)
        here = torch.device("cuda", local_rank)
    else:
        here = torch.device("cpu")
    backend = "nccl" if cuda else "gloo"
    dist.init_process_group(backend, **({"device_id": here} if cuda else {}))
    try:
        yield Session(dist.get_rank(), dist.get_world_size(), here, backend, dist.group.WORLD)
        dist.barrier(**({"device_ids": [local_rank]} if cuda else {}))
    finally:
        dist.destroy_process_group()


def shard(rank: int, size: int, batch: int) -> slice:
    """This rank's equal part of a global batch of ``batch`` rows (rank r takes the r-th block, so
    the ranks' blocks in rank order are the global batch)."""
    if batch % size:
        raise ValueError(f"--batch {batch} is not a multiple of the {size} processes: the shards must be equal "
                         "for the mean of the shard gradients to be the whole batch's gradient")
    part = batch // size
    return slice(rank * part, (rank + 1) * part)


def average_gradients(parameters, group) -> None:
    """Replaces every ``.grad`` by its mean over the processes: one all-reduce of all gradients in
    one flat buffer (one message instead of one per tensor), a sum, then a division by N: the
    arithmetic MTLOptimizer uses (it sends one message per tensor), so the plain and the surgery
    runs average the same way."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, group=group)
    flat.div_(dist.get_world_size(group))
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_parameters(parameters, group) -> None:
    """Every rank starts from rank 0's values (they are equal already when every rank seeds alike;
    this makes it so whatever the seeding, as MTLOptimizer does for its parameters)."""
    source = dist.get_global_rank(group, 0)
    for p in parameters:
        dist.broadcast(p.detach(), src=source, group=group)
