"""FBGrad (FairBranch, Roy et al. 2024, Eq. 12): where task groups were merged under one new
branch, the fairness gradients of their child parameters (the heads at the first merge, the
branch copies of the previous branching later on) are projected apart when they conflict.

For two children α and β, when g_α · g_β < 0 on the child's weight, both are replaced at once,
each against the other's original:

    g_α ← g_α - (g_α·g_β / |g_β|²) g_β,      g_β ← g_β - (g_β·g_α / |g_α|²) g_α,

which is PCGrad on the 2-row matrix [g_α; g_β] with ``shuffle=False`` (the rows' sum is
``fastmtl.project_conflicts(G, shuffle=False)``). The child's other parameters (its bias, a
BatchNorm's scale) follow the weight's test: projected with their own coefficients whenever the
weights conflict, as the authors' code does. With more than two children (a merge found by
clustering), each row is projected against the others' originals in index order, as PCGrad does.
The tests and coefficients come from k×k Gram matrices (``fastmtl.gram_for_weights``: float64
where float32 would overflow); nothing syncs with a CUDA device.
"""

from __future__ import annotations

import torch

from fastmtl import _validate, functional
from fastmtl._numerics import accumulate_dtype


def _projection(K: torch.Tensor, fired: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """A [k, k] with row i = the coefficients of g_i's projected version in the originals
    (g_iᴾ = A_i · G), and the [k, k] decisions "g_i was projected against g_j". ``fired``: the
    weight's decisions to follow (None: decide from K, i.e. this is the weight). A non-finite K
    fires nothing (an Inf dot would "conflict"), for the weight and for a follower alike."""
    k = K.shape[0]
    A = torch.eye(k, dtype=K.dtype, device=K.device)
    decided = torch.zeros(k, k, dtype=torch.bool, device=K.device)
    finite = torch.isfinite(K).all()
    for i in range(k):
        for j in range(k):
            if i == j:
                continue
            dot, norm = A[i] @ K[:, j], K[j, j]
            coefficient = dot / torch.where(norm > 0, norm, torch.ones_like(norm))
            fire = ((dot < 0) if fired is None else fired[i, j]) & (norm > 0) & finite
            A[i, j] = A[i, j] - torch.where(fire, coefficient, torch.zeros_like(coefficient))
            decided[i, j] = fire
    return A, decided


def _rows(G: torch.Tensor, A: torch.Tensor, decided: torch.Tensor) -> torch.Tensor:
    """Row i = g_i + Σ_j A_ij g_j over the projections that fired, in G's accumulation dtype and
    stored in G's: a projection that did not fire adds nothing (not 0 · g_j, which is NaN where
    g_j is), so an unprojected row comes back exactly as it went in."""
    acc = accumulate_dtype(G.dtype)
    Gacc, A = G.to(acc), A.to(acc)
    rows = []
    for i in range(G.shape[0]):
        row = Gacc[i]
        for j in range(G.shape[0]):
            if j != i:
                row = torch.where(decided[i, j], row + A[i, j] * Gacc[j], row)
        rows.append(row)
    return torch.stack(rows).to(G.dtype)


def fbgrad(G: torch.Tensor, *followers: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """FBGrad on the fairness gradients of k merged children: ``G`` [k, P] their weights' gradients
    (one row per child), ``followers`` [k, Q] each, other parameters of the same children that
    follow the weight's test. Returns the projected G (and the projected followers, as a tuple
    (G, *followers)), new tensors in the input dtype. k = 1 returns copies. A zero row is never
    projected against; NaN/Inf anywhere in G make every test false (they reach every dot product in
    Gram space): every row, and every follower, comes back as it went in, NaN/Inf included where
    they were, and no other row takes them up. NaN/Inf in a follower leave that follower's rows as
    they came (the weights and the other followers are still projected)."""
    G = _validate.task_matrix(G)
    for index, follower in enumerate(followers):
        follower = _validate.task_matrix(follower, f"followers[{index}]")
        if follower.shape[0] != G.shape[0] or follower.device != G.device:
            raise ValueError(f"followers[{index}] must have G's {G.shape[0]} rows and device {G.device}, got shape "
                             f"{tuple(follower.shape)} on {follower.device}")
    A, fired = _projection(functional.gram_for_weights(G), None)
    projected = _rows(G, A, fired)
    if not followers:
        return projected
    return (projected, *(_rows(F.detach(), *_projection(functional.gram_for_weights(F), fired)) for F in followers))
