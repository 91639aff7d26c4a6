"""Experiments by name. Each experiment module registers one ``Experiment``: a function that
trains every arm for one seed and returns ``{arm: {metric: value}}``, its default seed count,
and its quick and full configurations (``--quick``: a few minutes on 2 cores).

The results may also hold one extra key, ``"_curves"``: ``{arm: {"step": [int], "value":
[float]}}``, one training curve per arm for that seed (what ``curve_label`` names, e.g. the
validation WGA per epoch); the runner collects them into the JSON's ``"curves"`` and plots them.
And one more, ``"_details"``: ``{arm: {...}}``, whatever per-seed record of an arm does not fit
one scalar per metric (per-task values, FairBranch's branching events), JSON-serialisable; the
runner collects them into the JSON's ``"details"``: ``{arm: [one record per seed]}``.

``figures(output, folder)``, when given, draws the experiment's own figures from the finished
output (details included) into ``folder``, next to the JSON, and returns their paths."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

# run(config, seed, progress) -> {arm: {metric: float}} (plus, optionally, "_curves": {arm: {"step": [...],
# "value": [...]}} and "_details": {arm: {...}}); progress(arm) marks one arm done.
RunOneSeed = Callable[[dict, int, Callable[[str], None]], dict]
# figures(output, folder) -> the paths of the figures it wrote into folder.
DrawFigures = Callable[[dict, Path], list[Path]]


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
    curve_label: str | None = None  # what the "_curves" of run() measure, e.g. "validation WGA"
    curve_x: str = "step"  # what their "step" counts, e.g. "fine-tuning epoch"
    figures: DrawFigures | None = None  # the experiment's own figures, drawn after the runner's


EXPERIMENTS: dict[str, Experiment] = {}


def register(experiment: Experiment) -> Experiment:
    if experiment.name in EXPERIMENTS:
        raise ValueError(f"an experiment named {experiment.name!r} is registered already")
    EXPERIMENTS[experiment.name] = experiment
    return experiment
