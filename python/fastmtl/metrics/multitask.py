"""Multi-task summaries: Δm against single-task baselines (GO4Align's ``delta_fn``), the mean
rank of methods over metrics, and FairBranch's knowledge and discrimination gains."""

from __future__ import annotations

import torch

from fastmtl.metrics._inputs import any_tensor, as_tensor, result


def _directions(higher_is_better, K: int, device) -> torch.Tensor:
    """+1 where higher is better, -1 where lower is, as a [K] float64 tensor."""
    if isinstance(higher_is_better, bool):
        flags = torch.full((K,), higher_is_better, device=device)
    else:
        flags = as_tensor(higher_is_better, "higher_is_better", device=device)
        if flags.dtype != torch.bool or flags.shape != (K,):
            raise ValueError(f"higher_is_better must be a bool or K = {K} bools, got {higher_is_better!r}")
    return flags.double() * 2 - 1


def delta_m(values, baselines, higher_is_better):
    """Δm% = 100/K Σ_k (−1)^{δ_k} (M_k − M_b,k) / M_b,k, δ_k = 1 where higher is better: the mean
    relative change against the baselines, signed so that lower is better (negative: better than
    the baselines). ``values``, ``baselines``: [K] metrics; ``higher_is_better``: one bool or K."""
    M = as_tensor(values, "values", dtype=torch.float64)
    base = as_tensor(baselines, "baselines", dtype=torch.float64, device=M.device)
    if M.dim() != 1 or M.shape != base.shape or M.numel() == 0:
        raise ValueError(f"values and baselines must be two [K] vectors of the same length, got "
                         f"{tuple(M.shape)} and {tuple(base.shape)}")
    if bool((base == 0).any()):
        raise ValueError("a baseline is 0: the relative change is undefined")
    sign = -_directions(higher_is_better, M.shape[0], M.device)
    return result(100.0 * (sign * (M - base) / base).mean(), any_tensor(values, baselines))


def average_ranks(scores: torch.Tensor) -> torch.Tensor:
    """Rank 1 for the smallest score of each column of ``scores`` [items, columns], ties sharing
    the average of their ranks (scipy's rankdata "average")."""
    smaller = (scores[None, :, :] < scores[:, None, :]).sum(1)  # [M, K]: how many beat each entry
    equal = (scores[None, :, :] == scores[:, None, :]).sum(1) - 1
    return 1.0 + smaller.double() + 0.5 * equal.double()


def mean_rank(table, higher_is_better=True):
    """MR: each method's rank on each metric (1 = best, ties averaged), averaged over metrics.
    ``table``: [methods, metrics]; returns [methods]."""
    scores = as_tensor(table, "table", dtype=torch.float64)
    if scores.dim() != 2 or scores.numel() == 0:
        raise ValueError(f"table must be a non-empty [methods, metrics] matrix, got shape {tuple(scores.shape)}")
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("table holds NaN or Inf: ranks are undefined")
    sign = _directions(higher_is_better, scores.shape[1], scores.device)
    return result(average_ranks(-sign * scores).mean(1), any_tensor(table))


def _gain(mtl, stl, names: tuple[str, str], reduction: str):
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    a = as_tensor(mtl, names[0], dtype=torch.float64)
    b = as_tensor(stl, names[1], dtype=torch.float64, device=a.device)
    if a.shape != b.shape or a.dim() > 1:
        raise ValueError(f"{names[0]} and {names[1]} must be per-task vectors of the same length, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    gain = a - b
    return result(gain.mean() if reduction == "mean" else gain, any_tensor(mtl, stl))


def knowledge_gain(acc_mtl, acc_stl, *, reduction: str = "mean"):
    """FairBranch Eq. 3: KG(t) = Acc_MTL(t) − Acc_STL(t); by default their mean over tasks (K̄G)."""
    return _gain(acc_mtl, acc_stl, ("acc_mtl", "acc_stl"), reduction)


def discrimination_gain(viol_mtl, viol_stl, *, reduction: str = "mean"):
    """FairBranch Eq. 5: DG(t) = F_viol,MTL(t) − F_viol,STL(t) (lower is fairer); by default the
    mean over tasks (D̄G)."""
    return _gain(viol_mtl, viol_stl, ("viol_mtl", "viol_stl"), reduction)
