"""Gram-space methods (MGDA, IMTL-G, and the registry's weighting form of sum/mean/pcgrad):
torchjd's aggregators as oracles, the papers' defining properties, hand-computed cases."""

import warnings

import pytest
import torch
from conftest import assert_close_rel
from oracles import random_gradients

import fastmtl
from fastmtl import methods

torchjd = pytest.importorskip("torchjd.aggregation")


@pytest.mark.parametrize("T", [2, 3, 5, 8])
@pytest.mark.parametrize("seed", range(4))
def test_mgda_matches_torchjd(T, seed):
    G = random_gradients(T, 400, seed=seed, dtype=torch.float64)
    expected = torchjd.MGDA()(G)
    assert_close_rel(fastmtl.aggregate(G, "mgda"), expected, 1e-10)


@pytest.mark.parametrize("T", [2, 3, 5, 8])
@pytest.mark.parametrize("seed", range(4))
def test_imtl_g_matches_torchjd(T, seed):
    G = random_gradients(T, 400, seed=seed, dtype=torch.float64)
    assert_close_rel(fastmtl.aggregate(G, "imtl_g"), torchjd.IMTLG()(G), 1e-9)


def test_mgda_hand_cases():
    orthogonal = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    assert torch.allclose(fastmtl.aggregate(orthogonal, "mgda"), torch.tensor([0.5, 0.5], dtype=torch.float64))
    opposite = torch.tensor([[1.0, 2.0], [-1.0, -2.0]], dtype=torch.float64)
    assert torch.allclose(fastmtl.aggregate(opposite, "mgda"), torch.zeros(2, dtype=torch.float64))
    # One gradient inside the other's half-space: the shorter one is the minimum-norm point.
    nested = torch.tensor([[1.0, 0.0], [3.0, 1.0]], dtype=torch.float64)
    assert torch.allclose(fastmtl.aggregate(nested, "mgda"), torch.tensor([1.0, 0.0], dtype=torch.float64))


def test_mgda_is_the_minimum_norm_point_of_the_hull():
    # Optimality of the min-norm point d: g_i . d >= |d|^2 for every task (equality on the support).
    for seed in range(5):
        G = random_gradients(4, 300, seed=seed, dtype=torch.float64)
        d = fastmtl.aggregate(G, "mgda", max_iters=2000, epsilon=1e-12)
        assert (G @ d >= d @ d - 1e-6 * (G.norm(dim=1).max() ** 2)).all()


def test_imtl_g_hand_case_and_equal_projections():
    G = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)  # equal projections: d = (2/3, 2/3)
    assert torch.allclose(fastmtl.aggregate(G, "imtl_g"), torch.tensor([2 / 3, 2 / 3], dtype=torch.float64))
    G = random_gradients(4, 300, seed=3, dtype=torch.float64)
    d = fastmtl.aggregate(G, "imtl_g")
    projections = (G @ d) / G.norm(dim=1)
    assert torch.allclose(projections, projections[0].expand(4), rtol=1e-9)


def test_mgda_never_conflicts_with_a_task():
    for seed in range(5):
        G = random_gradients(6, 300, seed=seed, dtype=torch.float64)
        d = fastmtl.aggregate(G, "mgda", max_iters=2000, epsilon=1e-12)
        assert (G @ d >= -1e-9).all()


@pytest.mark.parametrize("method", ["mgda", "imtl_g"])
def test_in_the_optimizer_with_every(method):
    torch.manual_seed(0)
    encoder, head = torch.nn.Linear(4, 3), torch.nn.Linear(3, 2)
    opt = fastmtl.MTLOptimizer(torch.optim.SGD([*encoder.parameters(), *head.parameters()], lr=0.1), method,
                               shared=encoder.parameters(), every=2)
    x = torch.randn(16, 4)
    for _ in range(3):
        out = head(encoder(x))
        opt.zero_grad()
        opt.backward([out[:, 0].pow(2).mean(), (out[:, 1] - 1).pow(2).mean()])
        opt.step()
    assert all(torch.isfinite(p).all() for p in encoder.parameters())


