"""PCGrad: Gram-space solve and project_conflicts vs the per-vector paper algorithm, torchjd,
hand-computed cases; compiled kernels vs the reference in every dtype and layout."""

import pytest
import torch
from conftest import (
    ALL_IMPLS,
    COMPILED_IMPLS,
    DTYPES,
    UNIT_ROUNDOFF,
    assert_within,
    gamma,
    gram_error_bound,
    pcgrad_coefficients,
    pcgrad_error_bound,
    pcgrad_per_vector_error_bound,
    weighted_sum_error_bound,
)
from oracles import pcgrad_per_vector, random_gradients

import fastmtl
from fastmtl import functional


def orders_for(T: int, seed: int) -> torch.Tensor:
    """The orders project_conflicts draws from a generator seeded with ``seed`` (on the CPU)."""
    return functional.pcgrad_order(T, shuffle=True, generator=torch.Generator().manual_seed(seed), device="cpu")


def bound_vs_per_vector(G, orders=None, reduction="sum", **dtypes):
    """How far a fastmtl PCGrad result may lie from pcgrad_per_vector: both error bounds."""
    A = pcgrad_coefficients(G.double() @ G.double().T, orders)
    return pcgrad_error_bound(G, A, reduction=reduction, **dtypes) + pcgrad_per_vector_error_bound(G, reduction)


