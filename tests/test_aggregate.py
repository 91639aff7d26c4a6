"""fastmtl.aggregate: the method registry and its pass-through of options."""

import pytest
import torch
from conftest import ALL_IMPLS, assert_close_rel
from oracles import pcgrad_per_vector, random_gradients

import fastmtl


def test_available_methods():
    assert {"sum", "mean", "pcgrad", "graddrop"} <= set(fastmtl.methods.available())


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_sum_and_mean(impl):
    G = random_gradients(5, 1000, seed=1, dtype=torch.float64)
    assert_close_rel(fastmtl.aggregate(G, "sum", impl=impl), G.sum(0), 1e-14)
    assert_close_rel(fastmtl.aggregate(G, "mean", impl=impl), G.mean(0), 1e-14)


@pytest.mark.skipif(not fastmtl.HAS_EXT, reason="fastmtl._C not built")
def test_combine_independent_of_thread_count():
    G = random_gradients(5, 300_000, seed=4)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = fastmtl.aggregate(G, "mean", impl="cpp")
        torch.set_num_threads(max(2, threads))
        many = fastmtl.aggregate(G, "mean", impl="cpp")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_sum_propagates_nan(impl):
    G = random_gradients(3, 10, seed=1)
    G[0, 3] = float("nan")
    out = fastmtl.aggregate(G, "sum", impl=impl)
    assert torch.isnan(out[3]) and torch.isfinite(out[:3]).all()


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_pcgrad_options_pass_through(impl):
    G = random_gradients(4, 500, seed=2, dtype=torch.float64)
    out = fastmtl.aggregate(G, "pcgrad", shuffle=False, reduction="mean", impl=impl)
    assert_close_rel(out, pcgrad_per_vector(G, reduction="mean"), 1e-12)
    assert torch.equal(fastmtl.aggregate(G, impl=impl, shuffle=False), fastmtl.project_conflicts(G, shuffle=False, impl=impl))


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_graddrop_options_pass_through(impl):
    G = random_gradients(4, 500, seed=3)
    assert_close_rel(fastmtl.aggregate(G, "graddrop", leak=1.0, impl=impl), G.sum(0), 1e-6)
    a = fastmtl.aggregate(G, "graddrop", generator=torch.Generator().manual_seed(1), impl=impl)
    b = fastmtl.graddrop(G, generator=torch.Generator().manual_seed(1), impl=impl)
    assert torch.equal(a, b)
