"""The public ops trace into a single graph under torch.compile (fake kernels, no graph
breaks from host syncs) and give the eager results."""

import pytest
import torch
from conftest import assert_within, gram_error_bound, weighted_sum_error_bound
from oracles import random_gradients

import fastmtl

pytestmark = pytest.mark.skipif(not fastmtl.HAS_EXT, reason="fastmtl._C not built")


def test_project_conflicts_compiles_fullgraph():
    G = random_gradients(4, 1000, seed=1)
    compiled = torch.compile(lambda G: fastmtl.project_conflicts(G, shuffle=False), backend="aot_eager", fullgraph=True)
    # The same kernels on the same numbers (traced, the Gram goes through gram_rescue, which hands
    # the same finite K on in float64; the solve runs in float64 either way): equal bits.
    assert torch.equal(compiled(G), fastmtl.project_conflicts(G, shuffle=False))


@pytest.mark.parametrize("impl", ["cpp", "torch"])
def test_seeded_graddrop_compiles_fullgraph_and_matches_eager(impl):
    # The reference path too: its Philox stream keeps the seed on the device (no .tolist()).
    G = random_gradients(3, 700, seed=3)
    compiled = torch.compile(lambda G: fastmtl.graddrop(G, leak=0.25, impl=impl), backend="aot_eager", fullgraph=True)
    torch.manual_seed(9)
    eager = fastmtl.graddrop(G, leak=0.25, impl=impl)
    torch.manual_seed(9)
    assert torch.equal(compiled(G), eager)


def test_graddrop_and_gram_compile_fullgraph():
    G = random_gradients(4, 1000, seed=2)
    compiled = torch.compile(lambda G: (fastmtl.graddrop(G, leak=1.0), fastmtl.gram(G)), backend="aot_eager", fullgraph=True)
    dropped, K = compiled(G)
    # leak 1 keeps every gradient: two float32 sums of the same 4 terms.
    assert_within(dropped, G.sum(0), 2 * weighted_sum_error_bound(G))
    assert torch.equal(K, fastmtl.gram(G))  # the same kernel on the same numbers


def test_gram_for_weights_compiles_fullgraph():
    # Traced, the finiteness of K cannot be read on the host: the choice happens in gram_rescue.
    G = random_gradients(4, 1000, seed=4)
    compiled = torch.compile(lambda G: fastmtl.functional.gram_for_weights(G), backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(G), fastmtl.gram(G).double())
    huge = 2e19 * G  # its float32 Gram overflows: both recompute it in float64
    assert_within(compiled(huge), fastmtl.functional.gram_for_weights(huge), 2 * gram_error_bound(huge, torch.float64))
