"""Checks for method options, run once when a method is built: each returns the value as a
plain Python number (numpy scalars accepted) or raises a ValueError/TypeError naming the
option and the method."""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch


def _is_bool(value) -> bool:
    return isinstance(value, (bool, np.bool_))  # a number to Python, never a number option here


def real(method: str, name: str, value, *, low: float | None = None, high: float | None = None,
         low_open: bool = False) -> float:
    """A finite real number in [low, high] (low excluded when ``low_open``)."""
    if _is_bool(value) or not isinstance(value, numbers.Real):
        raise TypeError(f"{method}: {name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{method}: {name} must be finite, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{method}: {name} must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"{method}: {name} must be <= {high}, got {value!r}")
    return value


def integer(method: str, name: str, value, *, low: int = 1) -> int:
    if _is_bool(value) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{method}: {name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{method}: {name} must be an int >= {low}, got {value!r}")
    return int(value)


def flag(method: str, name: str, value) -> bool:
    if not _is_bool(value):
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
