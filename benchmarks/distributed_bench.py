"""Bytes sent and step time per process for multi-task training on N processes: plain DDP on the
summed loss vs MTLOptimizer(process_group=...) (exact per-task surgery), CPU, gloo.

    PYTHONPATH=python python benchmarks/distributed_bench.py [--tasks 2,4,8] [--json PATH]

Each scheme trains a shared MLP encoder (in -> width -> width, ReLU) with one linear head per task
on N spawned processes (FileStore rendezvous, one thread each), each with its shard of the batch:

* ddp: DistributedDataParallel on the summed loss, one backward per step;
* fastmtl-full: MTLOptimizer "pcgrad" with process_group (every task's gradient rows all-reduced);
* fastmtl-sharded: the same with reduce="sharded", when this MTLOptimizer has that option.

Bytes are counted, not estimated: DDP's buckets through a communication hook (the default
all-reduce hook, after adding up each bucket's size), fastmtl's collectives through thin wrappers
around torch.distributed.all_reduce / reduce_scatter_tensor / all_gather_into_tensor, switched on
only inside the timed steps (the construction's broadcasts are not per step). "payload" is the
size of the tensors handed to the collectives; "sent" converts it to what one rank sends in a ring
(all-reduce of S bytes: 2(N-1)/N·S; reduce-scatter of an S-byte input and all-gather of an S-byte
output: (N-1)/N·S), which the formula columns predict from P (shared parameters) alone:
DDP 2(N-1)/N·P, full 2(N-1)/N·T·P, sharded (N-1)/N·(T+1)·P, each plus 2(N-1)/N·P_heads for the
heads' gradients (plain in every scheme). Step time: the median over the timed steps of rank 0's
wall time for zero_grad, forward, backward and optimizer step, the ranks aligned by a barrier
(off the clock) before each step.
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import json
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import fastmtl

FLOAT_BYTES = 4  # float32 gradients


def has_sharded() -> bool:
    return "reduce" in inspect.signature(fastmtl.MTLOptimizer).parameters


def schemes() -> list[str]:
    return ["ddp", "fastmtl-full"] + (["fastmtl-sharded"] if has_sharded() else [])


class Model(torch.nn.Module):
    def __init__(self, features: int, width: int, tasks: int):
        super().__init__()
        self.encoder = torch.nn.Sequential(torch.nn.Linear(features, width), torch.nn.ReLU(),
                                           torch.nn.Linear(width, width), torch.nn.ReLU())
        self.heads = torch.nn.ModuleList(torch.nn.Linear(width, 1) for _ in range(tasks))

    def forward(self, x):
        z = self.encoder(x)
        return [head(z).squeeze(1) for head in self.heads]


class Counter:
    """Bytes handed to collectives while ``on``, by kind ("all_reduce", "reduce_scatter", "all_gather")."""

    def __init__(self):
        self.on = False
        self.bytes = {"all_reduce": 0, "reduce_scatter": 0, "all_gather": 0}

    def add(self, kind: str, tensor: torch.Tensor) -> None:
        if self.on:
            self.bytes[kind] += tensor.numel() * tensor.element_size()

    def sent(self, size: int) -> float:
        """What one rank sends in ring collectives for the counted payloads."""
        ring = (size - 1) / size
        return 2 * ring * self.bytes["all_reduce"] + ring * (self.bytes["reduce_scatter"] + self.bytes["all_gather"])


def wrap_collectives(counter: Counter) -> None:
    """Counts the tensors passed to torch.distributed's collectives (fastmtl calls them through the
    module, so replacing the module's functions sees every call) and then runs the original."""
    all_reduce, reduce_scatter, all_gather = dist.all_reduce, dist.reduce_scatter_tensor, dist.all_gather_into_tensor

    def counted_all_reduce(tensor, *args, **kwargs):
        counter.add("all_reduce", tensor)
        return all_reduce(tensor, *args, **kwargs)

    def counted_reduce_scatter(output, input, *args, **kwargs):
        counter.add("reduce_scatter", input)
        return reduce_scatter(output, input, *args, **kwargs)

    def counted_all_gather(output, input, *args, **kwargs):
        counter.add("all_gather", output)
        return all_gather(output, input, *args, **kwargs)

    dist.all_reduce, dist.reduce_scatter_tensor, dist.all_gather_into_tensor = (
        counted_all_reduce, counted_reduce_scatter, counted_all_gather)


def ddp_counting_hook(counter: Counter, bucket):
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    counter.add("all_reduce", bucket.buffer())  # the flat bucket DDP all-reduces
    # The default hook calls torch.distributed.all_reduce, which the wrapper would count again.
    on, counter.on = counter.on, False
    try:
        return default_hooks.allreduce_hook(None, bucket)
    finally:
        counter.on = on


