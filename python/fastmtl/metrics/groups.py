"""Accuracy per group and the worst group's (Kulkarni et al. 2024): groups are given as integer
labels per sample, e.g. ``attribute_groups(y, a)`` = n_a·y + a for a class y and an attribute a.
Empty groups are left out. Average accuracy is sample-weighted (Σ correct / Σ samples)."""

from __future__ import annotations

import torch

from fastmtl.metrics._inputs import any_tensor, labels, result, same_length


def attribute_groups(y_true, sensitive, n_sensitive: int | None = None):
    """The group label n_a·y + a of each sample, for class y and attribute a in [0, n_a)
    (n_a: ``n_sensitive``, default max(a) + 1)."""
    y, a = labels(y_true, "y_true"), labels(sensitive, "sensitive")
    same_length(y_true=y, sensitive=a)
    n_a = int(a.max()) + 1 if n_sensitive is None else int(n_sensitive)
    if bool((a < 0).any()) or bool((a >= n_a).any()) or bool((y < 0).any()):
        raise ValueError(f"labels must lie in [0, n) (the attribute in [0, {n_a}))")
    groups = n_a * y + a
    return groups if any_tensor(y_true, sensitive) else groups.numpy()


def _per_group(y_true, y_pred, groups):
    y, p = labels(y_true, "y_true"), labels(y_pred, "y_pred")
    g = labels(groups, "groups", device=y.device)
    p = p.to(y.device)
    same_length(y_true=y, y_pred=p, groups=g)
    ids, index = torch.unique(g, return_inverse=True)  # sorted group ids that occur
    correct = torch.zeros(len(ids), dtype=torch.float64, device=y.device).index_add_(0, index, (y == p).double())
    count = torch.bincount(index, minlength=len(ids)).double()
    return ids, correct / count


def group_accuracies(y_true, y_pred, groups) -> dict:
    """{group id: accuracy of its samples} for every group that has samples."""
    ids, accuracy = _per_group(y_true, y_pred, groups)
    as_tensors = any_tensor(y_true, y_pred, groups)
    return {int(i): result(a, as_tensors) for i, a in zip(ids.tolist(), accuracy)}


def worst_group_accuracy(y_true, y_pred, groups):
    """The lowest accuracy over the groups that have samples (WGA)."""
    _, accuracy = _per_group(y_true, y_pred, groups)
    return result(accuracy.min(), any_tensor(y_true, y_pred, groups))


def average_accuracy(y_true, y_pred):
    """Σ correct / Σ samples (sample-weighted, as the worst-group papers report it)."""
    y, p = labels(y_true, "y_true"), labels(y_pred, "y_pred")
    same_length(y_true=y, y_pred=p)
    return result((y == p.to(y.device)).double().mean(), any_tensor(y_true, y_pred))
