"""Input checks shared by the public ops: each raises a ValueError or TypeError that names the
argument and the problem. None of them reads tensor values from a CUDA device (no host sync)."""

from __future__ import annotations

import math
import numbers

import torch

from fastmtl._numerics import accumulate_dtype

IMPLS = ("auto", "cpp", "cuda", "torch")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def is_bool(value) -> bool:
    """bool or numpy.bool_: flags, never numbers here (True would pass as 1). numpy.bool_ is not
    registered as a number today; checked by name too so that this never depends on it."""
    kind = type(value)
    return isinstance(value, bool) or (kind.__module__ == "numpy" and kind.__name__ in ("bool_", "bool"))


def real(value, name: str, what: str = "a number") -> float:
    """A real number (int, float, numpy scalar...: numbers.Real) as a Python float; bool rejected."""
    if is_bool(value) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {what}, got {type(value).__name__}")
    return float(value)


def integer(value, name: str, what: str = "an int") -> int:
    """An integer (int, numpy integer...: numbers.Integral) as a Python int; bool rejected."""
    if is_bool(value) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {what}, got {type(value).__name__}")
    return int(value)


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
    leak = real(leak, "leak", "a float in [0, 1] or a [T] tensor")
    if not (0.0 <= leak <= 1.0):  # also rejects NaN
        raise ValueError(f"leak must lie in [0, 1], got {leak}")
    return torch.full((tasks,), leak, dtype=acc_dtype, device=G.device)


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


def clustering_target(n_groups, threshold, tasks: int) -> tuple[int | None, float | None]:
    """(n_groups, threshold) as Python numbers, exactly one of them given."""
    if (n_groups is None) == (threshold is None):
        raise ValueError("give exactly one of n_groups (number of groups) and threshold (minimum similarity to merge)")
    if n_groups is not None:
        n_groups = integer(n_groups, "n_groups")
        if not 1 <= n_groups <= tasks:
            raise ValueError(f"n_groups must lie in [1, T] = [1, {tasks}], got {n_groups}")
        return n_groups, None
    if is_bool(threshold) or not isinstance(threshold, numbers.Real) or not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    return None, float(threshold)


def unit_interval(value, name: str) -> float:
    """A real number in [0, 1] (a similarity threshold) as a Python float; NaN rejected."""
    value = real(value, name)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1] (a similarity threshold), got {value!r}")
    return value


def positive(value, name: str) -> float:
    if is_bool(value) or not isinstance(value, numbers.Real) or not value > 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def batch_size(batch, columns: int) -> int:
    """GradDrop's batch: a positive integer dividing the P columns."""
    if is_bool(batch) or not isinstance(batch, numbers.Integral) or batch < 1 or columns % int(batch):
        raise ValueError(f"batch must be a positive int dividing P = {columns}, got {batch!r}")
    return int(batch)


def no_overlap(out: torch.Tensor, G: torch.Tensor, name: str = "out") -> None:
    """``out`` must not share memory with G: the kernels write it while they still read G (an
    out = G[0] gave wrong numbers). Conservative: any intersection of the byte ranges the two
    tensors' elements can occupy counts, whatever their storages. Reads no tensor values."""
    if out.device.type == "meta" or torch.compiler.is_compiling():  # no addresses to compare
        return

    def span(t: torch.Tensor) -> tuple[int, int]:
        last = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
        return t.data_ptr(), t.data_ptr() + (last + 1) * t.element_size()

    (o_first, o_end), (g_first, g_end) = span(out), span(G)
    if o_first < g_end and g_first < o_end:
        raise ValueError(f"{name} overlaps G in memory (e.g. {name} is a row or view of G); it must be a separate "
                         "tensor, since it is written while G is still being read")


def choice(value, options, name: str):
    if value not in options:
        raise ValueError(f"{name} must be one of {', '.join(repr(o) for o in options)}; got {value!r}")
    return value
