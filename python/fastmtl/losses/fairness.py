"""FairBranch's fairness loss and its per-task weight (Roy et al. 2024, Eq. 1 and §III-A).

    F_t = Σ_y max_s CE_t(· | Y = y, S = s)

the mean cross-entropy within each (label, sensitive group) cell, the worst group per label,
summed over labels. A cell with no sample in the batch is skipped (the authors' code would give
NaN); a label with no sample contributes 0.

λ_t = 0 when the task head's accuracy and fairness gradients conflict (∇_θt L_t · ∇_θt F_t < 0,
θ_t the head's weight), else 1: the fairness loss is dropped for a step where it would pull the
head against its own accuracy.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from fastmtl import _validate
from fastmtl._numerics import accumulate_dtype


def _labels(value: torch.Tensor, name: str, rows: int, device) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape [N], got {type(value).__name__}")
    if value.is_floating_point() or value.is_complex():
        raise TypeError(f"{name} must hold integer (or bool) labels, got {value.dtype}")
    if value.dim() != 1 or value.shape[0] != rows:
        raise ValueError(f"{name} must have shape [N] = [{rows}] (one label per sample), got {tuple(value.shape)}")
    if value.device != device:
        raise ValueError(f"{name} is on {value.device} but logits are on {device}")
    return value.long()


def fairness_loss(logits: torch.Tensor, y_true: torch.Tensor, sensitive: torch.Tensor, *,
                  num_groups: int | None = None) -> torch.Tensor:
    """Eq. 1 of FairBranch for one task: Σ over labels of the max over sensitive groups of the
    mean cross-entropy within the (label, group) cell; empty cells skipped.

    ``logits``: [N, C] class scores (cross-entropy, labels 0..C-1; the paper's heads are 2-way)
    or [N] / [N, 1] one binary logit (binary cross-entropy, labels 0/1). ``y_true`` [N] integer
    labels, ``sensitive`` [N] integer group ids in 0..num_groups-1.
    ``num_groups``: the number of sensitive groups (>= 2). Given, the loss reads nothing back
    from the device (a batch may miss a group: its cells are empty). None: the groups are the
    distinct values of ``sensitive`` in this batch, read on the host, and fewer than two raise a
    ValueError (a loss that compares groups needs two).
    Differentiable in ``logits``; a 0-d tensor in their dtype (0 for an empty batch), with the
    cells' sums and means in float32 for float16/bfloat16 logits."""
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, got {getattr(logits, 'dtype', type(logits).__name__)}")
    binary = logits.dim() == 1 or (logits.dim() == 2 and logits.shape[1] == 1)
    if logits.dim() not in (1, 2):
        raise ValueError(f"logits must be [N, C] class scores or [N] binary logits, got shape {tuple(logits.shape)}")
    rows = logits.shape[0]
    y = _labels(y_true, "y_true", rows, logits.device)
    s = _labels(sensitive, "sensitive", rows, logits.device)
    if num_groups is None:
        groups, s = torch.unique(s, return_inverse=True)  # reads the batch's groups on the host
        if rows and groups.numel() < 2:
            raise ValueError(f"sensitive holds one group ({groups.tolist()}) in this batch: the fairness loss "
                             "compares groups; pass num_groups= (the number of groups in the data) to accept it")
        num_groups = max(int(groups.numel()), 2)
    else:
        num_groups = _validate.integer(num_groups, "num_groups")
        if num_groups < 2:
            raise ValueError(f"num_groups must be >= 2 (a sensitive attribute with one group has nothing to "
                             f"compare), got {num_groups}")
    classes = 2 if binary else logits.shape[1]
    if binary:
        per_sample = F.binary_cross_entropy_with_logits(logits.reshape(-1), y.to(logits.dtype), reduction="none")
    else:
        per_sample = F.cross_entropy(logits, y, reduction="none")
    # Out-of-range labels or groups fail in index_add (CPU) or device-assert (CUDA), with no host
    # sync: a group id outside [0, num_groups) is sent past the end (y * num_groups + s alone
    # would land in another label's cell).
    cells = classes * num_groups
    cell = torch.where((s >= 0) & (s < num_groups), y * num_groups + s, torch.full_like(s, cells))
    # Sums and counts in float32 for float16/bfloat16 logits (bfloat16 counts only to 256 exactly).
    per_sample = per_sample.to(accumulate_dtype(per_sample.dtype))
    sums = per_sample.new_zeros(cells).index_add(0, cell, per_sample)
    counts = per_sample.new_zeros(cells).index_add(0, cell, torch.ones_like(per_sample))
    means = (sums / counts.clamp_min(1)).reshape(classes, num_groups)
    present = (counts > 0).reshape(classes, num_groups)
    worst = torch.where(present, means, torch.full_like(means, float("-inf"))).amax(dim=1)
    return torch.where(present.any(dim=1), worst, torch.zeros_like(worst)).sum().to(logits.dtype)


def fairness_weights(accuracy_grads, fairness_grads) -> torch.Tensor:
    """λ [T]: 1 where the head's accuracy and fairness gradients agree (dot >= 0), 0 where they
    conflict. ``accuracy_grads``/``fairness_grads``: one gradient of each task's head weight
    each (any shapes, equal per task). Computed on the device, in the gradients' dtype."""
    accuracy_grads, fairness_grads = list(accuracy_grads), list(fairness_grads)
    if len(accuracy_grads) != len(fairness_grads) or not accuracy_grads:
        raise ValueError(f"give one accuracy and one fairness gradient per task, got {len(accuracy_grads)} and "
                         f"{len(fairness_grads)}")
    dots = []
    for t, (a, f) in enumerate(zip(accuracy_grads, fairness_grads)):
        if a.shape != f.shape:
            raise ValueError(f"task {t}: the accuracy gradient has shape {tuple(a.shape)}, the fairness gradient "
                             f"{tuple(f.shape)}")
        dots.append(torch.dot(a.reshape(-1).double(), f.reshape(-1).double()))
    return (torch.stack(dots) >= 0).to(accuracy_grads[0].dtype)
