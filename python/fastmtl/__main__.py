"""Command line: ``python -m fastmtl <command>``.

    python -m fastmtl demo [--method pcgrad]    train on MultiDigits (real, offline data), report, plot
    python -m fastmtl info                      how the extension was built, torch, threads
    python -m fastmtl bench [--full] [--json PATH] [-T 2,8] [-P 1e5,1e6]
                                                benchmarks vs peers, then the comparison table
    python -m fastmtl experiment NAME [--quick] [--seeds N] [--out DIR]
                                                a seed paper's offline experiment: JSON + plot

Each command is a (help, add_arguments or None, run) entry in COMMANDS. demo and bench are
applications (fastmtl.apps); each checks its extra (``pip install 'fastmtl[demo]'``,
``'fastmtl[bench]'``) when it runs, so the parser, and ``info``, work without them.
"""

from __future__ import annotations

import argparse
import sys

from fastmtl.apps import demo
from fastmtl.apps.bench import command as bench
from fastmtl.apps.experiments import runner as experiment


def _info(args: argparse.Namespace) -> int:
    import torch

    import fastmtl

    print(f"fastmtl {fastmtl.__version__}")
    for key, value in fastmtl.build_info().items():
        print(f"  {key}: {value}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CUDA available: {torch.cuda.is_available()}")
    return 0


COMMANDS = {
    "demo": ("train on MultiDigits with a surgery method and with the summed loss; report and plot",
             demo.add_arguments, demo.run),
    "info": ("print how fastmtl was built, the torch version and thread count", None, _info),
    "bench": ("time fastmtl against peers and print the comparison table", bench.add_arguments, bench.run),
    "experiment": ("run a seed paper's offline experiment; write NAME.json and NAME.png", experiment.add_arguments,
                   experiment.run),
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
