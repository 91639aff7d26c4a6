"""The experiment runner on a toy experiment: the JSON's shape (one value per seed for every arm
and metric), the summary hook, the table, the plot, training curves and bad arguments."""

import json

import pytest

from fastmtl.apps.experiments import registry, runner

pytest.importorskip("tqdm")


def toy_run(config, seed, progress):
    results = {}
    for index, arm in enumerate(("plain", "surgery")):
        results[arm] = {"acc": 0.5 + 0.1 * index + 0.01 * seed * config["scale"], "step_ms": 1.0 + index}
        progress(arm)
    return results


TOY = registry.Experiment(
    name="toy", description="a toy", run=toy_run, arms=("plain", "surgery"), metrics=("acc", "step_ms"),
    default_seeds=3, full_config={"scale": 1.0}, quick_config={"scale": 2.0},
    summary=lambda output: {"best": max(output["arms"], key=lambda arm: sum(output["arms"][arm]["acc"]))})


def test_results_hold_one_value_per_seed_for_every_arm_and_metric():
    output = runner.run_experiment(TOY, quick=False, seeds=None)
    assert output["config"] == {"scale": 1.0, "quick": False, "seeds": 3}
    assert output["arms"]["plain"]["acc"] == pytest.approx([0.5, 0.51, 0.52])
    assert output["arms"]["surgery"]["step_ms"] == [2.0, 2.0, 2.0]
    assert output["summary"] == {"best": "surgery"}
    quick = runner.run_experiment(TOY, quick=True, seeds=2)
    assert quick["config"]["scale"] == 2.0 and quick["arms"]["plain"]["acc"] == pytest.approx([0.5, 0.52])
    table = runner.format_table(output)
    assert "| plain | 0.51 ± 0.01 | 1 ± 0 |" in table
    with pytest.raises(ValueError, match="seeds"):
        runner.run_experiment(TOY, quick=True, seeds=0)


def test_an_arm_without_results_is_an_error():
    broken = registry.Experiment(name="broken", description="", run=lambda c, s, p: {"plain": {"acc": 1.0}},
                                 arms=("plain", "surgery"), metrics=("acc",), default_seeds=1)
    with pytest.raises(RuntimeError, match="surgery"):
        runner.run_experiment(broken, quick=True, seeds=1)


