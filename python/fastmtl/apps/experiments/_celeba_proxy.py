"""The CelebA-gen attribute proxy shared by the ``go4align`` and ``celeba-fair`` experiments:
FairBranch's 17 CelebA-gen task attributes (Roy et al. 2024), predicted from the other 22 of
CelebA's 40 attributes coded ±1, with the sensitive attribute Male neither a task nor an input.
The official split (``fastmtl.datasets.celeba_attributes``), train subsampled per seed, test whole."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

TASK_ATTRIBUTES = ("Attractive", "Bags_Under_Eyes", "Bangs", "Big_Lips", "Big_Nose", "Black_Hair", "Brown_Hair",
                   "Bushy_Eyebrows", "High_Cheekbones", "Mouth_Slightly_Open", "Narrow_Eyes", "Oval_Face",
                   "Pointy_Nose", "Smiling", "Straight_Hair", "Wavy_Hair", "Young")
SENSITIVE = "Male"


@dataclass
class ProxySplit:
    x_train: torch.Tensor  # [N, 22] float32 in {-1, +1}: the attributes that are neither task nor sensitive
    y_train: torch.Tensor  # [N, 17] int64 in {0, 1}: one column per TASK_ATTRIBUTES
    s_train: torch.Tensor  # [N] int64, 1 = Male
    x_test: torch.Tensor
    y_test: torch.Tensor
    s_test: torch.Tensor


@functools.lru_cache(maxsize=4)
def load(train_rows: int | None, seed: int) -> ProxySplit:
    """The proxy: ``train_rows`` training rows drawn by ``seed`` (None: all), the whole official
    test split. Cached: every arm and experiment of a seed shares one copy (do not modify it)."""
    from fastmtl.datasets import celeba_attributes

    def split(name, rows):
        table = celeba_attributes(name, subsample=rows, seed=seed)
        inputs = [a for a in table.names if a not in TASK_ATTRIBUTES and a != SENSITIVE]
        x = torch.stack([table[a] for a in inputs], dim=1).float() * 2 - 1  # the 22 other attributes, ±1
        y = torch.stack([table[a] for a in TASK_ATTRIBUTES], dim=1)
        return x, y, table[SENSITIVE].clone()

    (x_train, y_train, s_train), (x_test, y_test, s_test) = split("train", train_rows), split("test", None)
    return ProxySplit(x_train, y_train, s_train, x_test, y_test, s_test)
