"""SpuriousDigits: a Waterbirds-like worst-group benchmark built offline from scikit-learn's
bundled digits (docs/design.md "Experiments", spurious-digits).

* The 1,797 source images are split 70/15/15 into train/val/test **before** anything is built, so
  no source image reaches two splits (not even as a noisy copy).
* Label y = [digit >= 5]. Spurious attribute a = a bright 2x2 patch (pixels set to 1) in the
  top-left corner, where the digits themselves are dark (no source image's 2x2 corner averages
  above 0.33), so the patch is an easy shortcut.
* In training a agrees with y with probability 0.95, drawn per example; in validation and test a
  is drawn independently of y with P(a = 1) = 0.5, so a model that follows the shortcut fails on
  the minority groups (y, a) = (0, 1) and (1, 0) there.
* Each source image gives 4 examples, each with its own a and its own Gaussian pixel noise
  (sigma 0.05, on pixels scaled to [0, 1]; not clipped, so the noise stays Gaussian).
* Group labels are 2 * y + a, as ``fastmtl.metrics.attribute_groups(y, a)`` numbers them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fastmtl import _validate
from fastmtl.datasets._digits import digit_images

PATCH = 2  # side of the square patch at the top-left corner
VAL_FRACTION = TEST_FRACTION = 0.15


@dataclass
class GroupSplit:
    x: torch.Tensor  # [N, 64] float32 pixels (8 x 8, row-major), patch included, noise added
    y: torch.Tensor  # [N] int64, 1 when the digit is 5..9
    a: torch.Tensor  # [N] int64, 1 when the patch is present
    group: torch.Tensor  # [N] int64, 2 * y + a
    source: torch.Tensor  # [N] int64, the index in sklearn's load_digits of the image it came from


@dataclass
class SpuriousDigits:
    train: GroupSplit
    val: GroupSplit
    test: GroupSplit


def _build(images, labels, index, agreement, copies, noise, gen) -> GroupSplit:
    source = index.repeat_interleave(copies)  # the copies of one image sit next to each other
    y = (labels[source] >= 5).long()
    if agreement is None:  # a independent of y
        a = (torch.rand(len(source), generator=gen) < 0.5).long()
    else:
        a = torch.where(torch.rand(len(source), generator=gen) < agreement, y, 1 - y)
    x = images[source].clone()
    x[a.bool(), :PATCH, :PATCH] = 1.0
    x += noise * torch.randn(x.shape, generator=gen)
    return GroupSplit(x.reshape(len(source), -1), y, a, 2 * y + a, source)


def spurious_digits(seed: int = 0, train_agreement: float = 0.95, copies: int = 4,
                    noise: float = 0.05) -> SpuriousDigits:
    """SpuriousDigits for ``seed`` (the same seed gives the same tensors). ``train_agreement`` is
    P(a = y) in training; ``copies`` the examples made from each source image; ``noise`` the
    standard deviation of the pixel noise."""
    seed = _validate.integer(seed, "seed")
    train_agreement = _validate.real(train_agreement, "train_agreement")
    if not 0.0 <= train_agreement <= 1.0:
        raise ValueError(f"train_agreement is a probability and must lie in [0, 1], got {train_agreement!r}")
    copies = _validate.integer(copies, "copies")
    if copies < 1:
        raise ValueError(f"copies must be >= 1 (examples per source image), got {copies}")
    noise = _validate.real(noise, "noise")
    if not (noise >= 0.0 and math.isfinite(noise)):
        raise ValueError(f"noise is a standard deviation and must be finite and >= 0, got {noise!r}")

    images, labels = digit_images()
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(images), generator=gen)  # the split, before anything is built
    n_val, n_test = int(len(images) * VAL_FRACTION), int(len(images) * TEST_FRACTION)
    val_idx, test_idx, train_idx = order[:n_val], order[n_val:n_val + n_test], order[n_val + n_test:]
    return SpuriousDigits(
        train=_build(images, labels, train_idx, train_agreement, copies, noise, gen),
        val=_build(images, labels, val_idx, None, copies, noise, gen),
        test=_build(images, labels, test_idx, None, copies, noise, gen),
    )
