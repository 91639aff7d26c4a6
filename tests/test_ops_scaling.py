"""Many tasks stay fast. Before the O(T · projections) PCGrad solve and the O(T²)-expected
clustering, T = 1024 took 3-5 s (PCGrad, both paths; the reference's clustering) on a 2-core
machine and T = 2000 20-60 s (the solve recomputed a K column per pair, the clustering rescanned
the whole triangle per merge); now T = 1024 takes 0.03-0.7 s there. Each bound is at least 5x
the time measured on that machine, and the large-T cases are sized so that the old algorithms
exceed their bound several times over: only a return to the old complexity fails, not a slow or
busy machine. Results at moderate T are checked against direct implementations in
test_pcgrad.py and test_cluster.py."""

import time

import pytest
import torch
from conftest import COMPILED_IMPLS

import fastmtl
from fastmtl import functional

IMPLS = ["auto", *COMPILED_IMPLS, "torch"]


def seconds(fn) -> float:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("impl", IMPLS)
def test_project_conflicts_on_1024_tasks(impl):
    # Measured 0.2 s (C++) and 0.7 s (reference) on 2 cores; 3.0 s and 5.0 s before.
    G = torch.randn(1024, 4096, generator=torch.Generator().manual_seed(0))
    assert seconds(lambda: fastmtl.project_conflicts(G, impl=impl)) < 20


@pytest.mark.parametrize("impl", IMPLS)
def test_cluster_tasks_on_1024_tasks(impl):
    # Measured 0.03 s (C++) and 0.16 s (reference) on 2 cores; 0.2 s and 4.2 s before.
    S = fastmtl.cosine_similarity(torch.randn(1024, 256, generator=torch.Generator().manual_seed(0)))
    assert seconds(lambda: fastmtl.cluster_tasks(S, n_groups=8, impl=impl)) < 20


@pytest.mark.parametrize("impl", COMPILED_IMPLS)
def test_pcgrad_solve_pays_per_projection_not_per_pair(impl):
    # No pair conflicts: T^2 O(1) checks (0.01 s at T = 3000). The old solve formed a K column
    # per pair, T^3 = 2.7e10 operations (about a minute at T = 3000 on 2 cores).
    T = 3000
    K = torch.ones(T, T, dtype=torch.float64) + T * torch.eye(T, dtype=torch.float64)
    assert seconds(lambda: functional.pcgrad_weights(K, None, impl=impl)) < 5
    assert torch.equal(functional.pcgrad_weights(K, None, impl=impl), torch.ones(T, dtype=torch.float64))


@pytest.mark.parametrize("impl,T,limit", [*[pytest.param(p.values[0], 4096, 8, marks=p.marks) for p in COMPILED_IMPLS],
                                          ("torch", 2048, 10)])
def test_clustering_is_not_cubic(impl, T, limit):
    # Measured 0.8 s (C++, T = 4096) and 0.5 s (reference, T = 2048) on 2 cores; the old O(T^3)
    # scans took about 13 s and 35 s.
    S = fastmtl.cosine_similarity(torch.randn(T, 64, generator=torch.Generator().manual_seed(1)))
    assert seconds(lambda: fastmtl.cluster_tasks(S, n_groups=4, impl=impl)) < limit
