"""Command line: ``python -m fastmtl <command>``.

    python -m fastmtl demo [--method pcgrad]    train on MultiDigits (real, offline data), report, plot
    python -m fastmtl info                      how the extension was built, torch, threads
    python -m fastmtl bench [--full] [--json PATH] [-T 2,8] [-P 1e5,1e6]
                                                benchmarks vs peers, then the comparison table

Each command is a (help, add_arguments or None, run) entry in COMMANDS.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

QUICK_T, QUICK_P = "2,8,16", "1e5,1e6,4e6"  # a few minutes on 2 cores
FULL_T, FULL_P = "2,4,8,16", "1e5,1e6,4e6,1e7"


def _info(args: argparse.Namespace) -> int:
    import torch

    import fastmtl

    print(f"fastmtl {fastmtl.__version__}")
    for key, value in fastmtl.build_info().items():
        print(f"  {key}: {value}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CUDA available: {torch.cuda.is_available()}")
    return 0


def _counts(text: str) -> str:
    """argparse type: a comma list of positive whole numbers ("2,8", "1e5,4e6"), kept as text
    for the benchmark's environment variables."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    try:
        if items and all(float(item) >= 1 and float(item).is_integer() for item in items):
            return ",".join(items)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"expected a comma list of positive whole numbers, got {text!r}")


def _bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--full", action="store_true",
                        help=f"the whole grid (T={FULL_T}, P={FULL_P}) with the slow peers at every size")
    parser.add_argument("--json", metavar="PATH", help="keep pytest-benchmark's JSON results here")
    parser.add_argument("-T", type=_counts, metavar="LIST", help=f"task counts (default {QUICK_T})")
    parser.add_argument("-P", type=_counts, metavar="LIST", help=f"gradient sizes (default {QUICK_P})")


def _source_root() -> Path | None:
    """The checkout holding benchmarks/: two levels above the package (python/fastmtl)."""
    root = Path(__file__).resolve().parent.parent.parent
    return root if (root / "benchmarks" / "test_bench_ops.py").is_file() else None


def _bench(args: argparse.Namespace) -> int:
    root = _source_root()
    if root is None:
        sys.exit("fastmtl bench needs a source checkout (with benchmarks/); this fastmtl is installed "
                 f"from {Path(__file__).resolve().parent}")
    env = dict(os.environ)
    env["FASTMTL_BENCH_T"] = args.T or (FULL_T if args.full else QUICK_T)
    env["FASTMTL_BENCH_P"] = args.P or (FULL_P if args.full else QUICK_P)
    env["FASTMTL_BENCH_FULL"] = "1" if args.full else "0"
    with tempfile.TemporaryDirectory() as scratch:
        json_path = Path(args.json).resolve() if args.json else Path(scratch) / "results.json"
        command = [sys.executable, "-m", "pytest", "benchmarks/test_bench_ops.py", "--benchmark-only",
                   f"--benchmark-json={json_path}", "--benchmark-quiet", "-q"]
        print(f"T={env['FASTMTL_BENCH_T']}  P={env['FASTMTL_BENCH_P']}  full={args.full}", flush=True)
        status = subprocess.run(command, cwd=root, env=env).returncode
        if status != 0:
            return status
        spec = importlib.util.spec_from_file_location("fastmtl_bench_report", root / "benchmarks" / "report.py")
        report = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(report)
        print()
        print(report.format_report(json_path), end="")
    if args.json:
        print(f"\nresults: {json_path}")
    return 0


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    from fastmtl import demo

    demo.add_arguments(parser)


def _demo(args: argparse.Namespace) -> int:
    from fastmtl import demo

    return demo.run(args)


COMMANDS = {
    "demo": ("train on MultiDigits with a surgery method and with the summed loss; report and plot",
             _demo_arguments, _demo),
    "info": ("print how fastmtl was built, the torch version and thread count", None, _info),
    "bench": ("time fastmtl against peers and print the comparison table", _bench_arguments, _bench),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastmtl", description="fastmtl command line")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_arguments, run) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if add_arguments:
            add_arguments(sub)
        sub.set_defaults(run=run)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
