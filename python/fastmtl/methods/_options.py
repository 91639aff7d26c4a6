"""Checks for method options, run once when a method is built: each returns the value as a
plain Python number (numpy scalars accepted) or raises a ValueError/TypeError naming the
option and the method."""

from __future__ import annotations

import math

import torch

from fastmtl import _validate


def real(method: str, name: str, value, *, low: float | None = None, high: float | None = None,
         low_open: bool = False) -> float:
    """A finite real number in [low, high] (low excluded when ``low_open``)."""
    value = _validate.real(value, f"{method}: {name}", "a real number")
    if not math.isfinite(value):
        raise ValueError(f"{method}: {name} must be finite, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{method}: {name} must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"{method}: {name} must be <= {high}, got {value!r}")
    return value


def integer(method: str, name: str, value, *, low: int = 1) -> int:
    value = _validate.integer(value, f"{method}: {name}")
    if value < low:
        raise ValueError(f"{method}: {name} must be an int >= {low}, got {value!r}")
    return value


def flag(method: str, name: str, value) -> bool:
    if not _validate.is_bool(value):
        raise TypeError(f"{method}: {name} must be True or False, got {value!r}")
    return bool(value)


def one_of(method: str, name: str, value, options: tuple):
    if not any(value == option and type(value) is type(option) for option in options):
        raise ValueError(f"{method}: {name} must be one of {', '.join(repr(o) for o in options)}; got {value!r}")
    return value


def generator(method: str, value):
    if value is not None and not isinstance(value, torch.Generator):
        raise TypeError(f"{method}: generator must be a torch.Generator or None, got {type(value).__name__}")
    return value
