"""One training step of a shared MLP with T heads on the CPU: plain summed loss vs the T
per-task backward passes alone vs fastmtl methods (with and without every=4). Medians.

    python benchmarks/training_step.py [-T 2,4,8] [--steps 40]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import fastmtl


def make_model(tasks: int, width: int = 512):
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Linear(256, width), torch.nn.ReLU(), torch.nn.Linear(width, width),
                                  torch.nn.ReLU(), torch.nn.Linear(width, width), torch.nn.ReLU())
    heads = torch.nn.ModuleList([torch.nn.Linear(width, 10) for _ in range(tasks)])
    return encoder, heads


def step_ms(tasks: int, variant: str, steps: int) -> float:
    encoder, heads = make_model(tasks)
    params = [*encoder.parameters(), *heads.parameters()]
    base = torch.optim.SGD(params, lr=1e-3)
    x = torch.randn(256, 256)
    y = torch.randint(0, 10, (256, tasks))
    if variant != "plain":
        method, every = {"per-task": ("sum", 1), "pcgrad": ("pcgrad", 1), "pcgrad every=4": ("pcgrad", 4),
                         "mgda every=4": ("mgda", 4), "graddrop": ("graddrop", 1)}[variant]
        opt = fastmtl.MTLOptimizer(base, method, shared=encoder.parameters(), every=every)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        z = encoder(x)
        losses = [torch.nn.functional.cross_entropy(head(z), y[:, t]) for t, head in enumerate(heads)]
        if variant == "plain":
            base.zero_grad()
            sum(losses).backward()
            base.step()
        else:
            opt.zero_grad()
            opt.backward(losses)
            opt.step()
        times.append(time.perf_counter() - start)
    if "every" in variant:  # steps differ within a cycle of 4: average whole cycles after the first
        cycles = (steps - 4) // 4
        return 1e3 * statistics.mean(times[4 : 4 + 4 * cycles])
    return 1e3 * statistics.median(times[5:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-T", default="2,4,8")
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    variants = ["plain", "per-task", "pcgrad", "graddrop", "pcgrad every=4", "mgda every=4"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, MLP 256-512-512-512, batch 256")
    print("| T | " + " | ".join(f"{v} ms" for v in variants) + " | pcgrad / per-task | every=4 / plain |")
    print("|" + "---|" * (len(variants) + 3))
    for T in (int(t) for t in args.T.split(",")):
        ms = {v: step_ms(T, v, args.steps) for v in variants}
        print(f"| {T} | " + " | ".join(f"{ms[v]:.2f}" for v in variants)
              + f" | {ms['pcgrad'] / ms['per-task']:.3f} | {ms['pcgrad every=4'] / ms['plain']:.2f} |")


if __name__ == "__main__":
    main()
