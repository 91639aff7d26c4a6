"""PCGrad: Gram-space solve and project_conflicts vs the per-vector paper algorithm, torchjd,
hand-computed cases; compiled kernels vs the reference in every dtype and layout."""

import pytest
import torch
from conftest import ALL_IMPLS, COMPILED_IMPLS, DTYPES, OUTPUT_RTOL, assert_close_rel
from oracles import pcgrad_per_vector, random_gradients

import fastmtl
from fastmtl import functional


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_hand_computed_two_tasks(impl):
    # g1 = (1, 0), g2 = (-1, 1): g1.g2 = -1.
    # g1PC = g1 + 1/2 g2 = (0.5, 0.5); g2PC = g2 + 1/1 g1 = (0, 1); sum = (0.5, 1.5).
    G = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
    out = fastmtl.project_conflicts(G, shuffle=False, impl=impl)
    assert torch.allclose(out, torch.tensor([0.5, 1.5], dtype=torch.float64), atol=1e-15)
    weights = functional.pcgrad_weights(fastmtl.gram(G, impl=impl), None, impl=impl)
    assert torch.allclose(weights, torch.tensor([2.0, 1.5], dtype=torch.float64), atol=1e-15)
    mean = fastmtl.project_conflicts(G, shuffle=False, reduction="mean", impl=impl)
    assert torch.allclose(mean, torch.tensor([0.25, 0.75], dtype=torch.float64), atol=1e-15)


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_hand_computed_order_matters(impl):
    # Task 0 meets tasks 1 and 2 in either order; the results differ (projection is sequential).
    G = torch.tensor([[1.0, 0.0], [-1.0, 1.0], [-1.0, -2.0]], dtype=torch.float64)
    order_a = torch.tensor([[0, 1, 2], [0, 1, 2], [0, 1, 2]])
    order_b = torch.tensor([[2, 1, 0], [0, 1, 2], [0, 1, 2]])
    K = fastmtl.gram(G, impl=impl)
    w_a = functional.pcgrad_weights(K, order_a, impl=impl)
    w_b = functional.pcgrad_weights(K, order_b, impl=impl)
    assert torch.allclose(w_a @ G, pcgrad_per_vector(G, order_a.tolist()), atol=1e-12)
    assert torch.allclose(w_b @ G, pcgrad_per_vector(G, order_b.tolist()), atol=1e-12)
    assert not torch.allclose(w_a, w_b)


