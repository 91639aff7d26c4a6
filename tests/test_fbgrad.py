"""FBGrad (FairBranch, Roy et al. 2024, Eq. 12) vs the per-vector algorithm (tests/oracles.py),
PCGrad (project_conflicts and the paper's PCGrad oracle), and hand-computed cases."""

import math

import pytest
import torch
from conftest import (
    DEVICES,
    DTYPES,
    UNIT_ROUNDOFF,
    accumulate_dtype,
    assert_within,
    gamma,
    pcgrad_coefficients,
    pcgrad_error_bound,
    pcgrad_per_vector_error_bound,
)
from oracles import fbgrad_per_vector, pcgrad_per_vector, random_gradients

import fastmtl
from fastmtl import fbgrad

F64 = torch.float64


def row_bounds(M: torch.Tensor) -> torch.Tensor:
    """Bound [k] (a 2-norm, hence elementwise) on |fbgrad row i - exact row i| for a matrix M [k, P]
    (the weight's G, or a follower whose conflict decisions are not in doubt), plus the error of
    the float64 per-vector oracle.

    In exact arithmetic every step g <- g - (g·m_j / |m_j|²) m_j is an orthogonal projection, so the
    running row never grows and each coefficient satisfies |c_j| |m_j| <= |m_i|: β_i = Σ_j |A_ij| |m_j|
    <= k |m_i|. fastmtl decides and forms the coefficients in the Gram's dtype (float32, float64
    for float64 input) from K with |ΔK_ij| <= γ_{P+1} |m_i| |m_j|: each of the k - 1 steps errs by at
    most (2 γ_{P+1} + γ_{3k+1} + u) β_i from the exact step taken from the same point (conftest's
    pcgrad_error_bound argument; a test that flips near g·m_j = 0 moves the row by less than the
    error of the dot), and the steps are 1-Lipschitz. The row, g_i + Σ_j A_ij m_j over the
    projections that fired, is formed in the accumulation dtype (γ_{k+1} β_i) and stored in M's
    dtype (u_out (1 + γ) β_i). The oracle: the same per step in float64 with |m_i|."""
    k, P = M.shape
    acc = accumulate_dtype(M.dtype)
    norms = M.double().cpu().norm(dim=1) * (1 + gamma(P + 1, F64))
    local = 2 * gamma(P + 1, acc) + gamma(3 * k + 1, acc) + UNIT_ROUNDOFF[acc]
    steps = (k - 1) * local * (1 + 2 * (k - 1) * local)
    store = gamma(k + 1, acc) + UNIT_ROUNDOFF[M.dtype] * (1 + gamma(k + 1, acc))
    local64 = 2 * gamma(P + 1, F64) + 3 * UNIT_ROUNDOFF[F64]
    oracle = (k - 1) * local64 * (1 + 2 * (k - 1) * local64) + UNIT_ROUNDOFF[F64]
    return (steps + store) * k * norms + oracle * norms


def decision_margin(G: torch.Tensor) -> float:
    """The smallest |g_i' · g_j| / (|g_i| |g_j|) over the tests the oracle makes (g_i' the running
    row), in float64."""
    G = G.double()
    smallest = math.inf
    for i in range(G.shape[0]):
        g = G[i].clone()
        for j in range(G.shape[0]):
            if j == i:
                continue
            dot = torch.dot(g, G[j])
            if not (G[i].any() and G[j].any()):
                continue  # a zero row: the dot is exactly 0 in any arithmetic, the test is false
            smallest = min(smallest, abs(float(dot)) / float(G[i].norm() * G[j].norm()))
            if dot < 0:
                g = g - dot / torch.dot(G[j], G[j]) * G[j]
    return smallest


def decision_error(G: torch.Tensor) -> float:
    """Bound on the error of any test fastmtl or the oracle makes, relative to |g_i| |g_j|: the running
    row is within the step errors of row_bounds (times k |g_i|), and the dot itself adds
    (γ_{P+1} + γ_{3k+1}) β_i |g_j| (conftest's pcgrad_error_bound argument), in the Gram's dtype;
    the same in float64 for the oracle. A follower is comparable with the oracle only where every
    test is clear of this (a flipped test would project it by a finite amount)."""
    k, P = G.shape
    terms = []
    for dtype in (accumulate_dtype(G.dtype), F64):
        local = 2 * gamma(P + 1, dtype) + gamma(3 * k + 1, dtype) + UNIT_ROUNDOFF[dtype]
        terms.append(k * ((k - 1) * local * (1 + 2 * (k - 1) * local) + gamma(P + 1, dtype) + gamma(3 * k + 1, dtype)))
    return sum(terms)


