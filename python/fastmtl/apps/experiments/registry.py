"""Experiments by name. Each experiment module registers one ``Experiment``: a function that
trains every arm for one seed and returns ``{arm: {metric: value}}``, its default seed count,
and its quick and full configurations (``--quick``: a few minutes on 2 cores)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

# run(config, seed, progress) -> {arm: {metric: float}}; progress(arm) marks one arm done.
RunOneSeed = Callable[[dict, int, Callable[[str], None]], dict]


@dataclass(frozen=True)
class Experiment:
    name: str
    description: str
    run: RunOneSeed
    arms: tuple[str, ...]
    metrics: tuple[str, ...]
    default_seeds: int
    full_config: dict = field(default_factory=dict)
    quick_config: dict = field(default_factory=dict)  # overrides of full_config
    extras: tuple[str, ...] = ("demo",)  # the pip extras it needs (fastmtl.apps.extras)
    summary: Callable[[dict], dict] | None = None  # whole-run figures from {"arms": ...}, e.g. a ranking


EXPERIMENTS: dict[str, Experiment] = {}


def register(experiment: Experiment) -> Experiment:
    if experiment.name in EXPERIMENTS:
        raise ValueError(f"an experiment named {experiment.name!r} is registered already")
    EXPERIMENTS[experiment.name] = experiment
    return experiment
