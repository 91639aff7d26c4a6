"""The benchmark grid: task counts T and gradient sizes P, as comma lists ("2,8", "1e5,4e6").

The bench command runs the cases in a pytest subprocess, so the grid travels in environment
variables: the command writes them (to_environment), op_cases.py reads them (from_environment).
"""

from __future__ import annotations

import os

TASKS_VAR, SIZES_VAR, FULL_VAR = "FASTMTL_BENCH_T", "FASTMTL_BENCH_P", "FASTMTL_BENCH_FULL"

QUICK_TASKS, QUICK_SIZES = "2,8,16", "1e5,1e6,4e6"  # the command's default: a few minutes on 2 cores
FULL_TASKS, FULL_SIZES = "2,4,8,16", "1e5,1e6,4e6,1e7"  # --full, and pytest run on the cases directly


def parse_counts(text: str) -> list[int]:
    """"2,8" -> [2, 8]; "1e5,4e6" -> [100000, 4000000]. ValueError unless every item is a
    positive whole number."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    try:
        values = [float(item) for item in items]
    except ValueError:
        values = []
    if not values or not all(value >= 1 and value.is_integer() for value in values):
        raise ValueError(f"expected a comma list of positive whole numbers, got {text!r}")
    return [int(value) for value in values]


def to_environment(tasks: str, sizes: str, full: bool) -> dict[str, str]:
    """The variables that hand the grid (checked comma lists) to the pytest run."""
    return {TASKS_VAR: tasks, SIZES_VAR: sizes, FULL_VAR: "1" if full else "0"}


def from_environment(environ=os.environ) -> tuple[list[int], list[int], bool]:
    """(tasks, sizes, full) from the variables; the full grid where they are unset."""
    tasks = parse_counts(environ.get(TASKS_VAR) or FULL_TASKS)
    sizes = parse_counts(environ.get(SIZES_VAR) or FULL_SIZES)
    return tasks, sizes, environ.get(FULL_VAR) == "1"
