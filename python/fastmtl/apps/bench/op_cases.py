"""Timings of fastmtl's ops against peers and against the memory floor (one read of G), as
pytest-benchmark cases.

    python -m fastmtl bench [-T 2,8] [-P 1e5,1e6]             # runs this file, prints the tables
    pytest benchmarks/ --benchmark-only --benchmark-json=results.json   # the same, from a checkout
    python -m fastmtl.apps.bench.report results.json

One benchmark group = one (op, T, P) case holding every candidate. The grid comes from grid.py
(environment variables FASTMTL_BENCH_T / FASTMTL_BENCH_P, the full grid when unset); the slow
peers are skipped on big cases unless FASTMTL_BENCH_FULL=1. Without the compiled extension the
fastmtl-cpp candidates are skipped, so the torch path is still compared.
"""

import pytest
import torch
from torchjd.aggregation import PCGradWeighting

import fastmtl
from fastmtl.apps.bench import grid, peers
from fastmtl.apps.bench.report import OURS, size_label
from fastmtl.functional import pcgrad_order, pcgrad_weights

TASKS, SIZES, FULL = grid.from_environment()

CANDIDATES = {
    "pcgrad": {
        "fastmtl-cpp": lambda G: fastmtl.project_conflicts(G, impl="cpp"),
        "fastmtl-torch": lambda G: fastmtl.project_conflicts(G, impl="torch"),
        "torchjd": peers.torchjd_pcgrad,
        "libmtl-style": peers.libmtl_style_pcgrad,
        "floor": peers.memory_floor,
        "flat-read": peers.flat_read,
    },
    "graddrop": {
        "fastmtl-cpp": lambda G: fastmtl.graddrop(G, impl="cpp"),
        "fastmtl-torch": lambda G: fastmtl.graddrop(G, impl="torch"),
        "torchjd": peers.torchjd_graddrop,
        "floor": peers.memory_floor,
        "flat-read": peers.flat_read,
    },
    "gram": {
        "fastmtl-cpp": lambda G: fastmtl.gram(G, impl="cpp"),
        "torch-matmul": lambda G: G @ G.T,
        "floor": peers.memory_floor,
        "flat-read": peers.flat_read,
    },
}
# These take seconds per call on big cases (tens of seconds per case with the rounds).
SLOW = {("pcgrad", "libmtl-style"), ("graddrop", "torchjd")}
SLOW_ABOVE = 4 * 10**7  # T * P

# The solve on K [T, T] alone; a fresh order per call, as torchjd draws a fresh permutation.
SOLVE_CANDIDATES = {
    "fastmtl-cpp": lambda K: pcgrad_weights(K, _random_order(K), impl="cpp"),
    "fastmtl-torch": lambda K: pcgrad_weights(K, _random_order(K), impl="torch"),
    "torchjd": PCGradWeighting(),
}


def _random_order(K):
    return pcgrad_order(K.shape[0], shuffle=True, generator=None, device="cpu")


def _skip_without_extension(candidate: str) -> None:
    if candidate == OURS and not fastmtl.HAS_EXT:
        pytest.skip(f"fastmtl._C is not built: {fastmtl.IMPORT_ERROR}")


# (T, P) outermost so each G is made once and serves every op and candidate of its size.
CASES = [(T, P, op, c) for T in TASKS for P in SIZES for op in CANDIDATES for c in CANDIDATES[op]]

_G = {}


def task_matrix(T: int, P: int) -> torch.Tensor:
    if (T, P) not in _G:
        _G.clear()  # free the previous G before allocating the next (up to 640 MB each)
        _G[(T, P)] = torch.randn(T, P, generator=torch.Generator().manual_seed(0))
    return _G[(T, P)]


def rounds_for(T: int, P: int) -> int:
    """About 2e8 elements read per candidate and case: many rounds when small, 3 when huge."""
    return max(3, min(20, int(2e8 // (T * P))))


@pytest.mark.parametrize(
    "T, P, op, candidate", CASES, ids=[f"{op}-T{T}-P{size_label(P)}-{c}" for T, P, op, c in CASES]
)
def test_op(benchmark, T, P, op, candidate):
    _skip_without_extension(candidate)
    if (op, candidate) in SLOW and T * P > SLOW_ABOVE and not FULL:
        pytest.skip(f"{candidate} {op} is slow at T*P > {size_label(SLOW_ABOVE)}; set FASTMTL_BENCH_FULL=1")
    G = task_matrix(T, P)
    benchmark.group = f"{op} T={T} P={size_label(P)}"
    benchmark.extra_info.update(op=op, T=T, P=P, candidate=candidate)
    benchmark.pedantic(
        CANDIDATES[op][candidate], args=(G,), rounds=rounds_for(T, P), warmup_rounds=1, iterations=1
    )


@pytest.mark.parametrize("T", TASKS)
@pytest.mark.parametrize("candidate", SOLVE_CANDIDATES)
def test_solve(benchmark, T, candidate):
    _skip_without_extension(candidate)
    gradients = torch.randn(T, 1000, generator=torch.Generator().manual_seed(0))
    K = gradients @ gradients.T  # about half the pairs conflict, as with random gradients
    benchmark.group = f"solve T={T}"
    benchmark.extra_info.update(op="solve", T=T, P=None, candidate=candidate)
    benchmark.pedantic(SOLVE_CANDIDATES[candidate], args=(K,), rounds=50, warmup_rounds=1, iterations=1)


# FairBranch's similarity check: the T×T linear-CKA matrix of T parameter matrices [n, p], in one
# Gram pass of the centred kernels, against the per-pair computation of Eq. 9 (the authors' code
# calls a CKA function for each pair) and the memory floor of one read of the matrices.
SIMILARITY_CASES = [(17, 64, 2), (9, 128, 128), (5, 256, 128)]  # CelebA heads; the copies of two trunk layers
SIMILARITY_CANDIDATES = {
    "fastmtl-cpp": lambda thetas: fastmtl.parameter_similarity(thetas, impl="cpp"),
    "fastmtl-torch": lambda thetas: fastmtl.parameter_similarity(thetas, impl="torch"),
    "per-pair-cka": peers.per_pair_cka,
    "floor": lambda thetas: [theta.sum(0) for theta in thetas],
}


@pytest.mark.parametrize("T, n, p", SIMILARITY_CASES)
@pytest.mark.parametrize("candidate", SIMILARITY_CANDIDATES)
def test_similarity(benchmark, T, n, p, candidate):
    _skip_without_extension(candidate)
    gen = torch.Generator().manual_seed(0)
    thetas = [torch.randn(n, p, generator=gen) for _ in range(T)]
    benchmark.group = f"parameter_similarity T={T} n={n} p={p}"
    benchmark.extra_info.update(op="parameter_similarity", T=T, P=n * p, candidate=candidate)
    benchmark.pedantic(SIMILARITY_CANDIDATES[candidate], args=(thetas,), rounds=30, warmup_rounds=1, iterations=1)
