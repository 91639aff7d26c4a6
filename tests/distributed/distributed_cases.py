"""The cases of tests/distributed/test_process_group.py, run inside each spawned rank (gloo,
FileStore rendezvous, one thread). Every rank trains on its shard of one batch with
MTLOptimizer(process_group=WORLD) and, on the whole batch, the same model with a single-process
MTLOptimizer; rank 0 records per case the largest relative difference between the two and
whether every rank holds the same parameters bit for bit."""

from __future__ import annotations

import datetime
import json
import traceback

import torch
import torch.distributed as dist

import fastmtl

BATCH, FEATURES, TASKS, STEPS = 12, 6, 3, 3  # 12 samples: equal shards for 2 and 3 ranks

# name -> MTLOptimizer keyword arguments; a "generator" entry is replaced by a seeded generator.
CASES = {
    **{f"full-{method}": {"method": method} for method in
       ("sum", "mean", "pcgrad", "mgda", "upgrad", "dualproj", "imtl_g", "aligned_mtl", "nash_mtl", "cagrad",
        "gradvac", "graddrop")},
    "full-pcgrad-own-generator": {"method": "pcgrad", "generator": "seeded"},
    "full-graddrop-leak": {"method": "graddrop", "leak": 0.3},
    "every2-pcgrad": {"method": "pcgrad", "every": 2},
    "every2-mgda": {"method": "mgda", "every": 2},
    "two-groups": {"groups": True},
    "full-nash_mtl-grad-scaler": {"method": "nash_mtl", "scaler": True},  # K unscaled: Nash-MTL is not scale-linear
    # The sharded reduction (P = 101 shared parameters: not a multiple of 2 or 3).
    **{f"sharded-{method}": {"method": method, "reduce": "sharded"} for method in
       ("pcgrad", "mgda", "nash_mtl", "upgrad", "graddrop")},
    "sharded-two-groups": {"groups": True, "reduce": "sharded"},
    "sharded-every2-mgda": {"method": "mgda", "every": 2, "reduce": "sharded"},
}


def model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    encoder = torch.nn.Sequential(torch.nn.Linear(FEATURES, 8), torch.nn.Tanh(), torch.nn.Linear(8, 5), torch.nn.Tanh())
    heads = torch.nn.ModuleList(torch.nn.Linear(5, 1) for _ in range(TASKS))
    return torch.nn.ModuleDict({"encoder": encoder, "heads": heads}).double()


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return (torch.randn(BATCH, FEATURES, generator=gen, dtype=torch.float64),
            torch.randn(BATCH, TASKS, generator=gen, dtype=torch.float64))


def losses(net, x, y) -> list[torch.Tensor]:
    z = net["encoder"](x)
    return [(head(z).squeeze(1) - y[:, t]).pow(2).mean() for t, head in enumerate(net["heads"])]


def optimizer(net, options: dict, process_group=None) -> fastmtl.MTLOptimizer:
    """The case's MTLOptimizer on ``process_group`` (None: this process alone)."""
    options = dict(options)
    options.pop("scaler", None)
    if process_group is not None:
        options["process_group"] = process_group
    else:
        options.pop("reduce", None)  # the single-process reference
    base = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    if options.pop("groups", False):  # the first layer shared by all, the second by tasks 0 and 2 only
        shared = [{"params": net["encoder"][0].parameters(), "method": "pcgrad"},
                  {"params": net["encoder"][2].parameters(), "tasks": [0, 2], "method": "mgda"}]
        return fastmtl.MTLOptimizer(base, "pcgrad", shared=shared, **options)
    if options.get("generator") == "seeded":
        options["generator"] = torch.Generator().manual_seed(7)
    return fastmtl.MTLOptimizer(base, shared=net["encoder"].parameters(), **options)


def train(net, opt, x, y, steps: int, scaler: bool = False) -> None:
    """SGD steps; with ``scaler``, through a GradScaler (a power-of-two scale: exact in float64)."""
    grad_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12) if scaler else None
    for _ in range(steps):
        opt.zero_grad()
        opt.backward(losses(net, x, y), scaler=grad_scaler)
        if grad_scaler is None:
            opt.step()
        else:
            grad_scaler.step(opt)
            grad_scaler.update()


def flat_parameters(net) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()])


def same_on_every_rank(tensor: torch.Tensor) -> bool:
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor)
    return all(torch.equal(other, tensor) for other in gathered)