def test_bad_options():
    G = torch.randn(3, 10)
    with pytest.raises(ValueError, match="max_iters"):
        fastmtl.aggregate(G, "mgda", max_iters=0)
    with pytest.raises(TypeError):
        fastmtl.aggregate(G, "imtl_g", max_iters=3)


@pytest.mark.parametrize("scale_mode", ["min", "median", "rmse"])
@pytest.mark.parametrize("T", [2, 3, 5, 8])
def test_aligned_mtl_matches_torchjd(scale_mode, T):
    for seed in range(3):
        G = random_gradients(T, 400, seed=seed, dtype=torch.float64)
        expected = torchjd.AlignedMTL(scale_mode=scale_mode)(G)
        assert_close_rel(fastmtl.aggregate(G, "aligned_mtl", scale_mode=scale_mode), expected, 1e-9)


def test_aligned_mtl_rank_deficient_and_zero():
    G = random_gradients(2, 50, seed=1, dtype=torch.float64)
    dependent = torch.stack([G[0], 2 * G[0], G[1]])  # rank 2 of 3
    expected = torchjd.AlignedMTL()(dependent)
    assert_close_rel(fastmtl.aggregate(dependent, "aligned_mtl"), expected, 1e-8)
    zero = torch.zeros(3, 10, dtype=torch.float64)
    assert torch.equal(fastmtl.aggregate(zero, "aligned_mtl"), torch.zeros(10, dtype=torch.float64))


@pytest.mark.parametrize("method,peer", [("upgrad", "UPGrad"), ("dualproj", "DualProj")])
@pytest.mark.parametrize("T", [2, 3, 5, 8, 12])
def test_dual_cone_methods_match_torchjd_quadprog(method, peer, T):
    pytest.importorskip("quadprog")
    pytest.importorskip("qpsolvers")
    for seed in range(4):
        G = random_gradients(T, 300, seed=seed, dtype=torch.float64)
        expected = getattr(torchjd, peer)()(G)
        assert_close_rel(fastmtl.aggregate(G, method), expected, 1e-7, f"seed {seed}")


@pytest.mark.parametrize("method", ["upgrad", "dualproj"])
def test_dual_cone_update_conflicts_with_no_task(method):
    for seed in range(6):
        G = random_gradients(6, 300, seed=seed, dtype=torch.float64)
        d = fastmtl.aggregate(G, method)
        assert (G @ d >= -1e-9 * G.norm(dim=1) * d.norm()).all()


@pytest.mark.parametrize("method", ["upgrad", "dualproj"])
def test_dual_cone_non_conflicting_gradients_give_the_mean(method):
    G = torch.rand(4, 50, dtype=torch.float64)  # pairwise non-negative: the mean is already in the cone
    assert_close_rel(fastmtl.aggregate(G, method), G.mean(0), 1e-10)


def test_gradvac_matches_torchjd_over_steps(monkeypatch):
    # torchjd draws each task's order with torch.randperm; fix it to index order on both sides.
    monkeypatch.setattr(torch, "randperm", lambda n, *args, **kwargs: torch.arange(n))
    peer = torchjd.GradVac(beta=0.3)
    gradvac = methods.create("gradvac", beta=0.3, shuffle=False)  # keeps its targets across calls
    for step in range(5):
        G = random_gradients(4, 300, seed=step, dtype=torch.float64)
        expected = peer(G)
        got = fastmtl.aggregate(G, gradvac)
        assert_close_rel(got, expected, 1e-10, f"step {step}")
    assert gradvac.targets.shape == (4, 4) and gradvac.targets.abs().sum() > 0


def test_gradvac_with_zero_targets_lifts_negative_cosines_to_zero():
    # First step: targets start at 0, so every conflicting pair is made orthogonal (PCGrad-like).
    G = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
    d = fastmtl.aggregate(G, "gradvac", shuffle=False)
    expected = fastmtl.project_conflicts(G, shuffle=False)
    assert_close_rel(d, expected, 1e-6)


