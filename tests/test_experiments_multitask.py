"""The multidigits3 and go4align experiments through the runner, quick settings, one seed: the
JSON's shape (every arm and metric, one finite value per seed, FD in [0, 1]), a training-loss curve
per arm and seed, the summary and the plot, and the command line listing them. No assertion
depends on what a seed trains to."""

import json
import math
import subprocess
import sys

import pytest

pytest.importorskip("tqdm")
pytest.importorskip("sklearn")

from fastmtl import methods  # noqa: E402
from fastmtl.apps.experiments import EXPERIMENTS, runner  # noqa: E402


def _run_quick(name, tmp_path):
    args = type("Args", (), {"name": name, "quick": True, "seeds": 1, "out": str(tmp_path)})()
    assert runner.run(args) == 0
    saved = json.loads((tmp_path / f"{name}.json").read_text())
    experiment = EXPERIMENTS[name]
    assert set(saved["arms"]) == set(experiment.arms)
    for arm, values in saved["arms"].items():
        assert set(values) == set(experiment.metrics), arm
        for metric, per_seed in values.items():
            assert len(per_seed) == 1 and all(math.isfinite(v) for v in per_seed), (arm, metric, per_seed)
        assert values["step_ms"][0] > 0
    assert saved["config"]["quick"] is True and saved["config"]["seeds"] == 1
    assert set(saved["curves"]) == set(experiment.arms)  # the training loss: one curve per arm and seed
    for arm, runs in saved["curves"].items():
        assert len(runs) == 1, arm
        assert len(runs[0]["step"]) == len(runs[0]["value"]) >= 2, arm
        assert runs[0]["step"] == sorted(set(runs[0]["step"])), arm
        assert all(math.isfinite(v) and v >= 0 for v in runs[0]["value"]), arm
    assert saved["curve_label"] == experiment.curve_label
    pytest.importorskip("matplotlib")
    assert (tmp_path / f"{name}.png").stat().st_size > 0
    return saved


@pytest.mark.slow
def test_multidigits3_quick_run_has_every_arm_and_metric(tmp_path):
    saved = _run_quick("multidigits3", tmp_path)
    gradient = [m for m in methods.available() if methods.method_class(m).family != "loss"]
    loss_side = [m for m in methods.available() if methods.method_class(m).family == "loss"]
    feature = [m for m in gradient if methods.method_class(m).feature_level]
    assert set(saved["arms"]) == set(gradient) | {f"{m}_feature" for m in feature} | set(loss_side)
    for arm, values in saved["arms"].items():
        assert 0.0 <= values["fd"][0] <= 1.0, arm
        assert 0.0 <= values["conflict"][0] <= 1.0, arm
    summary = saved["summary"]
    for key in ("kendall_fd_vs_delta_m", "kendall_fd_vs_conflict"):
        assert -1.0 <= summary[key] <= 1.0 or math.isnan(summary[key])
    assert set(summary["acceptance_feature_le_parameter_plus_0.5"]) == {"mgda", "aligned_mtl"}


@pytest.mark.slow
def test_go4align_quick_run_has_every_arm_and_metric(tmp_path):
    saved = _run_quick("go4align", tmp_path)
    assert set(saved["arms"]) == {"ew", "go4align", "pcgrad", "mgda", "nash_mtl"}
    assert saved["config"]["dataset"] in ("celeba_gen_proxy", "multidigits3")
    assert saved["summary"]["dataset"] == saved["config"]["dataset"]
    assert isinstance(saved["summary"]["accept_delta_m_le_ew_plus_0.5"], bool)
    assert saved["summary"]["go4align_over_ew_step_time"] > 0


@pytest.mark.slow
def test_command_line_lists_the_experiments():
    result = subprocess.run([sys.executable, "-m", "fastmtl", "experiment", "multidigits3", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "multidigits3" in result.stdout and "go4align" in result.stdout