def run_case(options: dict) -> dict:
    rank, size = dist.get_rank(), dist.get_world_size()
    x, y = batch()
    shard = slice(rank * BATCH // size, (rank + 1) * BATCH // size)
    net = model(seed=rank)  # different on each rank: the optimizer broadcasts rank 0's parameters
    opt = optimizer(net, options, dist.group.WORLD)
    reference = model(seed=0)
    reference_opt = optimizer(reference, options)
    if opt.generator is not None:  # the single process draws what the ranks draw, from one generator
        generator = torch.Generator()
        generator.set_state(opt.generator.get_state())
        for group in reference_opt.groups:
            if group.method.options.get("generator", 0) is None:
                group.method.options["generator"] = generator
    train(net, opt, x[shard], y[shard], STEPS, options.get("scaler", False))
    train(reference, reference_opt, x, y, STEPS, options.get("scaler", False))
    mine, expected = flat_parameters(net), flat_parameters(reference)
    return {"error": float((mine - expected).abs().max() / expected.abs().max()), "same": same_on_every_rank(mine)}


class Whole(torch.nn.Module):
    """The model as one module (DDP wraps a module with a forward): the heads' outputs."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        z = self.net["encoder"](x)
        return [head(z).squeeze(1) for head in self.net["heads"]]


def run_ddp(reduce: str) -> dict:
    """A DistributedDataParallel model as the process group, forward under no_sync()."""
    rank, size = dist.get_rank(), dist.get_world_size()
    x, y = batch()
    shard = slice(rank * BATCH // size, (rank + 1) * BATCH // size)
    net = model()
    ddp = torch.nn.parallel.DistributedDataParallel(Whole(net))
    opt = fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9), "mgda",
                               shared=net["encoder"].parameters(), process_group=ddp, reduce=reduce)
    for _ in range(STEPS):
        opt.zero_grad()
        with ddp.no_sync():
            outputs = ddp(x[shard])
            opt.backward([(out - y[shard, t]).pow(2).mean() for t, out in enumerate(outputs)])
        opt.step()
    reference = model()
    train(reference, optimizer(reference, {"method": "mgda"}), x, y, STEPS)
    mine, expected = flat_parameters(net), flat_parameters(reference)
    return {"error": float((mine - expected).abs().max() / expected.abs().max()), "same": same_on_every_rank(mine)}


def train_features(net, opt, x, y, steps: int) -> None:
    """Feature mode: per-task gradients of the encoder's output, aggregated there."""
    for _ in range(steps):
        opt.zero_grad()
        z = opt.features(net["encoder"](x))
        opt.backward([(head(z).squeeze(1) - y[:, t]).pow(2).mean() for t, head in enumerate(net["heads"])])
        opt.step()


def run_features(method: str) -> dict:
    rank, size = dist.get_rank(), dist.get_world_size()
    x, y = batch()
    shard = slice(rank * BATCH // size, (rank + 1) * BATCH // size)
    net, reference = model(), model()
    train_features(net, optimizer(net, {"method": method, "shuffle": False} if method == "pcgrad" else
                                  {"method": method}, dist.group.WORLD), x[shard], y[shard], STEPS)
    train_features(reference, optimizer(reference, {"method": method, "shuffle": False} if method == "pcgrad" else
                                        {"method": method}), x, y, STEPS)
    mine, expected = flat_parameters(net), flat_parameters(reference)
    return {"error": float((mine - expected).abs().max() / expected.abs().max()), "same": same_on_every_rank(mine)}


def run_fsdp(method: str) -> dict:
    """The encoder sharded by FSDP2 (fully_shard), plain heads."""
    from torch.distributed.fsdp import fully_shard

    rank, size = dist.get_rank(), dist.get_world_size()
    x, y = batch()
    shard = slice(rank * BATCH // size, (rank + 1) * BATCH // size)
    options = {"method": method, "shuffle": False} if method == "pcgrad" else {"method": method}  # one order
    net = model()
    fully_shard(net["encoder"])
    opt = optimizer(net, options, dist.group.WORLD)
    train(net, opt, x[shard], y[shard], STEPS)
    reference = model()
    train(reference, optimizer(reference, options), x, y, STEPS)
    with torch.no_grad():
        mine = torch.cat([(p.full_tensor() if hasattr(p, "full_tensor") else p).reshape(-1) for p in net.parameters()])
    expected = flat_parameters(reference)
    return {"error": float((mine - expected).abs().max() / expected.abs().max()), "same": same_on_every_rank(mine)}


def run_head_missing_on_one_rank() -> dict:
    """On rank 1 the last task's loss does not reach its head (e.g. no labels for it in that
    shard): every rank must still run the same collectives (no hang) and agree."""
    rank, size = dist.get_rank(), dist.get_world_size()
    x, y = batch()
    shard = slice(rank * BATCH // size, (rank + 1) * BATCH // size)
    net = model()
    opt = optimizer(net, {"method": "mgda"}, dist.group.WORLD)
    for _ in range(STEPS):
        opt.zero_grad()
        task_losses = losses(net, x[shard], y[shard])
        if rank == 1:
            task_losses[-1] = net["encoder"](x[shard]).sum() * 0.0
        opt.backward(task_losses)
        opt.step()
    return {"same": same_on_every_rank(flat_parameters(net))}


def run_resume() -> dict:
    """Two steps, a state_dict saved and loaded into a fresh model and optimizer, one more step:
    the same parameters as three steps in one go (GradVac: its targets and the optimizer's
    generator, which orders the tasks, must both be restored)."""
    rank, size = dist.get_rank(), dist.get_world_size()
    x, y = batch()
    shard = slice(rank * BATCH // size, (rank + 1) * BATCH // size)
    straight = model()
    straight_opt = optimizer(straight, {"method": "gradvac"}, dist.group.WORLD)
    train(straight, straight_opt, x[shard], y[shard], 3)
    first = model()
    first_opt = optimizer(first, {"method": "gradvac"}, dist.group.WORLD)
    train(first, first_opt, x[shard], y[shard], 2)
    saved = (first.state_dict(), first_opt.state_dict())
    resumed = model(seed=5)
    resumed_opt = optimizer(resumed, {"method": "gradvac"}, dist.group.WORLD)
    resumed.load_state_dict(saved[0])
    resumed_opt.load_state_dict(saved[1])
    train(resumed, resumed_opt, x[shard], y[shard], 1)
    mine, expected = flat_parameters(resumed), flat_parameters(straight)
    return {"error": float((mine - expected).abs().max() / expected.abs().max()), "same": same_on_every_rank(mine)}


def run_errors() -> dict:
    """The error cases: each must raise on every rank (so none is left waiting)."""
    raised = {}
    net = model()
    x, y = batch()
    try:  # a method generator in a different state on each rank
        fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "pcgrad", shared=net["encoder"].parameters(),
                             generator=torch.Generator().manual_seed(dist.get_rank()), process_group=dist.group.WORLD)
    except ValueError as error:
        raised["different generators"] = "differs between the processes" in str(error)
    opt = optimizer(net, {"method": "graddrop"}, dist.group.WORLD)
    try:
        z = opt.features(net["encoder"](x))
        opt.backward([(head(z).squeeze(1) - y[:, t]).pow(2).mean() for t, head in enumerate(net["heads"])])
    except ValueError as error:
        raised["element-wise feature mode"] = "needs a Gram-space method" in str(error)
    try:
        optimizer(net, {"method": "cosreg"}, dist.group.WORLD)
    except ValueError as error:
        raised["loss-side method"] = "not supported with a process group" in str(error)
    ddp = torch.nn.parallel.DistributedDataParallel(Whole(net))
    opt = fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "pcgrad", shared=net["encoder"].parameters(),
                               process_group=ddp)
    try:  # the forward outside no_sync(): DDP's reducer is armed for one backward
        opt.backward([(out - y[:, t]).pow(2).mean() for t, out in enumerate(ddp(x))])
    except ValueError as error:
        raised["ddp sync armed"] = "no_sync" in str(error)
    static = torch.nn.parallel.DistributedDataParallel(Whole(model()), static_graph=True)
    try:
        fastmtl.MTLOptimizer(torch.optim.SGD(static.parameters(), lr=0.1), "pcgrad",
                             shared=static.module.net["encoder"].parameters(), process_group=static)
    except ValueError as error:
        raised["ddp static graph"] = "static_graph" in str(error)
    return {"raised": raised}


def worker(rank: int, size: int, store_path: str, results_path: str) -> None:
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)  # training
    store = dist.FileStore(store_path, size)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=size, timeout=datetime.timedelta(seconds=60))
    results = {}
    jobs = {**{name: (lambda options=options: run_case(options)) for name, options in CASES.items()},
            "ddp-full": lambda: run_ddp("full"), "ddp-sharded": lambda: run_ddp("sharded"),
            "fsdp-pcgrad": lambda: run_fsdp("pcgrad"), "fsdp-mgda": lambda: run_fsdp("mgda"),
            **{f"features-{method}": (lambda method=method: run_features(method))
               for method in ("pcgrad", "mgda", "nash_mtl", "upgrad")},
            "head-missing-on-one-rank": run_head_missing_on_one_rank, "resume": run_resume, "errors": run_errors}
    for name, job in jobs.items():
        try:
            results[name] = job()
        except Exception:  # recorded, so the other cases still run (a collective left half-way would hang instead)
            results[name] = {"exception": traceback.format_exc()}
    with open(f"{results_path}.{rank}", "w") as file:  # every rank's: the error cases must raise on each
        json.dump(results, file)
    dist.barrier()  # no rank tears gloo down while another still talks to it
    dist.destroy_process_group()
