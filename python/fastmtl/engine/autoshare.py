"""Which parameters each loss reaches: the autograd graph walk behind ``shared="auto"``.

A loss reaches a parameter when the parameter's AccumulateGrad node lies in the loss's backward
graph (a parameter used only under ``detach()`` or ``no_grad``, or one with requires_grad=False,
has no such node). One pass over the union of the losses' graphs labels every node with the set
of losses whose graph holds it (a bit mask), in topological order (Kahn): a node's mask is the
union of its parents' masks, known once every parent is done. Iterative, so a deep graph (a long
sequence model, hundreds of layers) cannot hit Python's recursion limit, and each node and edge is
visited once whatever the number of losses.

Reentrant activation checkpointing (``torch.utils.checkpoint(..., use_reentrant=True)``) re-runs
its forward inside the backward pass, so the parameters inside a checkpointed block are not in
the graph before ``backward``: the walk raises when it meets one (MTLOptimizer's per-task passes
cannot use it either: torch refuses ``backward(inputs=...)`` through it); the non-reentrant form
keeps them in the graph and works.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

_ACCUMULATE = getattr(getattr(torch._C, "_functions", None), "AccumulateGrad", None)  # writes a leaf's .grad


def _accumulates(node) -> bool:
    """Whether ``node`` is a leaf's AccumulateGrad (by name too, should torch move the class)."""
    return isinstance(node, _ACCUMULATE) if _ACCUMULATE is not None else type(node).__name__ == "AccumulateGrad"


def reaching_losses(roots: Sequence[torch.Tensor], params: Sequence[torch.Tensor],
                    through: Mapping[int, torch.Tensor] | None = None) -> list[int]:
    """For each of ``params``, the bit mask of the ``roots`` whose graph reaches it (bit ``i``:
    ``roots[i]``). ``through``: ``{id(leaf): tensor}`` — a leaf that stands for ``tensor`` (the
    detached representation of feature mode): a root reaching the leaf also reaches what
    ``tensor``'s graph reaches."""
    through = through or {}
    index = {id(p): i for i, p in enumerate(params)}
    masks = [0] * len(params)
    node_mask: dict = {}
    children: dict = {}  # node -> its next nodes (an edge listed twice counts twice)
    parents: dict = {}  # node -> number of incoming edges not yet processed
    pending = []
    for bit, root in enumerate(roots):
        node = root.grad_fn
        if node is None:  # the root is a leaf itself
            if id(root) in index:
                masks[index[id(root)]] |= 1 << bit
            continue
        node_mask[node] = node_mask.get(node, 0) | 1 << bit
        if node not in children:
            children[node] = None
            pending.append(node)
    # Discover the union of the graphs and count each node's incoming edges.
    while pending:
        node = pending.pop()
        if type(node).__name__ == "CheckpointFunctionBackward":
            raise ValueError("shared='auto' cannot see the parameters inside reentrant activation checkpointing "
                             "(torch.utils.checkpoint(..., use_reentrant=True)); use use_reentrant=False, which "
                             "MTLOptimizer's per-task backward passes need anyway")
        nexts = [child for child, _ in node.next_functions if child is not None]
        if _accumulates(node):
            link = through.get(id(node.variable))
            if link is not None and link.grad_fn is not None:
                nexts.append(link.grad_fn)
        children[node] = nexts
        for child in nexts:
            parents[child] = parents.get(child, 0) + 1
            if child not in children:
                children[child] = None
                pending.append(child)
    # Propagate the masks from the nodes with no parent left, parents before children.
    ready = [node for node in children if parents.get(node, 0) == 0]
    while ready:
        node = ready.pop()
        mask = node_mask.get(node, 0)
        if _accumulates(node) and id(node.variable) in index:
            masks[index[id(node.variable)]] |= mask
        for child in children[node]:
            node_mask[child] = node_mask.get(child, 0) | mask
            parents[child] -= 1
            if parents[child] == 0:
                ready.append(child)
    return masks
