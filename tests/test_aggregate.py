"""fastmtl.aggregate: the method registry and its pass-through of options."""

import pytest
import torch
from conftest import ALL_IMPLS, assert_close_rel
from oracles import graddrop_per_vector, pcgrad_per_vector, random_gradients

import fastmtl
from fastmtl import reference


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
    assert_close_rel(fastmtl.aggregate(G, impl=impl, shuffle=False), pcgrad_per_vector(G), 1e-12)


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_graddrop_options_pass_through(impl):
    G = random_gradients(4, 500, seed=3, dtype=torch.float64)  # float64: purity exact enough that no mask flips
    assert_close_rel(fastmtl.aggregate(G, "graddrop", leak=1.0, impl=impl), G.sum(0), 1e-14)
    # The paper's per-vector algorithm with the uniforms a generator seeded alike draws.
    a = fastmtl.aggregate(G, "graddrop", leak=0.25, generator=torch.Generator().manual_seed(1), impl=impl)
    seed = torch.randint(0, 2**62, (2,), generator=torch.Generator().manual_seed(1), dtype=torch.int64)
    uniform = reference.philox_uniform(seed, G.shape[1])
    # Both sum T = 4 terms in float64: each within 4u of Σ|g| (u = 2^-53), so 1e-14 of it bounds the gap.
    assert_close_rel(a, graddrop_per_vector(G, uniform, leak=0.25), 1e-14, scale=G.abs().sum(0).max())
