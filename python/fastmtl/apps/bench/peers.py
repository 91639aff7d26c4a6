"""Competitor implementations, used only by the benchmarks.

Each takes the task-gradient matrix G [T, P] and returns the combined gradient [P] (the
similarity peer takes a list of parameter matrices and returns the T×T CKA matrix).
"""

import random

import torch
from torchjd.aggregation import GradDrop, PCGrad

# torchjd aggregators are nn.Modules: build them once so construction is not timed.
_TORCHJD_PCGRAD = PCGrad()
_TORCHJD_GRADDROP = GradDrop()


def libmtl_style_pcgrad(G: torch.Tensor) -> torch.Tensor:
    """PCGrad with LibMTL's cost model: a loop over pairs of full vectors (re-implemented here,
    not copied; it skips j = i as the paper, where LibMTL 1.1.5's loop also meets g_i itself).

    O(T²) passes over full P-vectors, and the Python ``if`` on a 0-d tensor forces a host
    sync per pair: that is LibMTL's cost model, kept on purpose.
    """
    grads = G
    pc_grads = G.clone()
    tasks = list(range(G.shape[0]))
    for i in tasks:
        order = tasks.copy()
        random.shuffle(order)
        for j in order:
            if j == i:
                continue
            g_ij = torch.dot(pc_grads[i], grads[j])
            if g_ij < 0:
                pc_grads[i] -= g_ij * grads[j] / grads[j].norm().pow(2)
    return pc_grads.sum(0)


def torchjd_pcgrad(G: torch.Tensor) -> torch.Tensor:
    return _TORCHJD_PCGRAD(G)


def torchjd_graddrop(G: torch.Tensor) -> torch.Tensor:
    return _TORCHJD_GRADDROP(G)


def memory_floor(G: torch.Tensor) -> torch.Tensor:
    """One read of G as the issue defines it, G.sum(0). On CPU torch reduces over the strided
    dimension, which runs below memory speed: see flat_read for the tight bound."""
    return G.sum(0)


def flat_read(G: torch.Tensor) -> torch.Tensor:
    """One contiguous read of G (a full reduction): the least any method that looks at every
    gradient entry must spend."""
    return G.reshape(-1).sum()


def per_pair_cka(thetas: list[torch.Tensor]) -> torch.Tensor:
    """The T×T linear-CKA matrix one pair at a time, as FairBranch's code builds it (re-implemented
    here, not copied): Eq. 9 with the centring matrix H and explicit traces for each pair."""
    n = thetas[0].shape[0]
    H = torch.eye(n, dtype=thetas[0].dtype) - 1.0 / n
    S = torch.eye(len(thetas), dtype=thetas[0].dtype)
    for i, a in enumerate(thetas):
        for j in range(i + 1, len(thetas)):
            b = thetas[j]
            ka, kb = H @ (a @ a.T) @ H, H @ (b @ b.T) @ H
            S[i, j] = S[j, i] = torch.trace(ka @ kb) / torch.sqrt(torch.trace(ka @ ka) * torch.trace(kb @ kb))
    return S


def pytorch_pcgrad_style_backward(objectives, params) -> None:
    """Pytorch-PCGrad's ``pc_backward`` (github.com/WeiChengTseng/Pytorch-PCGrad; re-implemented
    here, not copied), its cost model kept: one backward per objective into ``.grad``, the flattened
    gradients and "has a gradient" masks, the projection loop over full vectors with a Python
    ``if`` per pair (a host sync), the mean over the objectives on the parameters every objective
    reaches and the sum elsewhere, written back to ``.grad``."""
    grads, masks = [], []
    for objective in objectives:
        for p in params:
            p.grad = None
        objective.backward(retain_graph=True)
        grads.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params]))
        masks.append(torch.cat([torch.full((p.numel(),), p.grad is not None, dtype=torch.bool) for p in params]))
    shared = torch.stack(masks).prod(0).bool()
    projected, tasks = [g.clone() for g in grads], list(range(len(grads)))
    for g_i in projected:
        random.shuffle(tasks)
        for j in tasks:
            dot = torch.dot(g_i, grads[j])
            if dot < 0:
                g_i -= dot * grads[j] / grads[j].norm() ** 2
    merged = torch.zeros_like(grads[0])
    merged[shared] = torch.stack([g[shared] for g in projected]).mean(0)
    merged[~shared] = torch.stack([g[~shared] for g in projected]).sum(0)
    offset = 0
    for p in params:
        p.grad = merged[offset:offset + p.numel()].view_as(p).clone()
        offset += p.numel()