def test_gradvac_state_in_the_optimizer_state_dict():
    torch.manual_seed(0)
    encoder, head = torch.nn.Linear(4, 3).double(), torch.nn.Linear(3, 2).double()
    opt = fastmtl.MTLOptimizer(torch.optim.SGD([*encoder.parameters(), *head.parameters()], lr=0.1), "gradvac",
                               shared=encoder.parameters(), shuffle=False)
    x = torch.randn(16, 4, dtype=torch.float64)
    out = head(encoder(x))
    opt.backward([out[:, 0].pow(2).mean(), (out[:, 1] - 1).pow(2).mean()])
    saved = opt.state_dict()["fastmtl"]["groups"][0]["method_state"]["targets"]
    assert saved is not None and saved.shape == (2, 2)


@pytest.mark.parametrize("c", [0.2, 0.5, 0.9])
@pytest.mark.parametrize("T", [2, 3, 5, 8])
def test_cagrad_agrees_with_torchjd_in_direction(c, T):
    pytest.importorskip("cvxpy")
    for seed in range(3):
        G = random_gradients(T, 300, seed=seed, dtype=torch.float64)
        ours, theirs = fastmtl.aggregate(G, "cagrad", c=c), torchjd.CAGrad(c=c)(G)
        assert float(ours @ theirs / (ours.norm() * theirs.norm())) > 0.99999
        assert_close_rel(ours, theirs, 5e-3)


def test_cagrad_c_zero_is_the_mean_and_rescale_divides():
    G = random_gradients(4, 100, seed=2, dtype=torch.float64)
    assert_close_rel(fastmtl.aggregate(G, "cagrad", c=0.0), G.mean(0), 1e-12)
    plain = fastmtl.aggregate(G, "cagrad", c=0.4)
    assert_close_rel(fastmtl.aggregate(G, "cagrad", c=0.4, rescale=1), plain / 1.16, 1e-12)
    assert_close_rel(fastmtl.aggregate(G, "cagrad", c=0.4, rescale=2), plain / 1.4, 1e-12)
    with pytest.raises(ValueError, match="rescale"):
        fastmtl.aggregate(G, "cagrad", rescale=3)


@pytest.mark.parametrize("T", [2, 3, 5, 8])
def test_nash_mtl_matches_torchjd(T):
    pytest.importorskip("cvxpy")
    pytest.importorskip("ecos")
    for seed in range(3):
        G = random_gradients(T, 300, seed=seed, dtype=torch.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # cvxpy's "not DPP" notice inside torchjd
            expected = torchjd.NashMTL(n_tasks=T)(G)
        assert_close_rel(fastmtl.aggregate(G, "nash_mtl"), expected, 1e-6)


def test_nash_mtl_solves_the_bargaining_equation():
    for seed in range(4):
        G = random_gradients(5, 200, seed=seed, dtype=torch.float64)
        K = G @ G.T
        alpha = methods.create("nash_mtl", max_norm=0.0).weights(K)
        assert (alpha > 0).all()
        assert torch.allclose(K @ alpha, 1 / alpha, rtol=1e-10)
    capped = fastmtl.aggregate(G, "nash_mtl", max_norm=0.5)
    assert abs(float(capped.norm()) - 0.5) < 1e-12
    G[2] = 0  # a task with no gradient: finite result, the others still balanced
    assert torch.isfinite(fastmtl.aggregate(G, "nash_mtl")).all()


def test_nash_mtl_direction_does_not_scale_as_documented():
    G = random_gradients(3, 100, seed=1, dtype=torch.float64)
    a = fastmtl.aggregate(G, "nash_mtl", max_norm=0.0)
    assert_close_rel(fastmtl.aggregate(8.0 * G, "nash_mtl", max_norm=0.0), a, 1e-10)
