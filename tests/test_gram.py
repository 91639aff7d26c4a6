"""Gram pass and cosine similarities: compiled kernels vs reference vs float64 truth."""

import pytest
import torch
from conftest import COMPILED_IMPLS, DTYPES, UNIT_ROUNDOFF, accumulate_dtype, assert_within, gamma, gram_error_bound
from oracles import random_gradients

import fastmtl


def exact_gram(G):
    X = G.double()
    return X @ X.T


def bound_vs_exact_gram(G):
    """fastmtl's K and exact_gram(G) each lie within gram_error_bound of G Gᵀ (in G's accumulation
    dtype and in float64)."""
    return gram_error_bound(G) + gram_error_bound(G, torch.float64)


def cosine_error_bound(P: int, dtype: torch.dtype) -> float:
    """|computed - exact| for a cosine similarity of two P-vectors, by fastmtl's K_ij / (n_i n_j)
    (n_i = sqrt(K_ii)) or by torch's (x / |x|) . (y / |y|): the dot is within γ_{P+1} |x| |y|
    (Cauchy-Schwarz), the squared norms within a relative γ_{P+1} (the square roots halve that),
    and the square roots, products and divisions add at most 4u, so the cosine (|c| <= 1) errs
    by at most 2 γ_{P+1} + 4u to first order; one more u covers the second-order terms (γ < 1e-3)."""
    return 2 * gamma(P + 1, dtype) + 5 * UNIT_ROUNDOFF[dtype]


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
    assert_within(K, exact_gram(G), bound_vs_exact_gram(G), f"{dtype}")


@pytest.mark.parametrize("impl", COMPILED_IMPLS)
def test_gram_compiled_equals_reference(impl):
    G = random_gradients(8, 50_000, seed=3)
    # Each within gram_error_bound of G Gᵀ.
    assert_within(fastmtl.gram(G, impl=impl), fastmtl.gram(G, impl="torch"), 2 * gram_error_bound(G), "gram")


@pytest.mark.parametrize("impl", [*COMPILED_IMPLS, "torch"])
def test_gram_hand_computed(impl):
    G = torch.tensor([[1.0, 2.0, 0.0], [0.0, -1.0, 3.0]])  # small integers: exact arithmetic
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
    assert_within(fastmtl.gram(G, impl=impl), exact_gram(G), bound_vs_exact_gram(G), layout)


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
    else:  # BLAS (e.g. MKL) may split the sums differently per thread count: two results, each
        # within gram_error_bound of G Gᵀ (a guessed 1e-6 failed on an AVX-512 Xeon with MKL)
        assert_within(one, many, 2 * gram_error_bound(G))


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
    assert_within(fastmtl.cosine_similarity(G, impl=impl), expected, 2 * cosine_error_bound(5000, torch.float64))


@pytest.mark.parametrize("impl", [*COMPILED_IMPLS, "torch"])
def test_cosine_is_exact_for_tiny_norms(impl):
    G = 1e-6 * random_gradients(3, 1000, seed=4, dtype=torch.float64)
    expected = torch.nn.functional.cosine_similarity(G[:, None, :], G[None, :, :], dim=-1)
    C = fastmtl.cosine_similarity(G, impl=impl)
    bound = cosine_error_bound(1000, torch.float64)
    assert_within(C, expected, 2 * bound)
    assert_within(C.diagonal(), torch.ones(3), bound)


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
    assert_within(C[0, 0], torch.tensor(1.0), cosine_error_bound(100, accumulate_dtype(G.dtype)))