def integer_gradients(T: int, P: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    """Gradients in {-8, ..., 8}: every partial sum of the Gram matrix is an integer below
    64 P < 2^24, exact in every accumulation dtype, so paths that differ only in how they
    accumulate K see the same K (and float16/bfloat16 hold the values exactly)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(-8, 9, (T, P), generator=gen).to(dtype)


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_hand_computed_two_tasks(impl):
    # g1 = (1, 0), g2 = (-1, 1): g1.g2 = -1.
    # g1PC = g1 + 1/2 g2 = (0.5, 0.5); g2PC = g2 + 1/1 g1 = (0, 1); sum = (0.5, 1.5).
    # Every intermediate value is a small dyadic rational: the arithmetic is exact.
    G = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
    out = fastmtl.project_conflicts(G, shuffle=False, impl=impl)
    assert torch.equal(out, torch.tensor([0.5, 1.5], dtype=torch.float64))
    weights = functional.pcgrad_weights(fastmtl.gram(G, impl=impl), None, impl=impl)
    assert torch.equal(weights, torch.tensor([2.0, 1.5], dtype=torch.float64))
    mean = fastmtl.project_conflicts(G, shuffle=False, reduction="mean", impl=impl)
    assert torch.equal(mean, torch.tensor([0.25, 0.75], dtype=torch.float64))


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_hand_computed_order_matters(impl):
    # Task 0 meets tasks 1 and 2 in either order; the results differ (projection is sequential).
    G = torch.tensor([[1.0, 0.0], [-1.0, 1.0], [-1.0, -2.0]], dtype=torch.float64)
    order_a = torch.tensor([[0, 1, 2], [0, 1, 2], [0, 1, 2]])
    order_b = torch.tensor([[2, 1, 0], [0, 1, 2], [0, 1, 2]])
    K = fastmtl.gram(G, impl=impl)
    w_a = functional.pcgrad_weights(K, order_a, impl=impl)
    w_b = functional.pcgrad_weights(K, order_b, impl=impl)
    for w, order in ((w_a, order_a), (w_b, order_b)):
        assert_within(w @ G, pcgrad_per_vector(G, order.tolist()), bound_vs_per_vector(G, order), str(order))
    # w_a = (3, 2.5, 1.7), w_b = (3, 2.6, 1.6): 0.1 apart, far beyond any rounding.
    assert float((w_a - w_b).abs().max()) > 0.05


@pytest.mark.parametrize("impl", ALL_IMPLS)
@pytest.mark.parametrize("T", [1, 2, 3, 5, 8, 16])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_matches_per_vector_paper_algorithm(impl, T, reduction):
    G = random_gradients(T, 3001, seed=T, dtype=torch.float64)
    gen = torch.Generator().manual_seed(T)
    orders = orders_for(T, T)
    out = fastmtl.project_conflicts(G, reduction=reduction, generator=gen, impl=impl)
    expected = pcgrad_per_vector(G, orders.tolist(), reduction)
    assert_within(out, expected, bound_vs_per_vector(G, orders, reduction), f"T={T}")


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_index_order_matches_per_vector(impl):
    G = random_gradients(6, 2000, seed=4, dtype=torch.float64)
    assert_within(fastmtl.project_conflicts(G, shuffle=False, impl=impl), pcgrad_per_vector(G), bound_vs_per_vector(G))


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_matches_torchjd_for_two_tasks(impl):
    torchjd = pytest.importorskip("torchjd.aggregation")
    for seed in range(5):
        G = random_gradients(2, 500, seed=seed, dtype=torch.float64)
        expected = torchjd.PCGrad()(G)
        # torchjd also solves in Gram space in float64 (PCGradWeighting): the same bound holds for
        # it. With two tasks the order does not matter.
        bound = 2 * pcgrad_error_bound(G, pcgrad_coefficients(G @ G.T))
        assert_within(fastmtl.project_conflicts(G, impl=impl), expected, bound, f"seed {seed}")


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_non_conflicting_tasks_are_summed_unchanged(impl):
    G = torch.rand(4, 100, dtype=torch.float64)  # all dot products positive: w = 1 exactly
    # Two float64 sums of the same 4 terms, each within γ_3 Σ_i |g_i| of the exact sum.
    assert_within(fastmtl.project_conflicts(G, impl=impl), G.sum(0), 2 * weighted_sum_error_bound(G))


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
        error = pcgrad_error_bound(G, pcgrad_coefficients(K))  # elementwise, on out
        for i, j in ((0, 1), (1, 0)):
            expected = K[i, i] - K[0, 1] ** 2 / K[j, j]
            # out . g_i errs by Σ_p error_p |g_ip| from out's error, plus γ_P Σ_p |out_p g_ip| from the
            # dot; expected by (4 γ_P + 3u) |g_i|² (K_ii, and K_01 / (|g_0||g_1|), squared, divided).
            P = G.shape[1]
            bound = float(error @ G[i].abs() + gamma(P, torch.float64) * (out.abs() @ G[i].abs())
                          + (4 * gamma(P, torch.float64) + 3 * UNIT_ROUNDOFF[torch.float64]) * K[i, i])
            assert abs(float(out @ G[i]) - float(expected)) <= bound
            assert float(out @ G[i]) >= -bound


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_zero_gradient_task_is_skipped(impl):
    G = random_gradients(4, 1000, seed=7, dtype=torch.float64)
    G[2] = 0
    out = fastmtl.project_conflicts(G, shuffle=False, impl=impl)
    assert torch.isfinite(out).all()
    keep = [0, 1, 3]
    bound = pcgrad_error_bound(G, pcgrad_coefficients(G @ G.T)) + pcgrad_per_vector_error_bound(G[keep])
    assert_within(out, pcgrad_per_vector(G[keep]), bound)
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
    # Integer gradients: both paths see the same, exact K, so they differ only by their float64
    # solves and their combine passes, each within pcgrad_error_bound of the exact result.
    G = integer_gradients(T, P, seed=P, dtype=dtype)
    out = fastmtl.project_conflicts(G, generator=torch.Generator().manual_seed(0), impl=impl)
    ref = fastmtl.project_conflicts(G, generator=torch.Generator().manual_seed(0), impl="torch")
    assert out.dtype == dtype and out.shape == (P,)
    A = pcgrad_coefficients(G.double() @ G.double().T, orders_for(T, 0))
    assert_within(out, ref, 2 * pcgrad_error_bound(G, A, exact_gram=True), f"{dtype}")


@pytest.mark.parametrize("impl", ALL_IMPLS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_low_precision_error_is_the_combine_rounding(impl, dtype):
    # With an exact K (integer gradients), fastmtl's only low-precision error is the float32
    # w . G and the rounding of the result to the input dtype: what plain PyTorch's w.to(dtype) @ G
    # would at best give.
    G = integer_gradients(8, 20_000, seed=5, dtype=dtype)
    truth = pcgrad_per_vector(G.double(), None)
    out = fastmtl.project_conflicts(G, shuffle=False, impl=impl)
    assert out.dtype == dtype
    A = pcgrad_coefficients(G.double() @ G.double().T)
    bound = pcgrad_error_bound(G, A, exact_gram=True) + pcgrad_per_vector_error_bound(G.double())
    assert_within(out, truth, bound, f"{dtype}")


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_non_contiguous_input(impl):
    base = random_gradients(4, 4002, seed=2, dtype=torch.float64)
    for G in (base[:, ::2], base.T.contiguous().T, base[:, 1:2001]):
        out = fastmtl.project_conflicts(G, shuffle=False, impl=impl)
        assert_within(out, pcgrad_per_vector(G), bound_vs_per_vector(G))


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
    bound = bound_vs_per_vector(G)  # float32 K, combine and output
    assert_within(out, pcgrad_per_vector(G), bound)
    strided = torch.zeros(2000)[::2]  # a non-contiguous destination
    fastmtl.project_conflicts(G, shuffle=False, out=strided, impl=impl)
    assert_within(strided, pcgrad_per_vector(G), bound)


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_solve_skips_self_and_out_of_range_order_entries(impl):
    K = torch.tensor([[1.0, -1.0], [-1.0, 2.0]], dtype=torch.float64)
    order = torch.tensor([[0, 7], [-3, 1]])  # nothing valid to meet: no projection at all
    assert torch.equal(functional.pcgrad_weights(K, order, impl=impl), torch.ones(2, dtype=torch.float64))


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_huge_finite_gradients_give_a_finite_result(impl):
    # |g| ~ 2e19: the float32 Gram overflows (|g|^2 P ~ 4e41 > 3.4e38) while the plain sum is
    # finite. gram_for_weights recomputes K in float64, so the solve sees ε_K = γ_{P+1}(float64),
    # and the float32 combine and output roundings dominate the bound.
    G = 2e19 * torch.randn(3, 1000, generator=torch.Generator().manual_seed(0))
    assert not torch.isfinite(fastmtl.gram(G, impl=impl)).all()
    for shuffle in (False, True):
        out = fastmtl.project_conflicts(G, shuffle=shuffle, generator=torch.Generator().manual_seed(1), impl=impl)
        assert out.dtype == torch.float32 and torch.isfinite(out).all()
        orders = orders_for(3, 1) if shuffle else None
        bound = bound_vs_per_vector(G, orders, gram_dtype=torch.float64)
        assert_within(out, pcgrad_per_vector(G, None if orders is None else orders.tolist()), bound, f"{shuffle=}")


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_gram_for_weights_rescues_only_an_overflowed_gram(impl):
    G = random_gradients(4, 500, seed=3)
    assert torch.equal(functional.gram_for_weights(G, impl=impl), fastmtl.gram(G, impl=impl))  # float32, as is
    huge = 2e19 * G
    K = functional.gram_for_weights(huge, impl=impl)
    assert K.dtype == torch.float64 and torch.isfinite(K).all() and torch.equal(K, K.T)
    truth = huge.double() @ huge.double().T
    assert_within(K, truth, 2 * gram_error_bound(huge, torch.float64))
    nan = G.clone()
    nan[1, 7] = float("nan")  # NaN in G stays visible: no rescue can make K finite
    assert not torch.isfinite(functional.gram_for_weights(nan, impl=impl)).all()
    G64 = G.double()
    assert torch.equal(functional.gram_for_weights(G64, impl=impl), fastmtl.gram(G64, impl=impl))


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_float64_weights_combine_with_float32_gradients(impl):
    # gram_for_weights may hand a float64 K to the solve while G stays float32: the weights come
    # back float64 and combine takes weights of any float dtype.
    G = integer_gradients(5, 3000, seed=2, dtype=torch.float32)
    K64 = G.double() @ G.double().T  # exact: integer gradients
    w64 = functional.pcgrad_task_weights(K64, shuffle=False, impl=impl)
    assert w64.dtype == torch.float64
    w32 = functional.pcgrad_task_weights(K64.float(), shuffle=False, impl=impl)
    assert torch.equal(w64.float(), w32)  # the same float64 solve on the same (exact) K
    for dtype in (torch.float64, torch.float32, torch.bfloat16, torch.float16):
        w = w64.to(dtype)
        out = functional.combine(G, w, impl=impl)
        assert out.dtype == torch.float32
        assert_within(out, w.double() @ G.double(), weighted_sum_error_bound(G, w), f"{dtype}")


@pytest.mark.parametrize("impl", ALL_IMPLS)
@pytest.mark.parametrize("T", [64, 200])
def test_fast_solve_equals_the_direct_solve(impl, T):
    # The O(T · projections) solves against the plain O(T^3) one (every dot recomputed in full),
    # on exact integer Gram matrices: w . G agrees within both solves' float64 error bounds.
    G = integer_gradients(T, 300, seed=T)
    K = G @ G.T
    for orders in (None, orders_for(T, 7)):
        A = pcgrad_coefficients(K, orders)
        w = functional.pcgrad_weights(K, orders, impl=impl)
        assert_within(w @ G, A.sum(0) @ G, 2 * pcgrad_error_bound(G, A, exact_gram=True), f"T={T}")