def check_rows(actual: torch.Tensor, expected: torch.Tensor, M: torch.Tensor, what: str) -> None:
    assert actual.dtype == M.dtype and actual.shape == M.shape
    bounds = row_bounds(M)
    for i in range(M.shape[0]):
        assert_within(actual[i], expected[i], float(bounds[i]), f"{what} row {i}")


def fired(G: torch.Tensor, out: torch.Tensor) -> bool:
    """Whether the projection moved some row by more than any rounding could."""
    moved = (out.double().cpu() - G.double().cpu()).norm(dim=1)
    return bool((moved > 2 * row_bounds(G)).any())


# ----- hand-computed ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_hand_computed_two_children(dtype):
    # g_a = (1, 0), g_b = (-1, 1): g_a·g_b = -1. g_a' = g_a + 1/2 g_b = (0.5, 0.5), g_b' = g_b + 1/1 g_a
    # = (0, 1): each against the other's ORIGINAL. Followers (their own dot +1 > 0, projected anyway
    # because the weights conflict): f_a = (1, 1), f_b = (1, 0): f_a' = f_a - 1/1 f_b = (0, 1),
    # f_b' = f_b - 1/2 f_a = (0.5, -0.5). All small dyadic rationals: exact in every dtype.
    G = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=dtype)
    F = torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=dtype)
    out, out_f = fbgrad(G, F)
    assert torch.equal(out, torch.tensor([[0.5, 0.5], [0.0, 1.0]], dtype=dtype))
    assert torch.equal(out_f, torch.tensor([[0.0, 1.0], [0.5, -0.5]], dtype=dtype))
    assert torch.equal(fbgrad(G), out)  # without followers: the matrix alone
    # No conflict (g_a·g_b = 1 > 0): nothing moves, followers included (even with their own dot < 0).
    G2 = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=dtype)
    F2 = torch.tensor([[1.0, 1.0], [-1.0, -1.0]], dtype=dtype)
    out2, out2_f = fbgrad(G2, F2)
    assert torch.equal(out2, G2) and torch.equal(out2_f, F2)
    # Orthogonal (dot exactly 0): no conflict either.
    G3 = torch.tensor([[1.0, 0.0], [0.0, -1.0]], dtype=dtype)
    assert torch.equal(fbgrad(G3), G3)


def test_returns_new_tensors_in_the_input_dtype():
    G = random_gradients(3, 5, seed=1)
    F = random_gradients(3, 2, seed=2)
    out, out_f = fbgrad(G, F)
    assert out.data_ptr() != G.data_ptr() and out_f.data_ptr() != F.data_ptr()
    one = G[:1].clone()
    copy = fbgrad(one)
    assert torch.equal(copy, one) and copy.data_ptr() != one.data_ptr()  # k = 1: a copy
    copy, copy_f = fbgrad(one, F[:1])
    assert torch.equal(copy_f, F[:1])
    G.requires_grad_(True)
    assert not fbgrad(G).requires_grad  # surgery is not differentiated


