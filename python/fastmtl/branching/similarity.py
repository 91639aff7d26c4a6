"""Similarity of task parameters (FairBranch, Roy et al. 2024, Eq. 7-11): linear CKA between
parameter matrices, all pairs from one Gram computation, and the greedy pairing of the most
similar task groups.

Linear CKA of θ_a [n, p] and θ_b [n, q] (one row per input unit: an nn.Linear's ``weight.T``):
with K = θθᵀ and H = I - 11ᵀ/n,

    cka(a, b) = tr(HK_aH · HK_bH) / sqrt(tr((HK_aH)²) · tr((HK_bH)²)).

HK_aH is symmetric, so tr(HK_aH · HK_bH) is the Frobenius inner product of the two centred
kernels, and CKA is the cosine of the flattened centred kernels. The T×T matrix therefore comes
from one Gram matrix of the [T, n²] kernels (``fastmtl.cosine_similarity``, on the CPU and CUDA
kernels), not from T²/2 separate pairs. Memory: T·n² values (n = rows, e.g. a layer's fan-in).
"""

from __future__ import annotations

import functools

import torch

from fastmtl import _validate, functional
from fastmtl._numerics import accumulate_dtype


# The norms of the scaled kernels below are 0 or >= 1/16 (see _centred_kernels): this eps only
# turns 0/0 into 0 (eps² = 2^-40 is a normal float32), and never touches a non-zero kernel.
_EPS = 2.0**-20


def _centred_kernels(thetas: torch.Tensor) -> torch.Tensor:
    """H θ θᵀ H flattened, times a power of two, for a batch θ [m, n, p] (one kernel per row).

    θ's first row is subtracted first (H(θ - 1r) = Hθ for any row r), so a matrix whose rows are
    all equal gives an exactly zero kernel, whatever the rounding of a mean. The difference is
    scaled by 2^-e, e the exponent of its largest |entry| (exact, subnormal entries included;
    CKA is scale-invariant): its entries lie in [-1, 1], one of them in [1/2, 1). Then the rows
    are centred (subtracting the mean row centres the kernel); some centred entry keeps at least
    half the largest one (row 0 of the difference is 0), so a non-zero kernel has an entry of at
    least 1/16 on its diagonal and none above p: the Gram can neither overflow nor underflow."""
    shifted = thetas - thetas[:, :1]
    _, exponent = torch.frexp(shifted.abs().amax(dim=(1, 2), keepdim=True))  # NaN/Inf: exponent 0, kept
    half = torch.div(exponent, 2, rounding_mode="floor")
    one = torch.ones(half.shape, dtype=thetas.dtype, device=thetas.device)
    # Two power-of-two factors (2^-e itself may not be representable), each an exact multiply.
    shifted = shifted * torch.ldexp(one, -half) * torch.ldexp(one, half - exponent)
    centred = shifted - shifted.mean(dim=1, keepdim=True)
    return (centred @ centred.transpose(1, 2)).flatten(1)


def _kernel_matrix(params: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """The [T, n²] centred kernels, the matrices of one shape batched together (the usual case:
    heads of one width, or the copies of one layer): a few ops for all of them, not per matrix."""
    by_shape: dict[tuple, list[int]] = {}
    for t, theta in enumerate(params):
        by_shape.setdefault(tuple(theta.shape), []).append(t)
    n = params[0].shape[0]
    kernels = torch.empty(len(params), n * n, dtype=dtype, device=params[0].device)
    for indices in by_shape.values():
        batch = torch.stack([params[t].detach().to(dtype) for t in indices])
        kernels[indices] = _centred_kernels(batch)
    return kernels


def _matrices(params, name: str) -> list[torch.Tensor]:
    if isinstance(params, torch.Tensor) or not hasattr(params, "__iter__"):
        raise TypeError(f"{name} must be a list of 2-D parameter matrices, got {type(params).__name__}")
    params = list(params)
    if not params:
        raise ValueError(f"{name} is empty: give at least one parameter matrix")
    for t, theta in enumerate(params):
        if not isinstance(theta, torch.Tensor):
            raise TypeError(f"{name}[{t}] must be a torch.Tensor, got {type(theta).__name__}")
        if theta.dtype not in _validate.FLOAT_DTYPES:
            raise TypeError(f"{name}[{t}] must have a floating-point dtype, got {theta.dtype}")
        if theta.dim() != 2 or theta.shape[0] == 0 or theta.shape[1] == 0:
            raise ValueError(f"{name}[{t}] must be a non-empty 2-D [n, p] matrix (one row per input unit, e.g. an "
                             f"nn.Linear's weight.T), got shape {tuple(theta.shape)}")
    rows, devices = {theta.shape[0] for theta in params}, {theta.device for theta in params}
    if len(rows) != 1:
        raise ValueError(f"{name}: every matrix must have the same number of rows n (the kernels are n x n), got "
                         f"{[theta.shape[0] for theta in params]}")
    if len(devices) != 1:
        raise ValueError(f"{name}: every matrix must be on one device, got {sorted(map(str, devices))}")
    return params


def parameter_similarity(params, *, impl: str = "auto") -> torch.Tensor:
    """The T×T linear-CKA matrix of T parameter matrices θ_t [n, p_t] (same n, any p_t).

    Computed in float32 (float64 if any input is float64) as the cosine matrix of the centred
    kernels (each scaled by a power of two, which CKA ignores), in one Gram pass (``impl`` as in
    ``fastmtl.gram``). The diagonal is 1 (up to rounding); a matrix whose centred kernel is zero
    (every row equal, or n = 1) has similarity 0 with every matrix, itself included (Eq. 9 is 0/0
    there). NaN/Inf in a matrix give NaN in its row and column.
    """
    params = _matrices(params, "params")
    dtype = accumulate_dtype(functools.reduce(torch.promote_types, [theta.dtype for theta in params]))
    return functional.cosine_similarity(_kernel_matrix(params, dtype), eps=_EPS, impl=impl)


def linear_cka(A: torch.Tensor, B: torch.Tensor, *, impl: str = "auto") -> torch.Tensor:
    """Linear CKA (Eq. 9) of two parameter matrices with the same number of rows: a 0-d tensor in
    [0, 1] (0 when either centred kernel is zero). See ``parameter_similarity``."""
    return parameter_similarity([A, B], impl=impl)[0, 1]


def pair_tasks(S: torch.Tensor, tau: float) -> list[tuple[int, ...]]:
    """FairBranch's greedy grouping (Eq. 10-11): repeatedly take the most similar remaining pair
    (i, j) with S[i, j] >= tau and remove both; what is left stays single. Ties go to the pair
    that comes first in index order, (i, j) before (i, j') before (i', ·) for i < i', j < j'.

    ``S``: a symmetric, finite [T, T] similarity matrix (the diagonal is ignored); ``tau`` in
    [0, 1]. Returns the groups, pairs and singletons, each a sorted tuple of task indices,
    ordered by their first task. Runs on the host: O(T² log T)."""
    S = _validate.similarity_matrix(S)
    tau = _validate.unit_interval(tau, "tau")
    T = S.shape[0]
    rows, cols = torch.triu_indices(T, T, offset=1)
    values = S[rows, cols]
    order = torch.sort(-values, stable=True).indices  # triu_indices lists pairs in index order: ties keep it
    free = [True] * T
    groups: list[tuple[int, ...]] = []
    for k in order.tolist():
        if values[k] < tau:
            break
        i, j = int(rows[k]), int(cols[k])
        if free[i] and free[j]:
            free[i] = free[j] = False
            groups.append((i, j))
    groups += [(t,) for t in range(T) if free[t]]
    return sorted(groups)
