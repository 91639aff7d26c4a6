"""What the metrics take and give back: torch tensors on any device, or numpy arrays (and
lists). Tensor input gives tensors back (a 0-d tensor for a scalar metric, on the input's
device); anything else gives Python floats (or numpy arrays for per-item results)."""

from __future__ import annotations

import numpy as np
import torch


def any_tensor(*values) -> bool:
    return any(isinstance(v, torch.Tensor) for v in values)


def as_tensor(value, name: str, *, dtype=None, device=None) -> torch.Tensor:
    """``value`` as a tensor (a numpy array or list is wrapped; a tensor is detached)."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach()
    else:
        try:
            tensor = torch.as_tensor(np.asarray(value))
        except (TypeError, ValueError) as error:
            raise TypeError(f"{name} must be a tensor, an array or a list of numbers, got {type(value).__name__}") \
                from error
    if device is not None:
        tensor = tensor.to(device)
    return tensor if dtype is None else tensor.to(dtype)


def labels(value, name: str, device=None) -> torch.Tensor:
    """A 1-D vector of integer class or group labels (bools count as 0/1)."""
    tensor = as_tensor(value, name, device=device)
    if tensor.dim() != 1:
        raise ValueError(f"{name} must be 1-D (one label per sample), got shape {tuple(tensor.shape)}")
    if tensor.is_floating_point():
        if not bool((tensor == tensor.round()).all()):
            raise ValueError(f"{name} must hold integer labels, got fractional values")
    elif tensor.dtype == torch.bool:
        pass
    elif tensor.is_complex():
        raise TypeError(f"{name} must hold integer labels, got {tensor.dtype}")
    return tensor.long()


def same_length(**vectors: torch.Tensor) -> int:
    lengths = {name: v.shape[0] for name, v in vectors.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"one value per sample expected in each of {', '.join(lengths)}; got lengths {lengths}")
    n = next(iter(lengths.values()))
    if n == 0:
        raise ValueError(f"{', '.join(lengths)} are empty: no samples to measure")
    return n


def result(value: torch.Tensor, as_tensors: bool):
    """A metric's value in the caller's kind: the tensor itself, else a float or numpy array."""
    if as_tensors:
        return value
    value = value.detach().cpu().double()
    return float(value) if value.dim() == 0 else value.numpy()
