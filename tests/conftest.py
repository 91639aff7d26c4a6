"""Shared fixtures: which implementations and devices exist here, and dtype tolerances."""

import pytest
import torch

import fastmtl

# The compiled paths are tested against impl="torch" (the reference), which is itself tested
# against independent oracles (tests/oracles.py, torchjd, scipy, hand-computed cases).
COMPILED_IMPLS = [
    pytest.param("cpp", marks=pytest.mark.skipif(not fastmtl.HAS_EXT, reason="fastmtl._C not built")),
]
ALL_IMPLS = [*COMPILED_IMPLS, "torch"]
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")]),
]
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]

# Relative error allowed on outputs stored in each dtype: a few units in the last place.
OUTPUT_RTOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rtol: float, what: str = "", scale=None) -> None:
    """max |actual - expected| <= rtol * scale, scale = max |expected| unless given (e.g. the
    input's magnitude, where the expected output cancels to ~0)."""
    actual, expected = actual.double().cpu(), expected.double().cpu()
    scale = expected.abs().max().clamp_min(1e-30) if scale is None else float(scale)
    error = (actual - expected).abs().max()
    assert error <= rtol * scale, f"{what}: max error {float(error):.3g} > {rtol:.3g} x scale {float(scale):.3g}"

