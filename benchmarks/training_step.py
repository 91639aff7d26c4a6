"""One training step on the CPU with T task heads on a shared network (an MLP, or a small
ResNet-style CNN): plain summed loss, the T per-task backward passes alone, fastmtl methods
(also with every=4), torchjd (mtl_backward + jac_to_grad) and a LibMTL-style PCGrad loop.
Medians of step times; with --memory, the peak resident memory of each variant, each run in a
fresh process. With --bridges, instead: each peer's own training step against the same step with
the import switched to fastmtl's bridge (fastmtl.compat: torchjd's UPGrad and MGDA in
mtl_backward + jac_to_grad, LibMTL 1.1.5's PCGrad weighting driven as its Trainer drives it, and
Pytorch-PCGrad's pc_backward, re-implemented in fastmtl.apps.bench.peers).

    python benchmarks/training_step.py [--model mlp|cnn] [-T 2,4,8] [--steps 40] [--memory | --bridges]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import fastmtl
from fastmtl.apps.bench import peers

VARIANTS = ["plain", "per-task", "pcgrad", "graddrop", "pcgrad every=4", "mgda every=4", "torchjd pcgrad",
            "torchjd mgda", "libmtl-style pcgrad"]


class ResidualBlock(torch.nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return torch.relu(x + self.conv2(torch.relu(self.conv1(x))))


def make_model(kind: str, tasks: int):
    torch.manual_seed(0)
    if kind == "mlp":
        width = 512
        encoder = torch.nn.Sequential(torch.nn.Linear(256, width), torch.nn.ReLU(), torch.nn.Linear(width, width),
                                      torch.nn.ReLU(), torch.nn.Linear(width, width), torch.nn.ReLU())
        x = torch.randn(256, 256)
    else:
        width = 32
        encoder = torch.nn.Sequential(torch.nn.Conv2d(3, width, 3, padding=1), torch.nn.ReLU(), ResidualBlock(width),
                                      torch.nn.MaxPool2d(2), ResidualBlock(width), torch.nn.AdaptiveAvgPool2d(1),
                                      torch.nn.Flatten())
        x = torch.randn(64, 3, 32, 32)
    heads = torch.nn.ModuleList([torch.nn.Linear(width, 10) for _ in range(tasks)])
    y = torch.randint(0, 10, (x.shape[0], tasks))
    return encoder, heads, x, y


def libmtl_style_step(encoder, heads, losses):
    """LibMTL's PCGrad: per-task gradients by autograd into a [T, P] matrix, its Python loop
    over pairs (a host-side decision per pair; the benchmarks' peer), the summed projected
    gradient written to the shared .grad."""
    shared = list(encoder.parameters())
    rows = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, shared, retain_graph=True)]) for loss in losses]
    combined = peers.libmtl_style_pcgrad(torch.stack(rows))
    offset = 0
    for p in shared:
        p.grad = combined[offset : offset + p.numel()].view_as(p).clone()
        offset += p.numel()
    heads_params = list(heads.parameters())
    for p, g in zip(heads_params, torch.autograd.grad(sum(losses), heads_params)):
        p.grad = g


def timed_steps(encoder, heads, x, y, base, stepper, backward, steps: int) -> list[float]:
    """Seconds of each of ``steps`` training steps: forward, the T cross-entropy losses,
    ``base.zero_grad()``, ``backward(losses, z)``, ``stepper.step()``."""
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        z = encoder(x)
        losses = [torch.nn.functional.cross_entropy(head(z), y[:, t]) for t, head in enumerate(heads)]
        base.zero_grad()
        backward(losses, z)
        stepper.step()
        times.append(time.perf_counter() - start)
    return times


def step_ms(kind: str, tasks: int, variant: str, steps: int) -> float:
    encoder, heads, x, y = make_model(kind, tasks)
    params = [*encoder.parameters(), *heads.parameters()]
    base = torch.optim.SGD(params, lr=1e-3)
    opt = None
    if variant in ("per-task", "pcgrad", "graddrop", "pcgrad every=4", "mgda every=4"):
        method, every = {"per-task": ("sum", 1), "pcgrad": ("pcgrad", 1), "graddrop": ("graddrop", 1),
                         "pcgrad every=4": ("pcgrad", 4), "mgda every=4": ("mgda", 4)}[variant]
        opt = fastmtl.MTLOptimizer(base, method, shared=encoder.parameters(), every=every)
    if variant.startswith("torchjd"):
        from torchjd.aggregation import MGDA, PCGrad
        from torchjd.autojac import jac_to_grad, mtl_backward

        aggregator = PCGrad() if variant.endswith("pcgrad") else MGDA()
    def backward(losses, z):
        if variant == "plain":
            sum(losses).backward()
        elif opt is not None:
            opt.zero_grad()
            opt.backward(losses)
        elif variant.startswith("torchjd"):
            mtl_backward(losses, features=z)
            jac_to_grad(list(encoder.parameters()), aggregator)
        else:
            libmtl_style_step(encoder, heads, losses)

    times = timed_steps(encoder, heads, x, y, base, opt or base, backward, steps)  # MTLOptimizer counts every=k
    if "every" in variant:  # steps differ within a cycle of 4: average whole cycles after the first
        cycles = (steps - 4) // 4
        return 1e3 * statistics.mean(times[4 : 4 + 4 * cycles])
    return 1e3 * statistics.median(times[5:])


# Each pair: the peer's step, and the same step with the import switched to fastmtl.compat.
BRIDGES = [("torchjd upgrad", "bridge upgrad"), ("torchjd mgda", "bridge mgda"),
           ("libmtl pcgrad", "bridge libmtl pcgrad"), ("pytorch-pcgrad", "bridge pcgrad")]


def bridge_step_ms(kind: str, tasks: int, variant: str, steps: int) -> float:
    """Median ms of one training step of ``variant`` (a name of BRIDGES)."""
    encoder, heads, x, y = make_model(kind, tasks)
    params = [*encoder.parameters(), *heads.parameters()]
    base = torch.optim.SGD(params, lr=1e-3)
    bridged = variant.startswith("bridge")
    if "upgrad" in variant or "mgda" in variant:
        from torchjd.autojac import jac_to_grad, mtl_backward

        if bridged:
            import fastmtl.compat.torchjd as aggregation
        else:
            import torchjd.aggregation as aggregation
        aggregator = aggregation.UPGrad() if "upgrad" in variant else aggregation.MGDA()

        def backward(losses, z):
            mtl_backward(losses, features=z)
            jac_to_grad(list(encoder.parameters()), aggregator)
    elif "libmtl" in variant:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        import libmtl_oracle  # LibMTL's own weighting without its package __init__, and the Trainer's harness

        if bridged:
            from fastmtl.compat.libmtl import PCGrad as weighting_class
        else:
            weighting_class = libmtl_oracle.weighting_class("PCGrad")
        weighting = libmtl_oracle.harness(weighting_class, encoder.parameters(), tasks)
        weighting.init_param()

        def backward(losses, z):
            weighting.backward(torch.stack(losses))
    else:
        if bridged:
            from fastmtl.compat.pcgrad import PCGrad

            wrapper = PCGrad(base)

            def backward(losses, z):
                wrapper.pc_backward(losses)
        else:
            def backward(losses, z):
                peers.pytorch_pcgrad_style_backward(losses, params)
    return 1e3 * statistics.median(timed_steps(encoder, heads, x, y, base, base, backward, steps)[5:])


def aggregator_ms(tasks: int, name: str, bridged: bool, size: int = 400_000, calls: int = 20) -> float:
    """Median ms of one torchjd aggregator call on a random float32 J [tasks, size]: the part of
    the step the bridge replaces (the backward passes are the same on both sides)."""
    if bridged:
        import fastmtl.compat.torchjd as aggregation
    else:
        import torchjd.aggregation as aggregation
    aggregator = getattr(aggregation, name)()
    J = torch.randn(tasks, size, generator=torch.Generator().manual_seed(0))
    aggregator(J)  # warm up
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        aggregator(J)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def print_bridges(kind: str, task_counts: list[int], steps: int, repeats: int = 5) -> None:
    print("| T | " + " | ".join(f"{peer} | {bridge} | speed-up" for peer, bridge in BRIDGES) + " |")
    print("|" + "---|" * (1 + 3 * len(BRIDGES)))
    for T in task_counts:
        cells = []
        for peer, bridge in BRIDGES:
            # Alternating runs, the median of each side's medians: the steps are dominated by the
            # same T backward passes on both sides, so order and machine noise would otherwise
            # weigh as much as the difference measured.
            runs = {peer: [], bridge: []}
            for _ in range(repeats):
                for variant in (peer, bridge):
                    runs[variant].append(bridge_step_ms(kind, T, variant, steps))
            ms_peer, ms_bridge = statistics.median(runs[peer]), statistics.median(runs[bridge])
            cells.append(f"{ms_peer:.2f} | {ms_bridge:.2f} | {ms_peer / ms_bridge:.2f}×")
        print(f"| {T} | " + " | ".join(cells) + " |")
    print("\nThe aggregation alone, J [T, 400000] float32, median ms (torchjd / bridge, speed-up):")
    print("| T | UPGrad | MGDA |")
    print("|---|---|---|")
    for T in task_counts:
        cells = []
        for name in ("UPGrad", "MGDA"):
            theirs, ours = aggregator_ms(T, name, False), aggregator_ms(T, name, True)
            cells.append(f"{theirs:.2f} / {ours:.2f} ({theirs / ours:.1f}×)")
        print(f"| {T} | " + " | ".join(cells) + " |")


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        return next(float(line.split()[1]) / 1024 for line in status if line.startswith(field + ":"))


def peak_memory_mb(kind: str, tasks: int, variant: str) -> float:
    """Peak resident memory of the training steps above what the process held before them: a
    fresh process warms the variant up (imports, allocator), resets the kernel's high-water mark
    (/proc/self/clear_refs) and runs the variant again."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); import training_step as b; "
            f"b.step_ms({kind!r}, {tasks}, {variant!r}, 12); base = b._status_mb('VmRSS'); "
            "open('/proc/self/clear_refs', 'w').write('5'); "
            f"b.step_ms({kind!r}, {tasks}, {variant!r}, 12); print(b._status_mb('VmHWM') - base)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["mlp", "cnn"], default="mlp")
    parser.add_argument("-T", default="2,4,8")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--memory", action="store_true", help="also the peak RSS of each variant (fresh processes)")
    parser.add_argument("--bridges", action="store_true", help="each peer's step against fastmtl.compat's bridge")
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    if args.bridges:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, model {args.model}; median ms per step")
        print_bridges(args.model, [int(t) for t in args.T.split(",")], args.steps)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, model {args.model}; median ms per step"
          + ("; peak memory of the steps over the process's resident baseline, MB" if args.memory else ""))
    print("| T | " + " | ".join(VARIANTS) + " | pcgrad / per-task | pcgrad every=4 / plain | torchjd pcgrad / pcgrad |")
    print("|" + "---|" * (len(VARIANTS) + 4))
    for T in (int(t) for t in args.T.split(",")):
        ms = {v: step_ms(args.model, T, v, args.steps) for v in VARIANTS}
        print(f"| {T} | " + " | ".join(f"{ms[v]:.2f}" for v in VARIANTS)
              + f" | {ms['pcgrad'] / ms['per-task']:.3f} | {ms['pcgrad every=4'] / ms['plain']:.2f}"
              + f" | {ms['torchjd pcgrad'] / ms['pcgrad']:.2f} |")
        if args.memory:
            mb = {v: peak_memory_mb(args.model, T, v) for v in VARIANTS}
            print(f"| {T} (MB) | " + " | ".join(f"{mb[v]:.0f}" for v in VARIANTS) + " | | | |")


if __name__ == "__main__":
    main()
