"""Every CPU instruction-set variant (AVX-512, AVX2, SSE2 baseline) gives the reference's
results: the kernel tests rerun in subprocesses with FASTMTL_CPU_ISA capping the variant."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import fastmtl

TESTS = Path(__file__).resolve().parent


@pytest.mark.skipif(not fastmtl.HAS_EXT, reason="fastmtl._C not built")
@pytest.mark.parametrize("isa", ["avx2", "baseline"])
def test_kernels_under_capped_instruction_set(isa):
    env = dict(os.environ, FASTMTL_CPU_ISA=isa)
    files = [str(TESTS / name) for name in ("test_gram.py", "test_pcgrad.py", "test_graddrop.py")]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-k", "cpp", *files],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
