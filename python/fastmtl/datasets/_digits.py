"""scikit-learn's bundled handwritten digits (1,797 real 8x8 scans, BSD licence): the source of
MultiDigits and SpuriousDigits. It ships inside scikit-learn, so nothing is downloaded."""

from __future__ import annotations

import torch


def digit_images() -> tuple[torch.Tensor, torch.Tensor]:
    """The images as float32 [1797, 8, 8] in [0, 1] (the scans are 4-bit, 0..16) and the digits as
    int64 [1797]."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:  # scikit-learn comes with the demo extra
        raise ImportError("the digit datasets need scikit-learn: pip install 'fastmtl[demo]'") from error
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32) / 16.0
    return images, torch.tensor(digits.target, dtype=torch.int64)
