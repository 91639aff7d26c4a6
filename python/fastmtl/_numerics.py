"""Numeric conventions shared by the ops, the methods and the fake kernels (not the test oracle):
the accumulation dtype of each input dtype, the cosine of a Gram matrix and torchjd's trace
normalisation of one."""

from __future__ import annotations

import torch


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 accumulation for half/bfloat16/float32 input, float64 for float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def cosine_from_gram(K: torch.Tensor, eps: float) -> torch.Tensor:
    """cos_ij = K_ij / (max(|g_i|, eps) max(|g_j|, eps)), torch.nn.functional.cosine_similarity's
    convention: zero-norm tasks get cosine 0, never NaN; tiny but non-zero norms are exact."""
    norms = K.diagonal().clamp_min(0).sqrt().clamp_min(eps)
    return K / torch.outer(norms, norms)


def trace_normalised(K: torch.Tensor, norm_eps: float) -> torch.Tensor:
    """K / trace(K), or zeros when the trace is below ``norm_eps``: torchjd's normalisation of the
    Gram matrix before its dual-cone and CAGrad solves (no host sync: chosen with torch.where)."""
    trace = K.diagonal().sum()
    small = trace < norm_eps
    return torch.where(small, torch.zeros_like(K), K / torch.where(small, 1.0, trace))