@pytest.mark.parametrize("impl", ALL_IMPLS)
@pytest.mark.parametrize("T", [1, 2, 3, 5, 8, 16])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_matches_per_vector_paper_algorithm(impl, T, reduction):
    G = random_gradients(T, 3001, seed=T, dtype=torch.float64)
    gen = torch.Generator().manual_seed(T)
    orders = functional.pcgrad_order(T, shuffle=True, generator=torch.Generator().manual_seed(T), device="cpu")
    out = fastmtl.project_conflicts(G, reduction=reduction, generator=gen, impl=impl)
    expected = pcgrad_per_vector(G, orders.tolist(), reduction)
    assert_close_rel(out, expected, 1e-12, f"T={T}")


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_index_order_matches_per_vector(impl):
    G = random_gradients(6, 2000, seed=4, dtype=torch.float64)
    assert_close_rel(fastmtl.project_conflicts(G, shuffle=False, impl=impl), pcgrad_per_vector(G), 1e-12)


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_matches_torchjd_for_two_tasks(impl):
    torchjd = pytest.importorskip("torchjd.aggregation")
    for seed in range(5):
        G = random_gradients(2, 500, seed=seed, dtype=torch.float64)
        expected = torchjd.PCGrad()(G)
        assert_close_rel(fastmtl.project_conflicts(G, impl=impl), expected, 1e-12, f"seed {seed}")


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_non_conflicting_tasks_are_summed_unchanged(impl):
    G = torch.rand(4, 100, dtype=torch.float64)  # all dot products positive
    assert_close_rel(fastmtl.project_conflicts(G, impl=impl), G.sum(0), 1e-14)


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_two_task_update_conflicts_with_neither_task(impl):
    # For T = 2, PCGrad's update d satisfies d . g_i = |g_i|^2 - (g_0 . g_1)^2 / |g_j|^2 >= 0
    # (Cauchy-Schwarz), while the plain sum conflicts with one of the tasks.
    for seed in range(5):
        G = torch.randn(2, 1000, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        G[1] = -2.0 * G[0] + 0.3 * G[1]  # conflicting, and dominating the plain sum
        assert float(G[0] @ G[1]) < 0 and float(G.sum(0) @ G[0]) * float(G.sum(0) @ G[1]) < 0
        out = fastmtl.project_conflicts(G, impl=impl)
        K = G @ G.T
        for i, j in ((0, 1), (1, 0)):
            expected = K[i, i] - K[0, 1] ** 2 / K[j, j]
            assert float(out @ G[i]) == pytest.approx(float(expected), rel=1e-9)
            assert float(out @ G[i]) >= 0


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_zero_gradient_task_is_skipped(impl):
    G = random_gradients(4, 1000, seed=7, dtype=torch.float64)
    G[2] = 0
    out = fastmtl.project_conflicts(G, shuffle=False, impl=impl)
    assert torch.isfinite(out).all()
    keep = [0, 1, 3]
    assert_close_rel(out, pcgrad_per_vector(G[keep]), 1e-12)
    zero = torch.zeros(3, 50)
    assert torch.equal(fastmtl.project_conflicts(zero, impl=impl), torch.zeros(50))


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_underflowing_norm_never_divides_by_zero(impl):
    # |g_1|^2 underflows to 0 in float32 while g_0 . g_1 does not: skipped, not divided by.
    G = torch.zeros(2, 4)
    G[0, 0] = 1e15
    G[1, 0] = -1e-25
    out = fastmtl.project_conflicts(G, shuffle=False, impl=impl)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_single_task_is_identity(impl):
    G = random_gradients(1, 777, seed=1)
    assert torch.equal(fastmtl.project_conflicts(G, impl=impl), G[0])


@pytest.mark.parametrize("impl", ALL_IMPLS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_input_makes_whole_result_nan(impl, bad):
    G = random_gradients(3, 100, seed=3)
    G[1, 4] = bad
    out = fastmtl.project_conflicts(G, impl=impl)
    assert torch.isnan(out).all()


@pytest.mark.parametrize("impl", COMPILED_IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,P", [(2, 1), (3, 1000), (5, 4099), (7, 300), (8, 65_537), (16, 10_000), (64, 3000), (200, 257)])
def test_compiled_equals_reference(impl, dtype, T, P):
    G = random_gradients(T, P, seed=P, dtype=dtype)
    out = fastmtl.project_conflicts(G, generator=torch.Generator().manual_seed(0), impl=impl)
    ref = fastmtl.project_conflicts(G, generator=torch.Generator().manual_seed(0), impl="torch")
    assert out.dtype == dtype and out.shape == (P,)
    rtol = OUTPUT_RTOL[dtype] if dtype != torch.float32 else 1e-5
    assert_close_rel(out, ref, rtol, f"{dtype}", scale=G.double().abs().max() * T)


@pytest.mark.parametrize("impl", ALL_IMPLS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_error_bounded_by_plain_pytorch(impl, dtype):
    # Same inputs, exact float64 answer; fastmtl in low precision may be at most 4x worse than
    # plain PyTorch doing the final w.G in that precision.
    G = random_gradients(8, 20_000, seed=5, dtype=dtype)
    truth = pcgrad_per_vector(G.double(), None)
    out = fastmtl.project_conflicts(G, shuffle=False, impl=impl).double()
    w = functional.pcgrad_weights(G.double() @ G.double().T, None, impl="torch")
    plain = (w.to(dtype) @ G).double()
    assert (out - truth).abs().max() <= 4 * (plain - truth).abs().max() + 1e-6


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_non_contiguous_input(impl):
    base = random_gradients(4, 4002, seed=2, dtype=torch.float64)
    for G in (base[:, ::2], base.T.contiguous().T, base[:, 1:2001]):
        assert_close_rel(fastmtl.project_conflicts(G, shuffle=False, impl=impl), pcgrad_per_vector(G), 1e-12)


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_seeded_shuffle_is_reproducible(impl):
    G = random_gradients(6, 1000, seed=1)
    a = fastmtl.project_conflicts(G, generator=torch.Generator().manual_seed(5), impl=impl)
    b = fastmtl.project_conflicts(G, generator=torch.Generator().manual_seed(5), impl=impl)
    assert torch.equal(a, b)


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_out_argument_writes_in_place(impl):
    G = random_gradients(3, 1000, seed=4)
    out = torch.full((1000,), 7.0)
    result = fastmtl.project_conflicts(G, shuffle=False, out=out, impl=impl)
    assert result.data_ptr() == out.data_ptr()
    assert_close_rel(out, pcgrad_per_vector(G), 1e-5)
    strided = torch.zeros(2000)[::2]  # a non-contiguous destination
    fastmtl.project_conflicts(G, shuffle=False, out=strided, impl=impl)
    assert_close_rel(strided, pcgrad_per_vector(G), 1e-5)


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_solve_skips_self_and_out_of_range_order_entries(impl):
    K = torch.tensor([[1.0, -1.0], [-1.0, 2.0]], dtype=torch.float64)
    order = torch.tensor([[0, 7], [-3, 1]])  # nothing valid to meet: no projection at all
    assert torch.equal(functional.pcgrad_weights(K, order, impl=impl), torch.ones(2, dtype=torch.float64))
