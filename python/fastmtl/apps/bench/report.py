"""Comparison tables from a pytest-benchmark JSON file (``--benchmark-json`` output).

    python -m fastmtl.apps.bench.report results.json

Per op, one Markdown table with one row per (T, P): the median ms of each candidate, then
fastmtl-cpp's time as a multiple of the memory floors (G.sum(0), and one contiguous read of G)
and the speed-up of
fastmtl-cpp over every other candidate (their time / fastmtl-cpp's time). Medians, not means:
a shared 2-core machine gives a few slow outliers that would drag a mean.
"""

from __future__ import annotations

import json
import sys

OURS = "fastmtl-cpp"
FLOORS = ("floor", "flat-read")  # G.sum(0) as specified, and one contiguous read of G
# Column order; candidates not listed here follow in the order they first appear.
KNOWN = [OURS, "fastmtl-torch", "torchjd", "libmtl-style", "torch-matmul", *FLOORS]


def size_label(P: int) -> str:
    """1000000 -> '1e6', 4000000 -> '4e6', 1234567 -> '1.234567e6'."""
    mantissa, exponent = f"{P:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.4g}" if ms < 1e4 else f"{ms:.0f}"


def _table(op: str, medians: dict) -> str:
    """medians: {(T, P): {candidate: seconds}}; P is None for ops without a P dimension."""
    seen = [c for row in medians.values() for c in row]
    candidates = [c for c in KNOWN if c in seen] + [c for c in dict.fromkeys(seen) if c not in KNOWN]
    ratios = []  # (header, numerator, denominator)
    if OURS in candidates:
        ratios += [(f"cpp x {floor}", OURS, floor) for floor in FLOORS if floor in candidates]
        ratios += [(f"speed-up vs {c}", c, OURS) for c in candidates if c not in (OURS, *FLOORS)]

    header = ["T", "P"] + [f"{c} ms" for c in candidates] + [name for name, _, _ in ratios]
    lines = [f"### {op}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (T, P), row in sorted(medians.items(), key=lambda item: (item[0][0], item[0][1] or 0)):
        cells = [str(T), "-" if P is None else size_label(P)]
        cells += [_ms(row[c]) if c in row else "-" for c in candidates]
        for _, num, den in ratios:
            cells.append(f"{row[num] / row[den]:.2f}" if num in row and den in row else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_report(json_path) -> str:
    """The Markdown report (one table per op) for a pytest-benchmark JSON file."""
    with open(json_path) as file:
        data = json.load(file)
    by_op: dict = {}
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        case = by_op.setdefault(info["op"], {}).setdefault((info["T"], info["P"]), {})
        case[info["candidate"]] = bench["stats"]["median"]
    machine = data.get("machine_info", {})
    title = "Median ms per call, float32, CPU"
    if machine.get("cpu", {}).get("brand_raw"):
        title += f" ({machine['cpu']['brand_raw']})"
    if "torch_threads" in machine:
        title += f", torch {machine['torch_version']}, {machine['torch_threads']} threads"
    return "\n\n".join([title] + [_table(op, medians) for op, medians in by_op.items()]) + "\n"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m fastmtl.apps.bench.report RESULTS.json")
    print(format_report(sys.argv[1]), end="")
