"""MultiDigits: two handwritten digits side by side, one classification task per digit;
MultiDigits-3 adds a third task, the parity of their sum.

Built from scikit-learn's bundled digits (see ``_digits``). The source images are split into
train and test **before** pairing, so no test image is ever seen in training, even as the other
half of a pair.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fastmtl.datasets._digits import digit_images


@dataclass
class MultiDigits:
    x_train: torch.Tensor  # [N, 8 * 16] pixels in [0, 1], left digit then right digit per row
    y_train: torch.Tensor  # [N, T] int64, one column per task (T = 2, or 3 for MultiDigits-3)
    x_test: torch.Tensor
    y_test: torch.Tensor


def _pairs(images: torch.Tensor, labels: torch.Tensor, count: int, gen: torch.Generator):
    left = torch.randint(0, len(images), (count,), generator=gen)
    right = torch.randint(0, len(images), (count,), generator=gen)
    x = torch.cat([images[left], images[right]], dim=2).reshape(count, -1)  # 8 x 16 side by side
    return x, torch.stack([labels[left], labels[right]], dim=1)


def multi_digits(train_pairs: int = 20_000, test_pairs: int = 4_000, test_fraction: float = 0.3,
                 seed: int = 0) -> MultiDigits:
    """Two tasks: the left digit and the right digit (labels [N, 2], 10 classes each)."""
    images, labels = digit_images()
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(images), generator=gen)
    n_test = int(len(images) * test_fraction)
    test_idx, train_idx = order[:n_test], order[n_test:]
    x_train, y_train = _pairs(images[train_idx], labels[train_idx], train_pairs, gen)
    x_test, y_test = _pairs(images[test_idx], labels[test_idx], test_pairs, gen)
    return MultiDigits(x_train, y_train, x_test, y_test)


def _with_parity(y: torch.Tensor) -> torch.Tensor:
    return torch.cat([y, (y[:, :1] + y[:, 1:2]) % 2], dim=1)


def multi_digits3(train_pairs: int = 20_000, test_pairs: int = 4_000, test_fraction: float = 0.3,
                  seed: int = 0) -> MultiDigits:
    """Three tasks: left digit, right digit (10 classes each) and (left + right) mod 2 (2 classes);
    labels [N, 3]. The pairs are those of ``multi_digits`` with the same arguments, so the split
    before pairing carries over, and the two datasets can be compared image for image."""
    data = multi_digits(train_pairs, test_pairs, test_fraction, seed)
    return MultiDigits(data.x_train, _with_parity(data.y_train), data.x_test, _with_parity(data.y_test))
