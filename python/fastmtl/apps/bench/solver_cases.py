"""Timings of the Gram-space methods: the T×T solve alone and the whole ``aggregate(G, method)``,
against the same solve in torch ops and torchjd's weighting / aggregator, side by side in one run
(pytest-benchmark cases). Candidates: "fastmtl-cpp" (the compiled solve, what impl="auto" runs on
the CPU), "fastmtl-torch" (the solve alone, impl="torch") and "torch-solve" (the whole update with
the compiled Gram and combine passes but the solve in torch ops: what "auto" ran before the
compiled solvers), "torchjd".

    pytest benchmarks/test_bench_solvers.py --benchmark-only --benchmark-json=solvers.json
    python -m fastmtl.apps.bench.report solvers.json

The solve cases time ``method.weights(K)`` on a float64 K = G Gᵀ of random G [T, 1000] (about
half the pairs conflict); the aggregate cases time the whole update from a float32 G [T, P],
with PCGrad as the anchor (the issue's target: every method within 1.15× of it). torchjd's
Nash-MTL has no Gramian form (its aggregator solves from G with cvxpy) and only appears in the
aggregate cases; it is stateful, as torchjd's GradVac.
"""

import pytest
import torch
from torchjd import aggregation as jd

import fastmtl
from fastmtl import functional
from fastmtl.apps.bench.report import OURS, size_label

SOLVE_TASKS = [4, 8, 16, 64]
AGGREGATE_SIZES = [(8, 100_000), (8, 1_000_000), (32, 100_000)]  # the table
METHODS = ["pcgrad", "mgda", "upgrad", "dualproj", "imtl_g", "aligned_mtl", "nash_mtl", "cagrad", "gradvac", "pcd",
           "fairgrad", "modo", "sdmgrad"]
# Options both sides share where a method has required ones (FairGrad's α).
OPTIONS = {"fairgrad": {"alpha": 1.0}}

# torchjd's counterpart of each method with fastmtl's defaults (CAGrad's c = 0.5).
TORCHJD_WEIGHTING = {
    "pcgrad": jd.PCGradWeighting, "mgda": jd.MGDAWeighting, "upgrad": jd.UPGradWeighting,
    "dualproj": jd.DualProjWeighting, "imtl_g": jd.IMTLGWeighting, "aligned_mtl": jd.AlignedMTLWeighting,
    "cagrad": lambda: jd.CAGradWeighting(c=0.5), "gradvac": jd.GradVacWeighting, "pcd": jd.PCDWeighting,
    "fairgrad": lambda: jd.FairGradWeighting(alpha=1.0), "modo": jd.MoDoWeighting, "sdmgrad": jd.SDMGradWeighting,
}
TORCHJD_AGGREGATOR = {
    "pcgrad": jd.PCGrad, "mgda": jd.MGDA, "upgrad": jd.UPGrad, "dualproj": jd.DualProj, "imtl_g": jd.IMTLG,
    "aligned_mtl": jd.AlignedMTL, "cagrad": lambda: jd.CAGrad(c=0.5), "gradvac": jd.GradVac, "pcd": jd.PCD,
    "fairgrad": lambda: jd.FairGrad(alpha=1.0),
}  # MoDo and SDMGrad are weightings only in torchjd (their input is a two-batch A)


def _skip_without_extension(candidate: str) -> None:
    if candidate == OURS and not fastmtl.HAS_EXT:
        pytest.skip(f"fastmtl._C is not built: {fastmtl.IMPORT_ERROR}")


def _solve_candidate(method: str, candidate: str):
    if candidate == "torchjd":
        if method not in TORCHJD_WEIGHTING:
            pytest.skip(f"torchjd has no Gramian weighting for {method}")
        return TORCHJD_WEIGHTING[method]()
    impl = "cpp" if candidate == OURS else "torch"
    return fastmtl.methods.create(method, impl=impl, **OPTIONS.get(method, {})).weights


def _aggregate_candidate(method: str, candidate: str, T: int):
    if candidate == "torchjd":
        if method == "nash_mtl":
            return jd.NashMTL(n_tasks=T)
        if method not in TORCHJD_AGGREGATOR:
            pytest.skip(f"torchjd has no aggregator for {method}")
        return TORCHJD_AGGREGATOR[method]()
    impl = "cpp" if candidate == OURS else "torch"
    options = OPTIONS.get(method, {})
    if impl == "torch":  # the Gram and combine passes compiled, only the solve in torch ops
        solver = fastmtl.methods.create(method, impl="torch", **options)
        return lambda G: functional.combine(G, solver.weights(functional.gram_for_weights(G)))
    return fastmtl.methods.create(method, impl="cpp", **options)


@pytest.mark.parametrize("T", SOLVE_TASKS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("candidate", [OURS, "fastmtl-torch", "torchjd"])
def test_gram_solve(benchmark, method, T, candidate):
    _skip_without_extension(candidate)
    gradients = torch.randn(T, 1000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    K = gradients @ gradients.T
    solve = _solve_candidate(method, candidate)
    benchmark.group = f"{method} solve T={T}"
    benchmark.extra_info.update(op=f"{method} solve", T=T, P=None, candidate=candidate)
    rounds = 5 if candidate != OURS and T >= 64 else 30
    benchmark.pedantic(solve, args=(K,), rounds=rounds, warmup_rounds=1, iterations=1)


@pytest.mark.parametrize("T, P", AGGREGATE_SIZES)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("candidate", [OURS, "torch-solve", "torchjd"])
def test_aggregate(benchmark, method, T, P, candidate):
    _skip_without_extension(candidate)
    G = torch.randn(T, P, generator=torch.Generator().manual_seed(0))
    aggregate = _aggregate_candidate(method, candidate, T)
    benchmark.group = f"{method} aggregate T={T} P={size_label(P)}"
    benchmark.extra_info.update(op=f"{method} aggregate", T=T, P=P, candidate=candidate)
    benchmark.pedantic(aggregate, args=(G,), rounds=10, warmup_rounds=1, iterations=1)
