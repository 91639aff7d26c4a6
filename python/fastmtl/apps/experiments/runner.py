"""``python -m fastmtl experiment NAME [--quick] [--seeds N] [--out DIR]``: runs every arm of an
experiment for each seed, with a progress bar, and writes

* ``DIR/NAME.json``: ``{"arms": {ARM: {METRIC: [one value per seed]}}, "config": {...},
  "summary": {...}}`` (arms and metrics in lower case with underscores), and, when the experiment
  returns training curves, ``"curves": {ARM: [{"step": [...], "value": [...]} per seed]}``,
  ``"curve_label"`` (what the values are) and ``"curve_x"`` (what the steps count), and, when it
  returns per-seed details, ``"details": {ARM: [one record per seed]}``;
* ``DIR/NAME.png``: each metric per arm, the mean with every seed's value over it, and the
  training curves (one line per arm) when there are any;
* the experiment's own figures, when it has a ``figures`` hook (e.g. ``DIR/NAME_tree.png``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from fastmtl.apps import extras
from fastmtl.apps.experiments import registry
from fastmtl.apps.experiments.plots import plot_arms


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from fastmtl.apps.experiments import EXPERIMENTS  # registers every experiment

    parser.add_argument("name", choices=sorted(EXPERIMENTS), help="which experiment")
    parser.add_argument("--quick", action="store_true", help="a short configuration (a few minutes on 2 cores)")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the experiment's)")
    parser.add_argument("--out", default="experiments-out", help="folder for NAME.json and NAME.png")


def run_experiment(experiment: registry.Experiment, *, quick: bool, seeds: int | None) -> dict:
    """The results dict of the runner's JSON: every arm's metrics, one value per seed."""
    from tqdm import tqdm

    config = {**experiment.full_config, **(experiment.quick_config if quick else {})}
    seeds = experiment.default_seeds if seeds is None else seeds
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    arms = {arm: {metric: [] for metric in experiment.metrics} for arm in experiment.arms}
    curves: dict[str, list[dict]] = {}
    details: dict[str, list] = {}
    started = time.perf_counter()
    with tqdm(total=seeds * len(experiment.arms), desc=experiment.name, unit="arm") as bar:
        for seed in range(seeds):
            def done(arm: str) -> None:
                bar.set_postfix_str(f"seed {seed}, {arm}")
                bar.update(1)

            results = dict(experiment.run(config, seed, done))
            for arm, curve in (results.pop("_curves", None) or {}).items():
                steps, values = [int(s) for s in curve["step"]], [float(v) for v in curve["value"]]
                if len(steps) != len(values):
                    raise RuntimeError(f"experiment {experiment.name!r}: arm {arm!r}'s curve has {len(steps)} steps "
                                       f"and {len(values)} values")
                curves.setdefault(arm, []).append({"step": steps, "value": values})
            for arm, record in (results.pop("_details", None) or {}).items():
                if arm not in experiment.arms:
                    raise RuntimeError(f"experiment {experiment.name!r} returned details for {arm!r}, which is no arm")
                # through JSON now: the summary and figures see what the file will hold (lists, not tuples)
                details.setdefault(arm, []).append(json.loads(json.dumps(record)))
            missing = {arm for arm in experiment.arms if arm not in results}
            if missing:
                raise RuntimeError(f"experiment {experiment.name!r} returned no results for arms {sorted(missing)}")
            for arm, metrics in results.items():
                for metric in experiment.metrics:
                    arms[arm][metric].append(float(metrics[metric]))
    output = {"arms": arms, "config": {**config, "quick": quick, "seeds": seeds},
              "seconds": round(time.perf_counter() - started, 1)}
    if curves:
        output["curves"] = curves
        output["curve_label"] = experiment.curve_label or "training curve"
        output["curve_x"] = experiment.curve_x
    if details:
        output["details"] = details
    output["summary"] = experiment.summary(output) if experiment.summary else {}
    return output


def run(args: argparse.Namespace) -> int:
    from fastmtl.apps.experiments import EXPERIMENTS

    experiment = EXPERIMENTS[args.name]
    for extra in experiment.extras:
        extras.require(extra, f"experiment {args.name}")
    output = run_experiment(experiment, quick=args.quick, seeds=args.seeds)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{experiment.name}.json"
    json_path.write_text(json.dumps(output, indent=2) + "\n")
    print(format_table(output))
    if output["summary"]:
        print("summary:", json.dumps(output["summary"]))
    png = plot_arms(output, experiment.name, out / f"{experiment.name}.png")
    print(f"results: {json_path}" + (f", plot: {png}" if png else ""))
    if experiment.figures is not None:
        for figure in experiment.figures(output, out):
            print(f"figure: {figure}")
    return 0


def format_table(output: dict) -> str:
    """A Markdown table: mean ± standard deviation over the seeds of every arm and metric."""
    import statistics

    arms = output["arms"]
    metrics = list(next(iter(arms.values())))
    lines = ["| arm | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for arm, values in arms.items():
        cells = []
        for metric in metrics:
            seeds = values[metric]
            spread = statistics.stdev(seeds) if len(seeds) > 1 else 0.0
            cells.append(f"{statistics.mean(seeds):.4g} ± {spread:.2g}")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
