"""The CMake build (CMakeLists.txt): configure against the installed libtorch, build the operator
library and the C++ unit tests, and run them with CTest.

Builds once per session into a temporary directory (Release, Ninja when available).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 1800

pytestmark = pytest.mark.slow


def _ninja():
    venv_ninja = Path(sys.executable).parent / "ninja"
    if venv_ninja.is_file() and os.access(venv_ninja, os.X_OK):
        return str(venv_ninja)
    return shutil.which("ninja")


def _run(cmd, **kwargs):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, **kwargs)
    message = (
        f"command failed with exit status {proc.returncode}: {' '.join(map(str, cmd))}\n"
        f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    )
    return proc, message


@pytest.fixture(scope="module")
def cmake_build(tmp_path_factory):
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not on PATH")
    torch = pytest.importorskip("torch")
    build_dir = tmp_path_factory.mktemp("cmake_build")
    configure = [
        cmake,
        "-S", str(ROOT),
        "-B", str(build_dir),
        "-DCMAKE_BUILD_TYPE=Release",
        f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
        "-DFASTMTL_BUILD_TESTS=ON",
    ]
    ninja = _ninja()
    if ninja is not None:
        configure += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
    proc, message = _run(configure)
    assert proc.returncode == 0, message
    proc, message = _run([cmake, "--build", str(build_dir), "-j", "2"])
    assert proc.returncode == 0, message
    return build_dir


def test_cmake_build_and_ctest(cmake_build):
    ctest = shutil.which("ctest") or str(Path(shutil.which("cmake")).with_name("ctest"))
    proc, message = _run([ctest, "--test-dir", str(cmake_build), "--output-on-failure", "-j", "2"])
    assert proc.returncode == 0, message
    # Every test ran: the header-only unit tests and the dispatcher test against libtorch.
    math_tests = [path.stem for path in (Path(__file__).parent / "cpp").glob("test_*_math.cpp")]
    assert "test_surgery_math" in math_tests
    for name in (*math_tests, "test_philox", "test_dispatcher"):
        assert name in proc.stdout, message
    assert "100% tests passed" in proc.stdout, message