# ----- vs the per-vector algorithm -------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [2, 3, 5])
def test_matches_per_vector(dtype, k):
    projections = followers_checked = 0
    for seed in range(8):
        G = random_gradients(k, 40, seed=seed, dtype=dtype)
        F1 = random_gradients(k, 7, seed=100 + seed, dtype=dtype)
        F2 = random_gradients(k, 1, seed=200 + seed, dtype=dtype)  # a scalar parameter per child
        out, out_f1, out_f2 = fbgrad(G, F1, F2)
        expected, expected_f1, expected_f2 = fbgrad_per_vector(G, F1, F2)
        check_rows(out, expected, G, f"seed {seed} G")
        # Followers follow the weight's decisions: comparable only where none is in doubt.
        if decision_margin(G) > decision_error(G):
            check_rows(out_f1, expected_f1, F1, f"seed {seed} follower 1")
            check_rows(out_f2, expected_f2, F2, f"seed {seed} follower 2")
            followers_checked += 1
        projections += fired(G, out)
    assert projections >= 4 and followers_checked >= 4  # conflicts were projected (the test can fail)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_two_children_sum_is_pcgrad(dtype):
    for seed in range(10):
        G = random_gradients(2, 30, seed=seed, dtype=dtype)
        total = fbgrad(G).double().sum(0)  # exact sum of the rows in float64 up to γ_2
        pc = fastmtl.project_conflicts(G, shuffle=False)
        A = pcgrad_coefficients(G.double() @ G.double().T)
        rows = fbgrad(G).double().abs()
        bound = float(row_bounds(G).sum()) + pcgrad_error_bound(G, A) + gamma(2, F64) * rows.sum(0)
        assert_within(total, pc, bound, f"seed {seed}")
        assert_within(total, pcgrad_per_vector(G), bound, f"seed {seed} vs the PCGrad oracle")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_three_children_are_pcgrad_in_index_order(dtype):
    for seed in range(10):
        G = random_gradients(3, 25, seed=seed, dtype=dtype)
        out = fbgrad(G)
        expected = pcgrad_per_vector(G)  # tests/oracles.py, index order: g_i meets g_0, g_1, ... in turn
        # row_bounds holds each row's error and its oracle's; the float64 sums add γ_3 (ours) and the
        # PCGrad oracle's own error bound.
        bound = float(row_bounds(G).sum()) + gamma(3, F64) * out.double().abs().sum(0) + \
            pcgrad_per_vector_error_bound(G)
        assert_within(out.double().sum(0), expected, bound, f"seed {seed}")
    # Order matters with three: g_0 meets g_1 then g_2 (each against the originals), not the reverse.
    G = torch.tensor([[1.0, 0.0], [-1.0, 1.0], [-1.0, -2.0]], dtype=F64)
    out = fbgrad(G)
    # g_0 · g_1 = -1: g_0 -> (1, 0) + 1/2 (-1, 1) = (0.5, 0.5); then · g_2 = -1.5: + 1.5/5 (-1, -2) = (0.2, -0.1).
    assert_within(out[0], torch.tensor([0.2, -0.1], dtype=F64), float(row_bounds(G)[0]), "hand case")
    reverse = fbgrad(G[[0, 2, 1]])[0]
    assert not torch.allclose(reverse, out[0], atol=1e-3)


def test_followers_are_projected_even_when_their_own_dot_is_positive():
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(6, generator=gen, dtype=F64)
    G = torch.stack([base + 0.1 * torch.randn(6, generator=gen, dtype=F64), -base])  # clear conflict
    F = torch.stack([torch.ones(3, dtype=F64), torch.tensor([1.0, 2.0, 0.5], dtype=F64)])  # dot > 0
    assert torch.dot(F[0], F[1]) > 0 and torch.dot(G[0], G[1]) < 0
    out, out_f = fbgrad(G, F)
    expected, expected_f = fbgrad_per_vector(G, F)
    check_rows(out, expected, G, "weights")
    check_rows(out_f, expected_f, F, "followers")
    assert not torch.allclose(out_f, F)  # they moved
    # And untouched when the weights agree, even where the followers' own dot is negative.
    G_agree = torch.stack([base, base + 0.1])
    F_conflict = torch.stack([F[0], -F[1]])
    out, out_f = fbgrad(G_agree, F_conflict)
    assert torch.equal(out, G_agree) and torch.equal(out_f, F_conflict)


