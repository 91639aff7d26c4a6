"""Helpers the methods share for their inputs and state: the task losses as one tensor, option
vectors kept on the device, and the key check of ``load_state_dict``."""

from __future__ import annotations

import torch


def stacked_losses(losses) -> torch.Tensor:
    """The task losses (a sequence of scalars, or one tensor) as one [T] tensor that keeps their graph."""
    if isinstance(losses, torch.Tensor):
        return losses.reshape(-1)
    return torch.stack([loss.reshape(()) for loss in losses])


def on_device(cache: dict, values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """An option vector as a float64 tensor on ``device``, built once per device: a copy from the
    host at every step would wait for the device each time."""
    device = torch.device(device)
    if device not in cache:
        cache[device] = torch.tensor(values, dtype=torch.float64, device=device)
    return cache[device]


def check_keys(method: str, state, keys: set[str], *, empty_ok: bool = False) -> None:
    """``state`` must be a dict with exactly ``keys`` (or empty, when ``empty_ok``: a method that
    has not run yet)."""
    if not isinstance(state, dict):
        raise TypeError(f"{method}: a state_dict must be a dict, got {type(state).__name__}")
    if (state or not empty_ok) and set(state) != keys:
        raise ValueError(f"{method}: a state_dict with the keys {sorted(keys)}{' (or an empty one)' if empty_ok else ''} "
                         f"expected, got {sorted(state)}")
