"""Gram pass and cosine similarities: compiled kernels vs reference vs float64 truth."""

import pytest
import torch
from conftest import COMPILED_IMPLS, DTYPES, assert_close_rel
from oracles import random_gradients

import fastmtl


def exact_gram(G):
    X = G.double()
    return X @ X.T


@pytest.mark.parametrize("impl", [*COMPILED_IMPLS, "torch"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "T,P", [(1, 1), (1, 1000), (3, 7), (4, 4099), (8, 100_003), (16, 33_000), (5, 70_001), (64, 5000), (200, 300)]
)
def test_gram_matches_float64_truth(impl, dtype, T, P):
    G = random_gradients(T, P, seed=T * P, dtype=dtype)
    K = fastmtl.gram(G, impl=impl)
    assert K.shape == (T, T)
    assert K.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert torch.equal(K, K.T)
    # fp32 accumulation over P terms; the bound is what torch's own fp32 matmul achieves x 4.
    truth = exact_gram(G)
    X = G.float()
    torch_error = ((X @ X.T).double() - truth).abs().max().item()
    rtol = 1e-12 if dtype == torch.float64 else 1e-6
    bound = max(4 * torch_error, rtol * truth.abs().max().item())
    assert (K.double() - truth).abs().max().item() <= bound


@pytest.mark.parametrize("impl", COMPILED_IMPLS)
def test_gram_compiled_equals_reference(impl):
    G = random_gradients(8, 50_000, seed=3)
    assert_close_rel(fastmtl.gram(G, impl=impl), fastmtl.gram(G, impl="torch"), 1e-5, "gram")


@pytest.mark.parametrize("impl", [*COMPILED_IMPLS, "torch"])
def test_gram_hand_computed(impl):
    G = torch.tensor([[1.0, 2.0, 0.0], [0.0, -1.0, 3.0]])
    expected = torch.tensor([[5.0, -2.0], [-2.0, 10.0]])
    assert torch.equal(fastmtl.gram(G, impl=impl), expected)


@pytest.mark.parametrize("impl", [*COMPILED_IMPLS, "torch"])
@pytest.mark.parametrize("layout", ["column_major", "strided_columns", "row_slice_of_wider", "transposed_view"])
def test_gram_non_contiguous(impl, layout):
    base = random_gradients(6, 2 * 10_001, seed=5)
    if layout == "column_major":
        G = base.T.contiguous().T  # stride (1, T)
    elif layout == "strided_columns":
        G = base[:, ::2]
    elif layout == "row_slice_of_wider":
        G = base[:, 10:10_011]  # rows contiguous, row stride > P
    else:
        G = base[:, :6].T  # a [6, 6] transpose view: stride (1, row length)
    assert not G.is_contiguous()
    assert_close_rel(fastmtl.gram(G, impl=impl), exact_gram(G.contiguous()), 1e-5, layout)


@pytest.mark.parametrize("impl", [*COMPILED_IMPLS, "torch"])
def test_gram_result_independent_of_thread_count(impl):
    G = random_gradients(5, 300_000, seed=11)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = fastmtl.gram(G, impl=impl)
        torch.set_num_threads(max(2, threads))
        many = fastmtl.gram(G, impl=impl)
    finally:
        torch.set_num_threads(threads)
    if impl == "cpp":  # chunked reduction in fixed order: bitwise equal
        assert torch.equal(one, many)
    else:
        assert_close_rel(one, many, 1e-6)


@pytest.mark.parametrize("impl", [*COMPILED_IMPLS, "torch"])
def test_gram_propagates_nan_and_inf(impl):
    G = random_gradients(3, 1000, seed=2)
    G[1, 17] = float("nan")
    K = fastmtl.gram(G, impl=impl)
    assert torch.isnan(K[1]).all() and torch.isnan(K[:, 1]).all()
    assert torch.isfinite(K[0, 0]) and torch.isfinite(K[0, 2]) and torch.isfinite(K[2, 2])
    G = random_gradients(3, 1000, seed=2)
    G[2, 5] = float("inf")
    K = fastmtl.gram(G, impl=impl)
    assert not torch.isfinite(K[2, 2]) and torch.isfinite(K[0, 1])


@pytest.mark.parametrize("impl", [*COMPILED_IMPLS, "torch"])
def test_cosine_similarity(impl):
    G = random_gradients(4, 5000, seed=8, dtype=torch.float64)
    expected = torch.nn.functional.cosine_similarity(G[:, None, :], G[None, :, :], dim=-1)
    assert_close_rel(fastmtl.cosine_similarity(G, impl=impl), expected, 1e-12)


@pytest.mark.parametrize("impl", [*COMPILED_IMPLS, "torch"])
def test_cosine_is_exact_for_tiny_norms(impl):
    G = 1e-6 * random_gradients(3, 1000, seed=4, dtype=torch.float64)
    expected = torch.nn.functional.cosine_similarity(G[:, None, :], G[None, :, :], dim=-1)
    C = fastmtl.cosine_similarity(G, impl=impl)
    assert_close_rel(C, expected, 1e-10)
    assert torch.allclose(C.diagonal(), torch.ones(3, dtype=torch.float64))


@pytest.mark.parametrize("eps", [0.0, -1.0, float("nan")])
def test_cosine_rejects_non_positive_eps(eps):
    with pytest.raises(ValueError, match="eps"):
        fastmtl.cosine_similarity(torch.randn(2, 5), eps=eps)


@pytest.mark.parametrize("impl", [*COMPILED_IMPLS, "torch"])
def test_cosine_zero_gradient_task_is_zero_not_nan(impl):
    G = random_gradients(3, 100, seed=1)
    G[1] = 0
    C = fastmtl.cosine_similarity(G, impl=impl)
    assert torch.isfinite(C).all()
    assert torch.equal(C[1], torch.zeros(3)) and torch.equal(C[:, 1], torch.zeros(3))
    assert C[0, 0].item() == pytest.approx(1.0, abs=1e-6)