def run_scheme(scheme: str, tasks: int, args, counter: Counter) -> dict:
    rank, size = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = Model(args.features, args.width, tasks)
    shared = sum(p.numel() for p in model.encoder.parameters())
    heads = sum(p.numel() for p in model.heads.parameters())
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, args.features, generator=gen)
    y = torch.randn(args.batch, tasks, generator=gen)
    part = args.batch // size
    x, y = x[rank * part:(rank + 1) * part], y[rank * part:(rank + 1) * part]
    if scheme == "ddp":
        net = torch.nn.parallel.DistributedDataParallel(model)
        net.register_comm_hook(counter, ddp_counting_hook)
        sgd = torch.optim.SGD(net.parameters(), lr=1e-3)

        def step():
            sgd.zero_grad()
            sum((out - y[:, t]).pow(2).mean() for t, out in enumerate(net(x))).backward()
            sgd.step()
    else:
        extra = {"reduce": "sharded"} if scheme == "fastmtl-sharded" else {}
        opt = fastmtl.MTLOptimizer(torch.optim.SGD(model.parameters(), lr=1e-3), "pcgrad",
                                   shared=model.encoder.parameters(), process_group=dist.group.WORLD, **extra)

        def step():
            opt.zero_grad()
            opt.backward([(out - y[:, t]).pow(2).mean() for t, out in enumerate(model(x))])
            opt.step()
    for _ in range(args.warmup):
        step()
    counter.bytes = dict.fromkeys(counter.bytes, 0)
    seconds = []
    for _ in range(args.steps):
        dist.barrier()  # every rank starts the step together: the time is the step's, not a straggler's
        counter.on = True
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
        counter.on = False
    ring = (size - 1) / size
    formula_shared = {"ddp": 2 * ring * shared, "fastmtl-full": 2 * ring * tasks * shared,
                      "fastmtl-sharded": ring * (tasks + 1) * shared}[scheme]
    return {
        "scheme": scheme, "tasks": tasks, "processes": size, "shared_params": shared, "head_params": heads,
        "ms_per_step": 1e3 * statistics.median(seconds),
        "payload_bytes_per_step": sum(counter.bytes.values()) / args.steps,
        "payload_by_kind": {k: v / args.steps for k, v in counter.bytes.items()},
        "sent_bytes_per_rank_per_step": counter.sent(size) / args.steps,
        "formula_bytes_per_rank_per_step": FLOAT_BYTES * (formula_shared + 2 * ring * heads),
        "formula_shared_only_bytes": FLOAT_BYTES * formula_shared,
    }


def worker(rank: int, size: int, store_path: str, results_path: str, args) -> None:
    torch.set_num_threads(1)  # N processes on a few cores: one thread each, no oversubscription
    torch.set_flush_denormal(True)
    dist.init_process_group("gloo", store=dist.FileStore(store_path, size), rank=rank, world_size=size,
                            timeout=datetime.timedelta(seconds=300))
    counter = Counter()
    wrap_collectives(counter)
    rows = [run_scheme(scheme, tasks, args, counter) for tasks in args.tasks for scheme in schemes()]
    if rank == 0:
        with open(results_path, "w") as file:
            json.dump(rows, file)
    dist.barrier()
    dist.destroy_process_group()


def table(rows: list[dict]) -> str:
    mb = 1e-6
    lines = ["| T | scheme | P shared | P heads | ms/step (median) | payload MB/step | sent MB/rank/step (measured) "
             "| formula MB/rank/step (+heads) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['tasks']} | {r['scheme']} | {r['shared_params']:,} | {r['head_params']:,} | "
                     f"{r['ms_per_step']:.1f} | {r['payload_bytes_per_step'] * mb:.3f} | "
                     f"{r['sent_bytes_per_rank_per_step'] * mb:.3f} | {r['formula_bytes_per_rank_per_step'] * mb:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="2,4,8", help="comma-separated task counts")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--features", type=int, default=256)
    parser.add_argument("--batch", type=int, default=256, help="global batch (split equally over the processes)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per scheme")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--json", help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    args.tasks = [int(t) for t in args.tasks.split(",")]
    if args.batch % args.processes:
        parser.error("--batch must be a multiple of --processes (equal shards)")
    with tempfile.TemporaryDirectory() as folder:
        store, results = os.path.join(folder, "store"), os.path.join(folder, "rows.json")
        mp.start_processes(worker, args=(args.processes, store, results, args), nprocs=args.processes,
                           start_method="spawn")
        with open(results) as file:
            rows = json.load(file)
    print(f"N = {args.processes} processes (gloo, CPU, 1 thread each), global batch {args.batch}, "
          f"MLP {args.features}->{args.width}->{args.width}, pcgrad, float32; torch {torch.__version__}, "
          f"fastmtl {fastmtl.__version__}, {os.cpu_count()} CPUs, sharded scheme: {has_sharded()}\n")
    print(table(rows))
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"args": {k: v for k, v in vars(args).items() if k != "json"}, "rows": rows}, file, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
