"""Bad input gets a clear Python exception naming the problem; never a crash or a wrong number."""

import numpy as np
import pytest
import torch
from conftest import ALL_IMPLS

import fastmtl
from fastmtl import functional

G_OK = torch.randn(3, 10)
OPS = {
    "gram": lambda G, impl: fastmtl.gram(G, impl=impl),
    "cosine_similarity": lambda G, impl: fastmtl.cosine_similarity(G, impl=impl),
    "project_conflicts": lambda G, impl: fastmtl.project_conflicts(G, impl=impl),
    "graddrop": lambda G, impl: fastmtl.graddrop(G, impl=impl),
    "aggregate_sum": lambda G, impl: fastmtl.aggregate(G, "sum", impl=impl),
    "aggregate_mean": lambda G, impl: fastmtl.aggregate(G, "mean", impl=impl),
}


@pytest.mark.parametrize("impl", ALL_IMPLS)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize(
    "G,error,message",
    [
        (torch.randn(10), ValueError, "2-D"),
        (torch.randn(2, 3, 4), ValueError, "2-D"),
        (torch.randn(0, 10), ValueError, "empty"),
        (torch.randn(3, 0), ValueError, "empty"),
        (torch.ones(3, 10, dtype=torch.int64), TypeError, "floating-point"),
        (torch.ones(3, 10, dtype=torch.bool), TypeError, "floating-point"),
        (torch.ones(3, 10).to(torch.float8_e4m3fn), TypeError, "floating-point"),
        (torch.ones(3, 10, dtype=torch.complex64), TypeError, "floating-point"),
        ([[1.0, 2.0]], TypeError, "torch.Tensor"),
    ],
)
def test_bad_gradient_matrix(impl, op, G, error, message):
    with pytest.raises(error, match=message):
        OPS[op](G, impl)


@pytest.mark.parametrize("impl", ALL_IMPLS)
@pytest.mark.parametrize(
    "leak,error,message",
    [
        (-0.1, ValueError, r"\[0, 1\]"),
        (1.5, ValueError, r"\[0, 1\]"),
        (float("nan"), ValueError, r"\[0, 1\]"),
        (torch.tensor([0.1, 0.2, 1.2]), ValueError, r"\[0, 1\]"),
        (torch.tensor([0.1, 0.2]), ValueError, "shape"),
        (torch.tensor([0, 1, 0]), TypeError, "floating-point"),
        ("0.1", TypeError, "leak"),
        (torch.zeros(3, device="meta"), ValueError, "meta"),
    ],
)
def test_bad_leak(impl, leak, error, message):
    with pytest.raises(error, match=message):
        fastmtl.graddrop(G_OK, leak=leak, impl=impl)


@pytest.mark.parametrize("impl", ALL_IMPLS)
@pytest.mark.parametrize(
    "signs,error,message",
    [
        (torch.randn(9), ValueError, "shape"),
        (torch.randn(10, dtype=torch.float64), TypeError, "dtype"),
        (torch.randn(10, device="meta"), ValueError, "meta"),
        ([1.0] * 10, TypeError, "signs"),
    ],
)
def test_bad_signs(impl, signs, error, message):
    with pytest.raises(error, match=message):
        fastmtl.graddrop(G_OK, signs=signs, impl=impl)


def test_bad_options():
    with pytest.raises(ValueError, match="reduction"):
        fastmtl.project_conflicts(G_OK, reduction="max")
    with pytest.raises(ValueError, match="impl"):
        fastmtl.gram(G_OK, impl="fortran")
    with pytest.raises(TypeError, match="generator"):
        fastmtl.project_conflicts(G_OK, generator=42)
    with pytest.raises(ValueError, match="unknown method 'pcgard'"):
        fastmtl.aggregate(G_OK, method="pcgard")
    with pytest.raises(TypeError):
        fastmtl.aggregate(G_OK, method="pcgrad", leak=0.1)  # an option of another method
    with pytest.raises(ValueError, match="impl='cuda'"):
        fastmtl.gram(G_OK, impl="cuda")


