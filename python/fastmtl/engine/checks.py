"""Checks of what a training loop hands the engine: the task losses and the shared parameters."""

from __future__ import annotations

import torch


def shared_parameter_list(shared, what: str = "shared") -> list[torch.nn.Parameter]:
    """The shared parameters from parameters, a module or an iterable of either. Frozen ones
    (requires_grad=False) are kept: each backward uses those that train at that moment, so a
    parameter frozen or unfrozen during training is handled then."""
    if isinstance(shared, torch.nn.Module):
        shared = shared.parameters()
    if isinstance(shared, torch.Tensor):
        shared = [shared]
    params = []
    for p in shared:
        if isinstance(p, torch.nn.Module):
            params.extend(p.parameters())
        elif isinstance(p, torch.Tensor) and p.is_leaf:
            params.append(p)
        else:
            raise TypeError(f"{what} must hold parameters (leaf tensors) or modules, got {type(p).__name__}")
    if not params:
        raise ValueError(f"{what} must contain at least one parameter")
    devices, dtypes = {p.device for p in params}, {p.dtype for p in params}
    if len(devices) != 1 or len(dtypes) != 1:
        raise ValueError(f"{what} parameters must share one device and dtype, got {devices} and {dtypes}")
    if len({id(p) for p in params}) != len(params):
        raise ValueError(f"{what} lists a parameter twice")
    return params


def check_losses(losses) -> list[torch.Tensor]:
    losses = list(losses) if not isinstance(losses, torch.Tensor) else list(losses.unbind())
    if not losses:
        raise ValueError("losses is empty: give one scalar loss per task")
    for t, loss in enumerate(losses):
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ValueError(f"loss {t} must be a scalar tensor, got {getattr(loss, 'shape', type(loss).__name__)}")
        if not loss.requires_grad:
            raise ValueError(f"loss {t} does not require grad: it depends on no trainable parameter")
    return losses
