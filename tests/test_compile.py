"""The public ops trace into a single graph under torch.compile (fake kernels, no graph
breaks from host syncs) and give the eager results."""

import pytest
import torch
from oracles import random_gradients

import fastmtl

pytestmark = pytest.mark.skipif(not fastmtl.HAS_EXT, reason="fastmtl._C not built")


def test_project_conflicts_compiles_fullgraph():
    G = random_gradients(4, 1000, seed=1)
    compiled = torch.compile(lambda G: fastmtl.project_conflicts(G, shuffle=False), backend="aot_eager", fullgraph=True)
    assert torch.allclose(compiled(G), fastmtl.project_conflicts(G, shuffle=False))


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
    assert torch.allclose(dropped, G.sum(0), atol=1e-5)
    assert torch.allclose(K, fastmtl.gram(G))
