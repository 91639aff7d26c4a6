"""The ``python -m fastmtl bench`` command: times fastmtl against peers and prints the
comparison tables.

It runs pytest-benchmark on op_cases.py, the file inside the installed package (site-packages
or an editable source tree alike), in a subprocess started in a scratch folder with its own
rootdir and an empty configuration: the user's working directory, and any pytest.ini,
conftest.py or cache there, play no part. The grid goes to the subprocess through grid.py's
environment variables.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from fastmtl.apps import extras
from fastmtl.apps.bench import grid

CASES_FILE = Path(__file__).with_name("op_cases.py")
MACHINE_INFO_PLUGIN = "fastmtl.apps.bench.machine_info"


def _counts(text: str) -> str:
    """argparse type: a checked comma list of positive whole numbers, kept as text (it goes to
    the subprocess's environment as it was written: "1e5" stays readable)."""
    try:
        grid.parse_counts(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return ",".join(item.strip() for item in text.split(",") if item.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--full", action="store_true",
                        help=f"the whole grid (T={grid.FULL_TASKS}, P={grid.FULL_SIZES}) with the slow peers "
                             "at every size")
    parser.add_argument("--json", metavar="PATH", help="keep pytest-benchmark's JSON results here")
    parser.add_argument("-T", type=_counts, metavar="LIST", help=f"task counts (default {grid.QUICK_TASKS})")
    parser.add_argument("-P", type=_counts, metavar="LIST", help=f"gradient sizes (default {grid.QUICK_SIZES})")


def pytest_command(json_path: Path) -> list[str]:
    """pytest on the packaged cases, whatever the working directory holds: -c os.devnull (no
    pytest.ini or pyproject.toml is looked for), rootdir and confcutdir at the cases' folder
    (no conftest.py above it is loaded), no cache written, and the machine-info hook loaded as
    a plugin module (the checkout's benchmarks/conftest.py re-exports the same hook)."""
    here = str(CASES_FILE.parent)
    return [
        sys.executable, "-m", "pytest", str(CASES_FILE),
        "-c", os.devnull, f"--rootdir={here}", f"--confcutdir={here}", "-p", "no:cacheprovider",
        "-p", MACHINE_INFO_PLUGIN,
        "--benchmark-only", f"--benchmark-json={json_path}", "--benchmark-quiet", "-q",
    ]


def run(args: argparse.Namespace) -> int:
    extras.require("bench", command="bench")
    from fastmtl.apps.bench.report import format_report

    tasks = args.T or (grid.FULL_TASKS if args.full else grid.QUICK_TASKS)
    sizes = args.P or (grid.FULL_SIZES if args.full else grid.QUICK_SIZES)
    env = {**os.environ, **grid.to_environment(tasks, sizes, args.full)}
    with tempfile.TemporaryDirectory(prefix="fastmtl-bench-") as scratch:
        json_path = Path(args.json).resolve() if args.json else Path(scratch) / "results.json"
        print(f"T={tasks}  P={sizes}  full={args.full}", flush=True)
        status = subprocess.run(pytest_command(json_path), cwd=scratch, env=env).returncode
        if status != 0:
            return status
        print()
        print(format_report(json_path), end="")
    if args.json:
        print(f"\nresults: {json_path}")
    return 0
