"""MultiDigits: two handwritten digits side by side, one classification task per digit.

Built from scikit-learn's bundled ``load_digits`` (1,797 real 8x8 scans, BSD licence, no
download). The source images are split into train and test **before** pairing, so no test
image is ever seen in training, even as the other half of a pair.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class MultiDigits:
    x_train: torch.Tensor  # [N, 8 * 16] pixels in [0, 1], left digit then right digit per row
    y_train: torch.Tensor  # [N, 2] the two digits
    x_test: torch.Tensor
    y_test: torch.Tensor


def _pairs(images: torch.Tensor, labels: torch.Tensor, count: int, gen: torch.Generator):
    left = torch.randint(0, len(images), (count,), generator=gen)
    right = torch.randint(0, len(images), (count,), generator=gen)
    x = torch.cat([images[left], images[right]], dim=2).reshape(count, -1)  # 8 x 16 side by side
    return x, torch.stack([labels[left], labels[right]], dim=1)


def multi_digits(train_pairs: int = 20_000, test_pairs: int = 4_000, test_fraction: float = 0.3,
                 seed: int = 0) -> MultiDigits:
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:  # pragma: no cover - scikit-learn comes with the demo extra
        raise ImportError("MultiDigits needs scikit-learn: pip install 'fastmtl[demo]'") from error
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32) / 16.0  # [1797, 8, 8]
    labels = torch.tensor(digits.target, dtype=torch.int64)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(images), generator=gen)
    n_test = int(len(images) * test_fraction)
    test_idx, train_idx = order[:n_test], order[n_test:]
    x_train, y_train = _pairs(images[train_idx], labels[train_idx], train_pairs, gen)
    x_test, y_test = _pairs(images[test_idx], labels[test_idx], test_pairs, gen)
    return MultiDigits(x_train, y_train, x_test, y_test)