def test_bad_out_argument():
    with pytest.raises(ValueError, match="shape"):
        fastmtl.project_conflicts(G_OK, out=torch.empty(9))
    with pytest.raises(TypeError, match="dtype"):
        fastmtl.project_conflicts(G_OK, out=torch.empty(10, dtype=torch.float64))


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_out_overlapping_G_is_rejected(impl):
    # The compiled combine wrote out while still reading G: out = G[0] gave errors of 1.76 at
    # P = 5000. Every impl refuses it, whatever the view.
    G = torch.randn(5, 5000)
    column_major = G.T.contiguous().T
    wide = torch.randn(5, 10_000)
    cases = [(G, G[0]), (G, G[4]), (G, G.view(-1)[2500:7500]), (column_major, column_major[2]),
             (wide[:, ::2], wide[2, 1::2])]  # interleaved: disjoint elements, overlapping range (conservative)
    for grads, out in cases:
        before = grads.clone()
        with pytest.raises(ValueError, match="out overlaps G"):
            functional.combine(grads, torch.ones(5), out=out, impl=impl)
        with pytest.raises(ValueError, match="out overlaps G"):
            fastmtl.project_conflicts(grads, out=out, impl=impl)
        assert torch.equal(grads, before)  # nothing was written
    out = torch.empty(5000)
    assert functional.combine(G, torch.ones(5), out=out, impl=impl) is out  # separate memory is fine
    neighbour = torch.empty(6 * 5000)  # adjacent in one buffer, not overlapping
    G2, out2 = neighbour[:25_000].view(5, 5000), neighbour[25_000:]
    G2.copy_(G)
    functional.combine(G2, torch.ones(5), out=out2, impl=impl)


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_numpy_numbers_are_accepted(impl):
    G = torch.randn(3, 40)
    gen = torch.Generator
    expected = fastmtl.graddrop(G, leak=0.25, generator=gen().manual_seed(1), impl=impl)
    for leak in (np.float32(0.25), np.float64(0.25), np.float16(0.25)):
        assert torch.equal(fastmtl.graddrop(G, leak=leak, generator=gen().manual_seed(1), impl=impl), expected)
    assert torch.equal(fastmtl.graddrop(G, leak=np.int64(1), impl=impl), fastmtl.graddrop(G, leak=1.0, impl=impl))
    batch_impl = "auto" if impl == "cpp" else impl  # the batch form has no C++ kernel
    batched = fastmtl.graddrop(G, batch=np.int64(4), generator=gen().manual_seed(2), impl=batch_impl)
    assert torch.equal(batched, fastmtl.graddrop(G, batch=4, generator=gen().manual_seed(2), impl=batch_impl))
    assert torch.equal(fastmtl.cosine_similarity(G, eps=np.float32(1e-8), impl=impl),
                       fastmtl.cosine_similarity(G, eps=float(np.float32(1e-8)), impl=impl))
    for bad in (True, np.bool_(True)):  # flags are not numbers
        with pytest.raises(TypeError, match="leak"):
            fastmtl.graddrop(G, leak=bad, impl=impl)
        with pytest.raises(ValueError, match="batch"):
            fastmtl.graddrop(G, batch=bad, impl=impl)
        with pytest.raises(ValueError, match="eps"):
            fastmtl.cosine_similarity(G, eps=bad, impl=impl)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fastmtl.graddrop(G, leak=np.float32("nan"), impl=impl)
    with pytest.raises(ValueError, match="eps"):
        fastmtl.cosine_similarity(G, eps=np.float64("nan"), impl=impl)


@pytest.mark.parametrize("impl", ["cpp", "cuda"])
def test_graddrop_batch_refuses_a_compiled_impl(impl):
    # The feature-level batch form exists only on the reference: impl="cpp"/"cuda" used to run it
    # silently; now they raise and say which impl runs it.
    G = torch.randn(3, 40)
    with pytest.raises(ValueError, match="impl='auto' or impl='torch'"):
        fastmtl.graddrop(G, batch=4, impl=impl)
    for ok in ("auto", "torch"):
        assert fastmtl.graddrop(G, batch=4, impl=ok).shape == (40,)