def test_zero_rows():
    G = torch.tensor([[1.0, 2.0, -1.0], [0.0, 0.0, 0.0], [-1.0, -1.0, 0.0]], dtype=F64)
    F = torch.tensor([[1.0], [0.0], [3.0]], dtype=F64)
    out, out_f = fbgrad(G, F)
    expected, expected_f = fbgrad_per_vector(G, F)
    # The zero row is never projected against, nor projected (its dots are 0): it stays 0.
    assert torch.equal(out[1], G[1]) and torch.equal(out_f[1], F[1])
    check_rows(out, expected, G, "G")
    check_rows(out_f, expected_f, F, "F")
    assert not torch.equal(out[0], G[0])  # rows 0 and 2 conflict (dot -3)
    # A zero follower row is never projected against (its norm is 0): row 0 keeps its follower.
    F0 = torch.tensor([[1.0], [0.0], [0.0]], dtype=F64)
    assert torch.equal(fbgrad(G, F0)[1][0], F0[0])
    assert torch.equal(fbgrad(torch.zeros(2, 4)), torch.zeros(2, 4))


def test_nan_and_inf_rows():
    # A NaN/Inf anywhere in G reaches every Gram-space dot product (0 · NaN is NaN), so every test
    # is false: every row and follower comes back exactly as it went in (the documented policy),
    # the NaN/Inf only where it was (not spread into other rows by 0 · NaN in a combination).
    for bad in (float("nan"), float("inf")):
        G = torch.tensor([[bad, 1.0], [1.0, -2.0], [-1.0, 1.0]], dtype=F64)  # rows 1 and 2 conflict
        F = torch.tensor([[1.0], [2.0], [3.0]], dtype=F64)
        out, out_f = fbgrad(G, F)
        assert torch.equal(out.isnan(), G.isnan()) and torch.equal(out.isinf(), G.isinf())
        finite = torch.isfinite(G)
        assert torch.equal(out[finite], G[finite]) and torch.equal(out_f, F)
        # A NaN/Inf follower of conflicting children: the weights are still projected, the follower
        # comes back as it went in (its NaN/Inf only where it was), and a finite follower beside it
        # is projected as usual.
        G2 = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=F64)
        F2 = torch.tensor([[bad, 1.0], [1.0, 0.0]], dtype=F64)
        F3 = torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=F64)
        out2, out2_f, out3_f = fbgrad(G2, F2, F3)
        assert torch.equal(out2, fbgrad(G2)) and not torch.equal(out2, G2)
        assert torch.equal(out2_f.isnan(), F2.isnan()) and torch.equal(out2_f.isinf(), F2.isinf())
        assert torch.equal(out2_f[torch.isfinite(F2)], F2[torch.isfinite(F2)])
        assert torch.equal(out3_f, fbgrad(G2, F3)[1]) and not torch.equal(out3_f, F3)


def test_huge_finite_gradients_are_projected():
    # |g|² ~ 1e40 overflows a float32 Gram matrix; the tests are made in float64 then (as PCGrad's).
    G = torch.tensor([[1.0, 0.0], [-1.0, 1.0]]) * 1e20
    out = fbgrad(G)
    assert torch.isfinite(out).all()
    check_rows(out, fbgrad_per_vector(G)[0], G, "huge")
    assert fired(G, out)


@pytest.mark.parametrize("device", DEVICES)
def test_devices(device):
    G = random_gradients(3, 20, seed=4).to(device)
    F = random_gradients(3, 4, seed=5).to(device)
    out, out_f = fbgrad(G, F)
    assert out.device.type == torch.device(device).type
    expected, expected_f = fbgrad_per_vector(G, F)
    check_rows(out, expected, G.cpu(), "G")
    assert decision_margin(G.cpu()) > decision_error(G.cpu())
    check_rows(out_f, expected_f, F.cpu(), "F")
    assert fired(G, out)


def test_errors():
    G = torch.randn(2, 3)
    with pytest.raises(ValueError, match="rows"):
        fbgrad(G, torch.randn(3, 4))
    with pytest.raises(ValueError, match="2-D"):
        fbgrad(torch.randn(3))
    with pytest.raises(ValueError, match="2-D"):
        fbgrad(G, torch.randn(2))
    with pytest.raises(ValueError, match="empty"):
        fbgrad(torch.randn(0, 3))
    with pytest.raises(TypeError):
        fbgrad(G.numpy())
    with pytest.raises(TypeError):
        fbgrad(torch.ones(2, 3, dtype=torch.int64))
    with pytest.raises(TypeError):
        fbgrad(G, [[1.0], [2.0]])
    with pytest.raises(ValueError, match="device"):
        fbgrad(G, torch.empty(2, 3, device="meta"))
