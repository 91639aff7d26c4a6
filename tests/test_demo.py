"""The main job runs end to end on real data (a short run) and reports what it promises."""

import argparse
import subprocess
import sys
import textwrap

import pytest

import fastmtl
from fastmtl.apps import demo

pytest.importorskip("sklearn")


def test_demo_runs_and_reports(tmp_path):
    pytest.importorskip("tqdm")
    result = subprocess.run(  # from a folder outside the checkout: the installed package's demo
        [sys.executable, "-m", "fastmtl", "demo", "--steps", "40", "--out", "plots"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for expected in ("task 0 acc", "worst task", "ms/step", "surgery overhead of pcgrad", "plain", "pcgrad"):
        assert expected in result.stdout
    # tqdm's bars on stderr: one finished bar per run, with the last accuracies.
    assert result.stderr.count("40/40") >= 3 and "acc " in result.stderr
    assert (tmp_path / "plots" / "multidigits.png").stat().st_size > 0


def test_demo_offers_every_registered_method():
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    (method,) = [action for action in parser._actions if action.dest == "method"]
    assert list(method.choices) == fastmtl.methods.available() and method.default == "pcgrad"


def test_demo_without_its_extra_names_the_install_line(tmp_path):
    code = textwrap.dedent(
        """
        import sys
        sys.modules["tqdm"] = None  # as if tqdm were not installed
        from fastmtl.__main__ import main
        sys.exit(main(["demo", "--steps", "1"]))
        """
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "tqdm" in result.stderr and "pip install 'fastmtl[demo]'" in result.stderr