@pytest.mark.parametrize("impl", ALL_IMPLS)
@pytest.mark.parametrize(
    "S,kwargs,error,message",
    [
        (torch.ones(3, 4), {"n_groups": 2}, ValueError, "square"),
        (torch.ones(0, 0), {"n_groups": 1}, ValueError, "empty"),
        (torch.ones(3, 3, dtype=torch.int64), {"n_groups": 2}, TypeError, "floating-point"),
        (torch.tensor([[1.0, 0.5], [0.2, 1.0]]), {"n_groups": 1}, ValueError, "symmetric"),
        (torch.tensor([[1.0, float("nan")], [float("nan"), 1.0]]), {"n_groups": 1}, ValueError, "NaN"),
        (torch.ones(3, 3), {}, ValueError, "exactly one"),
        (torch.ones(3, 3), {"n_groups": 2, "threshold": 0.5}, ValueError, "exactly one"),
        (torch.ones(3, 3), {"n_groups": 4}, ValueError, "n_groups"),
        (torch.ones(3, 3), {"n_groups": 0}, ValueError, "n_groups"),
        (torch.ones(3, 3), {"n_groups": 2.0}, TypeError, "n_groups"),
        (torch.ones(3, 3), {"threshold": float("inf")}, ValueError, "threshold"),
        (torch.ones(3, 3), {"n_groups": 2, "linkage": "ward"}, ValueError, "linkage"),
    ],
)
def test_bad_clustering_input(impl, S, kwargs, error, message):
    with pytest.raises(error, match=message):
        fastmtl.cluster_tasks(S, impl=impl, **kwargs)


@pytest.mark.skipif(not fastmtl.HAS_EXT, reason="fastmtl._C not built")
def test_direct_operator_calls_check_their_input():
    # Calls that bypass the Python layer still fail cleanly (RuntimeError), never read out of bounds.
    ops = torch.ops.fastmtl
    seed = torch.tensor([1, 2])
    with pytest.raises(RuntimeError, match="\\[T, P\\]"):
        ops.gram(torch.randn(5))
    with pytest.raises(RuntimeError, match="non-empty"):
        ops.gram(torch.randn(0, 5))
    with pytest.raises(RuntimeError, match="floating-point"):
        ops.gram(torch.ones(2, 5, dtype=torch.int32))
    with pytest.raises(RuntimeError, match="weights"):
        ops.combine(torch.randn(3, 5), torch.ones(2))
    with pytest.raises(RuntimeError, match="out"):
        ops.combine_into(torch.randn(3, 5), torch.ones(3), torch.empty(4))
    with pytest.raises(RuntimeError, match="leak"):
        ops.graddrop(torch.randn(3, 5), torch.zeros(2), None, seed)
    with pytest.raises(RuntimeError, match="seed"):
        ops.graddrop(torch.randn(3, 5), torch.zeros(3), None, torch.tensor([1]))
    with pytest.raises(RuntimeError, match="signs"):
        ops.graddrop(torch.randn(3, 5), torch.zeros(3), torch.randn(4), seed)
    with pytest.raises(RuntimeError, match="order"):
        ops.pcgrad_weights(torch.eye(3), torch.zeros(2, 2, dtype=torch.int64))
    with pytest.raises(RuntimeError, match="square"):
        ops.pcgrad_weights(torch.ones(2, 3), None)
    with pytest.raises(RuntimeError, match="exactly one"):
        ops.cluster_tasks(torch.eye(3), None, None, "average")
    with pytest.raises(RuntimeError, match="linkage"):
        ops.cluster_tasks(torch.eye(3), 2, None, "ward")
    with pytest.raises(RuntimeError, match="leak values"):
        ops.graddrop(torch.randn(3, 5), torch.tensor([0.0, 1.5, 0.0]), None, seed)
    G = torch.randn(4, 50)
    column_major = G.T.contiguous().T
    # rows, a view straddling two rows, a strided row of a column-major G
    for grads, out in ((G, G[0]), (G, G[3]), (G, G.view(-1)[25:75]), (column_major, column_major[1])):
        with pytest.raises(RuntimeError, match="overlaps grads"):
            ops.combine_into(grads, torch.ones(4), out)
    with pytest.raises(RuntimeError, match="gram"):
        ops.gram_rescue(G, torch.ones(3, 3))
    with pytest.raises(RuntimeError, match="NaN"):
        ops.cluster_tasks(torch.tensor([[1.0, float("nan")], [float("nan"), 1.0]]), 1, None, "average")


def test_pcgrad_weights_accepts_order_from_the_helper():
    order = functional.pcgrad_order(5, shuffle=True, generator=torch.Generator().manual_seed(0), device="cpu")
    assert order.shape == (5, 5) and order.dtype == torch.int64
    assert all(sorted(row) == list(range(5)) for row in order.tolist())
    assert functional.pcgrad_order(5, shuffle=False, generator=None, device="cpu") is None