def test_the_command_writes_json_and_plot(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.setitem(registry.EXPERIMENTS, "toy", TOY)
    args = type("Args", (), {"name": "toy", "quick": True, "seeds": 1, "out": str(tmp_path)})()
    assert runner.run(args) == 0
    saved = json.loads((tmp_path / "toy.json").read_text())
    assert set(saved) == {"arms", "config", "summary", "seconds"}  # no curves: no "curves" key
    assert saved["arms"]["surgery"]["acc"] == pytest.approx([0.6])
    assert (tmp_path / "toy.png").stat().st_size > 0
    with pytest.raises(ValueError, match="registered already"):
        registry.register(TOY)


def curved_run(config, seed, progress):
    results = toy_run(config, seed, progress)
    results["_curves"] = {
        arm: {"step": [1, 2, 3], "value": [1.0 - 0.1 * i - 0.01 * seed - 0.05 * index for i in range(3)]}
        for index, arm in enumerate(("plain", "surgery"))}
    return results


CURVED = registry.Experiment(
    name="curved", description="a toy with curves", run=curved_run, arms=("plain", "surgery"),
    metrics=("acc", "step_ms"), default_seeds=2, full_config={"scale": 1.0}, curve_label="training loss")


def test_curves_are_collected_per_arm_and_seed_and_plotted(tmp_path, monkeypatch):
    output = runner.run_experiment(CURVED, quick=False, seeds=2)
    assert set(output["arms"]) == {"plain", "surgery"}  # "_curves" is no arm
    assert output["arms"]["plain"]["acc"] == pytest.approx([0.5, 0.51])
    assert set(output["curves"]) == {"plain", "surgery"}
    assert len(output["curves"]["surgery"]) == 2
    assert output["curves"]["surgery"][1] == {"step": [1, 2, 3], "value": pytest.approx([0.94, 0.84, 0.74])}
    assert output["curve_label"] == "training loss" and output["curve_x"] == "step"
    pytest.importorskip("matplotlib")
    monkeypatch.setitem(registry.EXPERIMENTS, "curved", CURVED)
    args = type("Args", (), {"name": "curved", "quick": False, "seeds": 2, "out": str(tmp_path)})()
    assert runner.run(args) == 0
    saved = json.loads((tmp_path / "curved.json").read_text())
    assert {arm: len(runs) for arm, runs in saved["curves"].items()} == {"plain": 2, "surgery": 2}
    assert (tmp_path / "curved.png").stat().st_size > 0


def test_curves_with_different_steps_per_seed_and_many_arms_plot(tmp_path):
    pytest.importorskip("matplotlib")
    from fastmtl.apps.experiments.plots import plot_arms

    names = [f"arm{i}" for i in range(26)]
    output = {"arms": {arm: {"m": [float(i), float(i) + 1]} for i, arm in enumerate(names)},
              "config": {"seeds": 2}, "curve_label": "loss",
              "curves": {arm: [{"step": [1, 2], "value": [1.0, 0.5]}, {"step": [1, 3], "value": [0.9, 0.4]}]
                         for arm in names}}
    assert plot_arms(output, "many", tmp_path / "many.png").stat().st_size > 0


def test_a_curve_with_unequal_lengths_is_an_error():
    def run(config, seed, progress):
        return {"plain": {"acc": 1.0}, "_curves": {"plain": {"step": [1, 2], "value": [0.5]}}}

    broken = registry.Experiment(name="uneven", description="", run=run, arms=("plain",), metrics=("acc",),
                                 default_seeds=1)
    with pytest.raises(RuntimeError, match="2 steps and 1 values"):
        runner.run_experiment(broken, quick=True, seeds=1)


def detailed_run(config, seed, progress):
    results = toy_run(config, seed, progress)
    results["_details"] = {"surgery": {"per_task": (0.5, 0.6 + seed), "events": [{"step": 3 * (seed + 1)}]}}
    return results


def draw_figures(output, folder):
    path = folder / "detailed_extra.txt"  # stands in for a figure: the hook sees the finished output
    path.write_text(json.dumps(output["details"]))
    return [path]


DETAILED = registry.Experiment(
    name="detailed", description="a toy with details", run=detailed_run, arms=("plain", "surgery"),
    metrics=("acc", "step_ms"), default_seeds=2, full_config={"scale": 1.0},
    summary=lambda output: {"events": [len(record["events"]) for record in output["details"]["surgery"]]},
    figures=draw_figures)


def test_details_are_collected_per_arm_and_seed_and_reach_the_figures_hook(tmp_path, monkeypatch):
    output = runner.run_experiment(DETAILED, quick=False, seeds=2)
    assert set(output["arms"]) == {"plain", "surgery"}  # "_details" is no arm
    # one record per seed, as the JSON holds it (the tuple became a list)
    assert output["details"] == {"surgery": [{"per_task": [0.5, 0.6], "events": [{"step": 3}]},
                                             {"per_task": [0.5, 1.6], "events": [{"step": 6}]}]}
    assert output["summary"] == {"events": [1, 1]}  # the summary sees the details
    pytest.importorskip("matplotlib")
    monkeypatch.setitem(registry.EXPERIMENTS, "detailed", DETAILED)
    args = type("Args", (), {"name": "detailed", "quick": False, "seeds": 2, "out": str(tmp_path)})()
    assert runner.run(args) == 0
    saved = json.loads((tmp_path / "detailed.json").read_text())
    assert saved["details"] == output["details"]
    assert json.loads((tmp_path / "detailed_extra.txt").read_text()) == output["details"]
    assert "details" not in runner.run_experiment(TOY, quick=True, seeds=1)  # none returned: no key


def test_details_of_an_unknown_arm_are_an_error():
    def run(config, seed, progress):
        return {"plain": {"acc": 1.0}, "_details": {"plane": {"x": 1}}}

    broken = registry.Experiment(name="typo", description="", run=run, arms=("plain",), metrics=("acc",),
                                 default_seeds=1)
    with pytest.raises(RuntimeError, match="'plane', which is no arm"):
        runner.run_experiment(broken, quick=True, seeds=1)
