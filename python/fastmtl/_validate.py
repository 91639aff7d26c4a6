"""Input checks shared by the public ops: each raises a ValueError or TypeError that names the
argument and the problem. None of them reads tensor values from a CUDA device (no host sync)."""

from __future__ import annotations

import math

import torch

from fastmtl._numerics import accumulate_dtype

IMPLS = ("auto", "cpp", "cuda", "torch")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def task_matrix(G, name: str = "G") -> torch.Tensor:
    """A [T, P] floating-point matrix with T > 0 and P > 0, detached (surgery is not differentiated)."""
    if not isinstance(G, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape [T, P], got {type(G).__name__}")
    if G.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have a floating-point dtype (float16, bfloat16, float32, float64), got {G.dtype}")
    if G.dim() != 2:
        raise ValueError(f"{name} must be a 2-D [T, P] matrix (one row per task), got shape {tuple(G.shape)}")
    if G.shape[0] == 0 or G.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(G.shape)} needs T >= 1 tasks and P >= 1 parameters")
    return G.detach()


def same_device_and_dtype(tensor: torch.Tensor, like: torch.Tensor, name: str, like_name: str = "G") -> None:
    if tensor.device != like.device:
        raise ValueError(f"{name} is on {tensor.device} but {like_name} is on {like.device}")
    if tensor.dtype != like.dtype:
        raise TypeError(f"{name} has dtype {tensor.dtype} but {like_name} has dtype {like.dtype}")


def generator_for(generator, device: torch.device):
    if generator is None:
        return None
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if generator.device.type != device.type:
        raise ValueError(f"generator is a {generator.device.type} generator but G is on {device}")
    return generator


def leak_vector(leak, G: torch.Tensor) -> torch.Tensor:
    """GradDrop leak as a [T] tensor in G's accumulation dtype, each value in [0, 1]."""
    tasks = G.shape[0]
    acc_dtype = accumulate_dtype(G.dtype)
    if isinstance(leak, torch.Tensor):
        if not leak.is_floating_point():
            raise TypeError(f"leak must be a float or a floating-point tensor, got dtype {leak.dtype}")
        if leak.shape != (tasks,):
            raise ValueError(f"leak must be a float or a [T] = [{tasks}] tensor, got shape {tuple(leak.shape)}")
        if leak.device != G.device:
            raise ValueError(f"leak is on {leak.device} but G is on {G.device}")
        leak = leak.detach()
        # On the host the values are checked here; a device tensor is not read back (no sync):
        # the kernels turn the whole result into NaN if any value lies outside [0, 1].
        if leak.device.type == "cpu" and not bool(((leak >= 0) & (leak <= 1)).all()):
            raise ValueError(f"leak values must lie in [0, 1], got {leak.tolist()}")
        return leak.to(acc_dtype)
    if isinstance(leak, bool) or not isinstance(leak, (int, float)):
        raise TypeError(f"leak must be a float in [0, 1] or a [T] tensor, got {type(leak).__name__}")
    if not (0.0 <= float(leak) <= 1.0):  # also rejects NaN
        raise ValueError(f"leak must lie in [0, 1], got {leak}")
    return torch.full((tasks,), float(leak), dtype=acc_dtype, device=G.device)


def similarity_matrix(S) -> torch.Tensor:
    """A finite, symmetric, non-empty [T, T] similarity matrix, on the CPU (clustering runs on the host)."""
    if not isinstance(S, torch.Tensor):
        raise TypeError(f"S must be a torch.Tensor of shape [T, T], got {type(S).__name__}")
    if not S.is_floating_point():
        raise TypeError(f"S must have a floating-point dtype, got {S.dtype}")
    if S.dim() != 2 or S.shape[0] != S.shape[1]:
        raise ValueError(f"S must be a square [T, T] similarity matrix, got shape {tuple(S.shape)}")
    if S.shape[0] == 0:
        raise ValueError("S is empty: there are no tasks to cluster")
    S = S.detach().cpu().double()
    if not bool(torch.isfinite(S).all()):
        raise ValueError("S contains NaN or Inf")
    if not torch.allclose(S, S.T, rtol=1e-5, atol=1e-8):
        raise ValueError("S must be symmetric (S[i, j] == S[j, i])")
    return S


def clustering_target(n_groups, threshold, tasks: int):
    if (n_groups is None) == (threshold is None):
        raise ValueError("give exactly one of n_groups (number of groups) and threshold (minimum similarity to merge)")
    if n_groups is not None:
        if isinstance(n_groups, bool) or not isinstance(n_groups, int):
            raise TypeError(f"n_groups must be an int, got {type(n_groups).__name__}")
        if not 1 <= n_groups <= tasks:
            raise ValueError(f"n_groups must lie in [1, T] = [1, {tasks}], got {n_groups}")
    elif isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")


def positive(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def choice(value, options, name: str):
    if value not in options:
        raise ValueError(f"{name} must be one of {', '.join(repr(o) for o in options)}; got {value!r}")
    return value
