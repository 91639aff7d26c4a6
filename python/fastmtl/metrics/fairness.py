"""Group fairness of binary predictions (1 = the positive outcome), named and called as in
fairlearn: the difference between the largest and the smallest rate over the sensitive groups
(two groups: the absolute difference).

* demographic parity: the selection rate P(Ŷ=1 | S=s);
* equal opportunity (FairBranch's EP): the true positive rate P(Ŷ=1 | Y=1, S=s);
* equalized odds: the TPR and false positive rate P(Ŷ=1 | Y=0, S=s) differences, combined by
  ``agg="max"`` (fairlearn's worst case) or ``agg="sum"`` (FairBranch's EO, Roy et al. 2024 Eq. 2).

A rate is undefined for a group without the samples it conditions on (a TPR without positives);
such a group is left out of that difference, and a difference over fewer than two groups is 0.
"""

from __future__ import annotations

import torch

from fastmtl.metrics._inputs import any_tensor, labels, result, same_length


def _binary(value, name: str, device=None) -> torch.Tensor:
    tensor = labels(value, name, device)
    if not bool(((tensor == 0) | (tensor == 1)).all()):
        raise ValueError(f"{name} must hold binary labels 0/1 (1 = the positive outcome)")
    return tensor


def _rate_spread(positive: torch.Tensor, condition: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """max - min over groups of P(positive | condition, group), over the groups where it is defined."""
    _, index = torch.unique(groups, return_inverse=True)
    n = int(index.max()) + 1
    hits = torch.zeros(n, dtype=torch.float64, device=positive.device).index_add_(
        0, index, (positive & condition).double())
    counts = torch.zeros(n, dtype=torch.float64, device=positive.device).index_add_(0, index, condition.double())
    defined = counts > 0
    rates = hits / counts.clamp_min(1)
    if int(defined.sum()) < 2:
        return torch.zeros((), dtype=torch.float64, device=positive.device)
    return rates[defined].max() - rates[defined].min()


def _inputs(y_true, y_pred, sensitive_features):
    y = _binary(y_true, "y_true")
    p = _binary(y_pred, "y_pred", y.device)
    s = labels(sensitive_features, "sensitive_features", y.device)
    same_length(y_true=y, y_pred=p, sensitive_features=s)
    return y.bool(), p.bool(), s


def demographic_parity_difference(y_true, y_pred, *, sensitive_features):
    """Largest minus smallest selection rate P(Ŷ=1 | S=s) (y_true only checked, as in fairlearn)."""
    y, p, s = _inputs(y_true, y_pred, sensitive_features)
    return result(_rate_spread(p, torch.ones_like(p), s), any_tensor(y_true, y_pred, sensitive_features))


def equal_opportunity_difference(y_true, y_pred, *, sensitive_features):
    """Largest minus smallest true positive rate P(Ŷ=1 | Y=1, S=s)."""
    y, p, s = _inputs(y_true, y_pred, sensitive_features)
    return result(_rate_spread(p, y, s), any_tensor(y_true, y_pred, sensitive_features))


def equalized_odds_difference(y_true, y_pred, *, sensitive_features, agg: str = "max"):
    """The TPR and FPR differences combined: ``"max"`` (fairlearn's worst case) or ``"sum"``
    (FairBranch's EO: |ΔTPR| + |ΔFPR|)."""
    if agg not in ("max", "sum"):
        raise ValueError(f"agg must be 'max' or 'sum', got {agg!r}")
    y, p, s = _inputs(y_true, y_pred, sensitive_features)
    tpr, fpr = _rate_spread(p, y, s), _rate_spread(p, ~y, s)
    value = torch.maximum(tpr, fpr) if agg == "max" else tpr + fpr
    return result(value, any_tensor(y_true, y_pred, sensitive_features))
