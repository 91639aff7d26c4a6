"""GPU benchmark: fastmtl's CUDA kernels vs the fastmtl torch path on CUDA, torchjd on CUDA and
a device-to-device copy of the same bytes (the bandwidth floor), timed with CUDA events.

    python benchmarks/gpu_bench.py [--out DIR] [-T 2,4,8,16,32] [-P 1e5,1e6,1e7,1e8] [--quick]

Writes gpu_bench.json and gpu_bench.md into DIR (default: the current directory) and prints the
table. Medians over rounds; each round is one call, timed between two CUDA events on the
current stream. GB/s counts the bytes of G read once (copy: read + write of the same bytes).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

import fastmtl

try:
    from torchjd.aggregation import GradDrop, PCGrad

    PEERS = {"pcgrad": PCGrad(), "graddrop": GradDrop()}
except ImportError:  # torchjd is not installed on the GPU image; carry its wheel to include it
    PEERS = {}

SLOW_PEER_ELEMENTS = 2 * 10**8  # T * P above which torchjd and the torch GradDrop path are skipped


def time_ms(fn, rounds: int) -> float:
    fn()  # warm-up: lazy init, allocator
    times = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def candidates(G: torch.Tensor, copy_target: torch.Tensor, out: torch.Tensor) -> dict:
    K = fastmtl.gram(G, impl="cuda")
    w = torch.rand(G.shape[0], device="cuda")
    cases = {
        "copy": lambda: copy_target.copy_(G.view(-1)),
        "gram-cuda": lambda: fastmtl.gram(G, impl="cuda"),
        "combine-cuda": lambda: fastmtl.functional.combine(G, w, out=out, impl="cuda"),
        "solve-cuda": lambda: fastmtl.functional.pcgrad_weights(K, torch.rand_like(K).argsort(1), impl="cuda"),
        "pcgrad-cuda": lambda: fastmtl.project_conflicts(G, out=out, impl="cuda"),
        "pcgrad-torch": lambda: fastmtl.project_conflicts(G, out=out, impl="torch"),
        "graddrop-cuda": lambda: fastmtl.graddrop(G, impl="cuda"),
    }
    if G.numel() <= SLOW_PEER_ELEMENTS:  # the reference's Philox is ~100 full-size int64 ops
        cases["graddrop-torch"] = lambda: fastmtl.graddrop(G, impl="torch")
        for name, peer in PEERS.items():
            cases[f"{name}-torchjd"] = lambda peer=peer: peer(G)
    return cases


def run(tasks, sizes, rounds):
    rows = []
    for T in tasks:
        for P in sizes:
            if T * P * 4 * 2.5 > torch.cuda.get_device_properties(0).total_memory:
                continue
            G = torch.randn(T, P, device="cuda")
            copy_target, out = torch.empty(T * P, device="cuda"), torch.empty(P, device="cuda")
            row = {"T": T, "P": P, "ms": {}}
            for name, fn in candidates(G, copy_target, out).items():
                row["ms"][name] = time_ms(fn, rounds)
            bytes_read = G.numel() * G.element_size()
            row["copy_GBps"] = 2 * bytes_read / row["ms"]["copy"] / 1e6
            for name in ("gram-cuda", "combine-cuda", "graddrop-cuda"):
                row[f"{name}_GBps"] = bytes_read / row["ms"][name] / 1e6
            rows.append(row)
            print(format_row(row), flush=True)
            del G, copy_target, out
            torch.cuda.empty_cache()
    return rows


def format_row(row) -> str:
    ms = row["ms"]
    # Floors: gram/combine/graddrop read G once (half a copy's traffic); PCGrad reads it twice.
    read_once = ms["copy"] / 2
    cells = [
        row["T"], f"{row['P']:.0e}", f"{ms['copy']:.4g}", f"{row['copy_GBps']:.0f}",
        f"{ms['gram-cuda']:.4g} ({row['gram-cuda_GBps'] / row['copy_GBps']:.0%})",
        f"{ms['combine-cuda']:.4g} ({row['combine-cuda_GBps'] / row['copy_GBps']:.0%})",
        f"{ms['pcgrad-cuda']:.4g} ({ms['pcgrad-cuda'] / (2 * read_once):.2f}x)",
        f"{ms['graddrop-cuda']:.4g} ({ms['graddrop-cuda'] / read_once:.2f}x)",
        f"{ms['pcgrad-torch'] / ms['pcgrad-cuda']:.1f}x",
        f"{ms['pcgrad-torchjd'] / ms['pcgrad-cuda']:.1f}x" if "pcgrad-torchjd" in ms else "-",
        f"{ms['graddrop-torchjd'] / ms['graddrop-cuda']:.1f}x" if "graddrop-torchjd" in ms else "-",
        f"{ms['solve-cuda'] * 1e3:.0f}",
    ]
    return "| " + " | ".join(str(c) for c in cells) + " |"


HEADER = (
    "| T | P | copy ms | copy GB/s | gram ms (% of copy GB/s) | combine ms (% of copy GB/s) | "
    "pcgrad ms (x two-read floor) | graddrop ms (x one-read floor) | pcgrad vs fastmtl-torch | "
    "pcgrad vs torchjd | graddrop vs torchjd | solve µs |\n|" + "---|" * 12
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".", help="folder for gpu_bench.json and gpu_bench.md")
    parser.add_argument("-T", default="2,4,8,16,32")
    parser.add_argument("-P", default="1e5,1e6,1e7,1e8")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    tasks = [int(t) for t in args.T.split(",")]
    sizes = [int(float(p)) for p in args.P.split(",")]
    device = torch.cuda.get_device_name(0)
    title = f"{device}, torch {torch.__version__}, CUDA {torch.version.cuda}, float32, median of {args.rounds} CUDA-event timings"
    print(title, "\n", HEADER, sep="")
    rows = run(tasks, sizes, args.rounds)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_bench.json").write_text(json.dumps({"device": device, "torch": torch.__version__,
                                                    "cuda": torch.version.cuda, "rows": rows}, indent=1))
    (out / "gpu_bench.md").write_text(title + "\n\n" + HEADER + "\n" + "\n".join(format_row(r) for r in rows) + "\n")


if __name__ == "__main__":
    main()
