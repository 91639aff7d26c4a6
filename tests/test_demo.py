"""The main job runs end to end on real data (a short run) and reports what it promises."""

import subprocess
import sys

import pytest

pytest.importorskip("sklearn")


def test_multidigits_split_before_pairing():
    from fastmtl.data import multi_digits

    data = multi_digits(train_pairs=500, test_pairs=200, seed=1)
    assert data.x_train.shape == (500, 128) and data.y_train.shape == (500, 2)
    assert data.x_test.shape == (200, 128) and 0 <= float(data.x_train.min()) and float(data.x_train.max()) <= 1
    # No test image appears in training, even as half of a pair.
    train_halves = {tuple(h.flatten().tolist()) for x in data.x_train for h in x.view(8, 16).split(8, dim=1)}
    test_halves = {tuple(h.flatten().tolist()) for x in data.x_test for h in x.view(8, 16).split(8, dim=1)}
    assert not train_halves & test_halves


def test_demo_runs_and_reports(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "fastmtl", "demo", "--steps", "40", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for expected in ("task 0 acc", "worst task", "ms/step", "surgery overhead of pcgrad", "plain", "pcgrad"):
        assert expected in result.stdout
    assert (tmp_path / "multidigits.png").stat().st_size > 0
