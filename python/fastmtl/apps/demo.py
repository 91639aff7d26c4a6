"""The main job: train a shared network on MultiDigits with a gradient-surgery method and with
the plain summed loss, then report per-task test accuracy, the worst task, time per step and
the surgery overhead, and save plots.

    python -m fastmtl demo [--method pcgrad] [--steps 1500] [--out demo-out]
    torchrun --nproc-per-node 2 -m fastmtl demo      the same run on 2 processes (fastmtl.apps._distributed)

On N processes every rank draws the same global batch and trains on its N-th of it; the
gradients are averaged over the processes (MTLOptimizer(process_group=...) for the surgery runs,
one all-reduce for the plain one), so the run is the single-process run up to float rounding.
Rank 0 alone evaluates, prints and writes the plots.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.distributed as dist

import fastmtl
from fastmtl.apps import _distributed, extras
from fastmtl.apps.plots import plot_history
from fastmtl.datasets import multi_digits


class SharedNet(torch.nn.Module):
    """A shared MLP encoder and one 10-way head per digit."""

    def __init__(self, tasks: int = 2, width: int = 256):
        super().__init__()
        self.encoder = torch.nn.Sequential(
            torch.nn.Linear(128, width), torch.nn.ReLU(), torch.nn.Linear(width, width), torch.nn.ReLU()
        )
        self.heads = torch.nn.ModuleList([torch.nn.Linear(width, 10) for _ in range(tasks)])

    def forward(self, x):
        z = self.encoder(x)
        return [head(z) for head in self.heads]


def losses_of(logits, y):
    return [torch.nn.functional.cross_entropy(task_logits, y[:, t]) for t, task_logits in enumerate(logits)]


@torch.no_grad()
def accuracy(net, x, y) -> list[float]:
    return [(logits.argmax(1) == y[:, t]).float().mean().item() for t, logits in enumerate(net(x))]


def train(name: str, method: str, data, steps: int, batch: int, seed: int, options: dict, diagnostics: bool, *,
          process_group=None, device="cpu", dtype: torch.dtype = torch.float32) -> dict:
    """method "plain": one backward of the summed loss; otherwise MTLOptimizer(method).

    ``process_group`` (None: this process alone): each rank trains on its equal shard of the
    same global batch of ``batch`` rows and the gradients are averaged over the processes, so
    the parameters follow the single-process run up to rounding; only the group's rank 0
    evaluates and fills the history's accuracies, diagnostics and timings. The history's
    "model" is the trained network (equal on every rank)."""
    # tqdm comes with the demo extra (run() checks it): imported here so that building the
    # command line's parser, which every command does, never needs it.
    from tqdm import tqdm

    rank, size = (0, 1) if process_group is None else (dist.get_rank(process_group), dist.get_world_size(process_group))
    lead = rank == 0
    mine = _distributed.shard(rank, size, batch)  # checked before any collective, so every rank raises alike
    device = torch.device(device)
    torch.manual_seed(seed)
    net = SharedNet().to(device=device, dtype=dtype)
    adam = torch.optim.Adam(net.parameters(), lr=1e-3)
    opt = None
    if method != "plain":
        options = dict(options)
        if "generator" in fastmtl.methods.create(method).options and options.get("generator") is None:
            # The method's random numbers (PCGrad's order, GradDrop's masks) from the run's seed,
            # not from the global generator: the same draws alone and on every rank, so the
            # distributed run can equal the single-process one.
            options["generator"] = torch.Generator(device=device).manual_seed(seed)
        if process_group is not None:
            options["process_group"] = process_group
        opt = fastmtl.MTLOptimizer(adam, method, shared=net.encoder.parameters(), diagnostics=diagnostics, **options)
    elif process_group is not None:
        _distributed.broadcast_parameters(net.parameters(), process_group)
    gen = torch.Generator().manual_seed(seed)  # the global data order: the same on every rank
    x_test, y_test = (data.x_test.to(device=device, dtype=dtype), data.y_test.to(device)) if lead else (None, None)
    history = {"step": [], "cosine": [], "conflicts": [], "eval_step": [], "accuracy": []}
    step_seconds = []
    eval_every = max(1, steps // 10)
    with tqdm(total=steps, desc=f"{name:>10}", unit="step", disable=not lead) as bar:  # stderr; stdout: the report
        for step in range(1, steps + 1):
            idx = torch.randint(0, len(data.x_train), (batch,), generator=gen)[mine]
            x, y = data.x_train[idx].to(device=device, dtype=dtype), data.y_train[idx].to(device)
            start = time.perf_counter()
            losses = losses_of(net(x), y)
            if opt is None:
                adam.zero_grad()
                sum(losses).backward()
                if process_group is not None:
                    _distributed.average_gradients(net.parameters(), process_group)
                adam.step()
            else:
                opt.zero_grad()
                opt.backward(losses)
                opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # the step's kernels, not just their launches, on the clock
            step_seconds.append(time.perf_counter() - start)  # the bar and the evaluation stay off the clock
            if not lead:
                continue
            bar.update()
            if opt is not None and opt.last_diagnostics is not None:
                history["step"].append(step)
                history["cosine"].append(opt.last_diagnostics["cosine"][0, 1].item())
                history["conflicts"].append(opt.last_diagnostics["conflicts"].item())
            if step % eval_every == 0 or step == steps:
                history["eval_step"].append(step)
                history["accuracy"].append(accuracy(net, x_test, y_test))
                bar.set_postfix_str("acc " + " ".join(f"{a:.3f}" for a in history["accuracy"][-1]))
    ordered = sorted(step_seconds)
    history["ms_per_step"] = 1e3 * ordered[len(ordered) // 2]
    history["final_accuracy"] = history["accuracy"][-1] if history["accuracy"] else None
    history["model"] = net
    return history


def run(args: argparse.Namespace) -> int:
    extras.require("demo", command="demo")
    torch.set_flush_denormal(True)  # denormals slowed small Adam runs 100x on this CPU
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available in this torch")
    with _distributed.session(args.device) as session:
        return _report(args, session)


def _report(args: argparse.Namespace, session: _distributed.Session) -> int:
    """The three runs and, on rank 0 alone, the report and the plots."""
    say = print if session.lead else (lambda *_, **__: None)  # the other ranks stay silent
    data = multi_digits(seed=args.seed)  # every rank builds the same data from the seed: no transfer
    say(f"MultiDigits: {len(data.x_train)} training pairs, {len(data.x_test)} test pairs "
        f"(train/test digits split before pairing); fastmtl {fastmtl.build_info().get('version', '(torch path)')}, "
        f"compiled kernels: {fastmtl.HAS_EXT}, {torch.get_num_threads()} threads, {session.device}")
    if session.group is not None:
        say(f"{session.size} processes ({session.backend}): each trains on {args.batch // session.size} of every "
            f"global batch of {args.batch}, gradients averaged over the processes; rank 0 evaluates")
    options = {"shuffle": False} if args.method == "pcgrad" and args.no_shuffle else {}
    # "sum" through MTLOptimizer = the T per-task backward passes alone: the surgery overhead's baseline.
    runs = {"plain": "plain", "per-task": "sum", args.method: args.method}
    histories = {}
    for name, method in runs.items():
        chosen = name == args.method
        histories[name] = train(name, method, data, args.steps, args.batch, args.seed, options if chosen else {},
                                diagnostics=chosen, process_group=session.group, device=session.device)
    if not session.lead:
        return 0
    print()
    print(f"{'run':>10} | {'task 0 acc':>10} | {'task 1 acc':>10} | {'worst task':>10} | {'ms/step':>8} | mean conflicts")
    for name, history in histories.items():
        acc = history["final_accuracy"]
        conflicts = sum(history["conflicts"]) / len(history["conflicts"]) if history["conflicts"] else float("nan")
        print(f"{name:>10} | {acc[0]:>10.4f} | {acc[1]:>10.4f} | {min(acc):>10.4f} | {history['ms_per_step']:>8.3f} | "
              f"{conflicts:.2f}")
    overhead = histories[args.method]["ms_per_step"] / histories["per-task"]["ms_per_step"] - 1
    recorded = " (with diagnostics)" if histories[args.method]["cosine"] else ""
    print(f"\nsurgery overhead of {args.method}{recorded}: {overhead:+.1%} over the {len(data.y_train[0])} "
          f"per-task backward passes alone; {histories[args.method]['ms_per_step'] / histories['plain']['ms_per_step']:.2f}x "
          f"a plain summed-loss step (medians)")
    path = plot_history({k: v for k, v in histories.items() if k != "per-task"}, Path(args.out) / "multidigits.png")
    if path:
        print(f"plots: {path}")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", default="pcgrad", choices=fastmtl.methods.available(),
                        help="any registered method (default: pcgrad)")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-shuffle", action="store_true", help="PCGrad in index order (official TF code)")
    parser.add_argument("--out", default="demo-out", help="folder for the plots (written by rank 0 alone)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="cuda: under torchrun, one GPU per process (LOCAL_RANK) and NCCL; cpu: gloo")
