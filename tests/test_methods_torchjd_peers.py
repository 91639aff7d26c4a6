"""Random, Constant, Krum, TrimmedMean and ConFIG (methods/peers_torchjd.py) against torchjd's
aggregators on the same float64 inputs, plus their options, NaN policy and papers' definitions.

Tolerances, from the error bounds of the computations (u = 2⁻⁵³):
* a combination Σ_i w_i g_i of T rows, computed by fastmtl and torchjd in different orders, is
  within γ_T Σ_i |w_i| |g_i| <= T u Σ|w| max|G| of the exact one on each side: 2 T u Σ|w| max|G|
  between the two (Random, Constant, Krum: their weights agree exactly or to rounding of a
  softmax, 2 u per weight, which the factor 2 covers);
* a mean of T - 2k sorted values: (T - 2k) u max|G| per side (TrimmedMean);
* ConFIG's pseudo-inverse (eigh of K_u on our side, SVD of the unit rows on torchjd's) is
  backward stable: O(T u) relative perturbations amplified by cond(K_u); the normalisation adds
  O(T u). We allow 16 T u cond(K_u), relative to max|d|.
"""

import pytest
import torch
from conftest import assert_close_rel
from oracles import random_gradients

import fastmtl
from fastmtl import methods

torchjd = pytest.importorskip("torchjd.aggregation")

U = torch.finfo(torch.float64).eps / 2
SHAPES = [(T, P) for T in (2, 3, 5, 8) for P in (T, 40, 400)]


def combination_tolerance(G, weights):
    """2 T u Σ|w| max|G|, an absolute bound: the scale to pass to assert_close_rel with rtol = 1."""
    return 2 * G.shape[0] * U * float(weights.abs().sum()) * float(G.abs().max())


# ----- Random --------------------------------------------------------------------------------------


@pytest.mark.parametrize("T,P", SHAPES)
@pytest.mark.parametrize("seed", range(3))
def test_random_matches_torchjd_with_the_same_draws(T, P, seed):
    # torchjd draws z with torch.randn from the global generator in G's dtype; ours draws the same
    # float64 normal numbers from a generator with the same seed.
    G = random_gradients(T, P, seed=seed, dtype=torch.float64)
    torch.manual_seed(seed)
    expected = torchjd.Random()(G)
    got = fastmtl.aggregate(G, "random", generator=torch.Generator().manual_seed(seed))
    assert_close_rel(got, expected, 1.0, f"T={T} P={P}", scale=combination_tolerance(G, torch.ones(T)))


def test_random_weights_are_positive_sum_to_one_and_vary():
    method = methods.create("random", generator=torch.Generator().manual_seed(0))
    K = torch.eye(6, dtype=torch.float64)
    draws = torch.stack([method.weights(K) for _ in range(20)])
    assert (draws > 0).all()
    assert torch.allclose(draws.sum(dim=1), torch.ones(20, dtype=torch.float64), rtol=0, atol=8 * U)
    assert not torch.allclose(draws[0], draws[1])  # a new draw at each call
    # The direction is in the cone of the task gradients: d = Σ w_i g_i with w > 0.
    G = random_gradients(6, 50, seed=1, dtype=torch.float64)
    w = methods.create("random", generator=torch.Generator().manual_seed(3)).weights(G @ G.T)
    assert_close_rel(fastmtl.aggregate(G, "random", generator=torch.Generator().manual_seed(3)), w @ G, 1e-14)


def test_random_is_reproducible_and_keeps_no_state():
    G = random_gradients(4, 30, seed=2, dtype=torch.float64)
    a = fastmtl.aggregate(G, "random", generator=torch.Generator().manual_seed(7))
    b = fastmtl.aggregate(G, "random", generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    method = methods.create("random")
    assert method.state_dict() == {}
    method.load_state_dict({})
    with pytest.raises(TypeError, match="generator"):
        methods.create("random", generator=7)


# ----- Constant ------------------------------------------------------------------------------------


@pytest.mark.parametrize("T,P", SHAPES)
@pytest.mark.parametrize("seed", range(3))
def test_constant_matches_torchjd(T, P, seed):
    G = random_gradients(T, P, seed=seed, dtype=torch.float64)
    weights = torch.randn(T, generator=torch.Generator().manual_seed(100 + seed), dtype=torch.float64)
    expected = torchjd.Constant(weights)(G)
    for given in (weights, weights.tolist(), tuple(weights.numpy())):  # a tensor, a list, numpy scalars
        got = fastmtl.aggregate(G, "constant", weights=given)
        assert_close_rel(got, expected, 1.0, f"T={T} P={P}", scale=combination_tolerance(G, weights))


def test_constant_options():
    G = torch.randn(3, 10, dtype=torch.float64)
    with pytest.raises(ValueError, match="weights"):
        fastmtl.aggregate(G, "constant", weights=[1.0, 2.0])  # 2 weights, 3 tasks
    with pytest.raises(ValueError, match="weights"):
        methods.create("constant", weights=[])
    with pytest.raises(ValueError, match="weights"):
        methods.create("constant", weights=torch.ones(2, 2))
    with pytest.raises(ValueError, match="weights"):
        methods.create("constant", weights=[1.0, float("nan")])
    with pytest.raises(TypeError, match="weights"):
        methods.create("constant", weights=[1.0, "a"])
    with pytest.raises(TypeError):
        methods.create("constant")  # no default weights, as torchjd
    method = methods.create("constant", weights=[1, 2, 3])
    assert method.fresh().options == method.options and method.state_dict() == {}


# ----- Krum ------------------------------------------------------------------------------------------


def krum_per_vector(G, n_byzantine, n_selected, squared):
    """Blanchard et al. 2017, as written: for each i, the sum of the (squared) distances to its
    T - f - 2 nearest j ≠ i; average the n_selected lowest scores (ties: lower index)."""
    T = G.shape[0]
    scores = []
    for i in range(T):
        distances = sorted(float((G[i] - G[j]).norm()) ** (2 if squared else 1) for j in range(T) if j != i)
        scores.append(sum(distances[:T - n_byzantine - 2]))
    order = sorted(range(T), key=lambda i: (scores[i], i))[:n_selected]
    return G[order].mean(dim=0), scores


def krum_cases(T):
    return [(f, m) for f in range(T - 2) for m in range(1, T + 1)]


@pytest.mark.parametrize("T,P", [(T, P) for T, P in SHAPES if T >= 3])
@pytest.mark.parametrize("seed", range(3))
def test_krum_matches_torchjd(T, P, seed):
    G = random_gradients(T, P, seed=seed, dtype=torch.float64)
    for f, m in krum_cases(T):
        expected = torchjd.Krum(n_byzantine=f, n_selected=m)(G)
        got = fastmtl.aggregate(G, "krum", n_byzantine=f, n_selected=m, squared=False)
        if f == T - 3:
            # One neighbour: a score is the distance to the nearest gradient, so two mutual nearest
            # neighbours tie exactly; torchjd's topk breaks ties in no set order, we take the lower
            # index. Compare what does not depend on the tie: the selected scores.
            _, scores = krum_per_vector(G, f, m, squared=False)
            cut = sorted(scores)[m - 1]
            tied = sum(abs(s - cut) <= 1e-12 * cut for s in scores)
            if tied > 1:
                continue
        tolerance = combination_tolerance(G, torch.full((m,), 1.0 / m))
        assert_close_rel(got, expected, 1.0, f"T={T} P={P} f={f} m={m}", scale=tolerance)


@pytest.mark.parametrize("T", [3, 5, 8])
@pytest.mark.parametrize("squared", [True, False])
def test_krum_matches_the_paper_per_vector(T, squared):
    for seed in range(3):
        G = random_gradients(T, 60, seed=seed, dtype=torch.float64)
        for f, m in krum_cases(T):
            expected, _ = krum_per_vector(G, f, m, squared)
            got = fastmtl.aggregate(G, "krum", n_byzantine=f, n_selected=m, squared=squared)
            assert_close_rel(got, expected, 1.0, f"f={f} m={m}", scale=combination_tolerance(G, torch.ones(m) / m))


def test_krum_squared_and_plain_distances_can_choose_differently():
    # The paper sums squared distances, torchjd plain ones: a far neighbour weighs more when squared.
    # (Points in 2-D: on a line, sums of distances to the neighbours on both sides tie exactly.)
    differ = 0
    for seed in range(20):
        G = torch.randn(5, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        plain = fastmtl.aggregate(G, "krum", n_byzantine=0, squared=False)
        squared = fastmtl.aggregate(G, "krum", n_byzantine=0, squared=True)
        assert torch.equal(plain, krum_per_vector(G, 0, 1, squared=False)[0])
        assert torch.equal(squared, krum_per_vector(G, 0, 1, squared=True)[0])
        differ += not torch.equal(plain, squared)
    assert differ > 0


def test_krum_options_and_task_count():
    G = torch.randn(4, 10, dtype=torch.float64)
    with pytest.raises(ValueError, match="n_byzantine"):
        methods.create("krum", n_byzantine=-1)
    with pytest.raises(ValueError, match="n_selected"):
        methods.create("krum", n_byzantine=0, n_selected=0)
    with pytest.raises(TypeError, match="squared"):
        methods.create("krum", n_byzantine=0, squared=1)
    with pytest.raises(ValueError, match="n_byzantine"):
        fastmtl.aggregate(G, "krum", n_byzantine=2)  # needs 5 tasks
    with pytest.raises(ValueError, match="n_selected"):
        fastmtl.aggregate(G, "krum", n_byzantine=0, n_selected=5)
    with pytest.raises(TypeError):
        methods.create("krum")  # n_byzantine has no default, as torchjd


# ----- TrimmedMean ---------------------------------------------------------------------------------


@pytest.mark.parametrize("T,P", SHAPES)
@pytest.mark.parametrize("seed", range(3))
def test_trimmed_mean_matches_torchjd(T, P, seed):
    G = random_gradients(T, P, seed=seed, dtype=torch.float64)
    for k in range((T - 1) // 2 + 1):
        expected = torchjd.TrimmedMean(trim_number=k)(G)
        got = fastmtl.aggregate(G, "trimmed_mean", trim_number=k)
        tolerance = 2 * (T - 2 * k) * U * float(G.abs().max())
        assert_close_rel(got, expected, 1.0, f"T={T} P={P} k={k}", scale=tolerance)


def test_trimmed_mean_removes_outliers_per_coordinate_and_ignores_feature_arguments():
    G = torch.tensor([[1.0, -100.0], [2.0, 0.0], [3.0, 1.0], [1e6, 2.0]], dtype=torch.float64)
    method = methods.create("trimmed_mean", trim_number=1)
    assert torch.equal(method(G), torch.tensor([2.5, 0.5], dtype=torch.float64))
    signs = torch.randn(4, 2, dtype=torch.float64)
    assert torch.equal(method(G, signs=signs, batch=3), method(G))
    # Columns shards give the columns of the whole result (no randomness, no offset needed).
    G = random_gradients(5, 30, seed=4, dtype=torch.float64)
    assert torch.equal(torch.cat([method(G[:, :13], column_offset=0), method(G[:, 13:], column_offset=13)]), method(G))


def test_trimmed_mean_in_float32_and_float16():
    G = random_gradients(5, 64, seed=5, dtype=torch.float64)
    expected = fastmtl.aggregate(G, "trimmed_mean", trim_number=1)
    for dtype, rtol in ((torch.float32, 1e-6), (torch.float16, 2e-3)):
        got = fastmtl.aggregate(G.to(dtype), "trimmed_mean", trim_number=1)
        assert got.dtype == dtype
        # The rounding of G to dtype (half an ulp) and of the result bound the gap.
        assert_close_rel(got, expected, rtol, str(dtype), scale=float(G.abs().max()))


def test_trimmed_mean_options():
    with pytest.raises(ValueError, match="trim_number"):
        methods.create("trimmed_mean", trim_number=-1)
    with pytest.raises(TypeError, match="trim_number"):
        methods.create("trimmed_mean", trim_number=1.5)
    with pytest.raises(ValueError, match="trim_number"):
        fastmtl.aggregate(torch.randn(4, 3), "trimmed_mean", trim_number=2)  # needs 5 tasks


# ----- ConFIG ------------------------------------------------------------------------------------


def config_tolerance(G):
    norms = G.norm(dim=1, keepdim=True)
    units = torch.where(norms > 0, G / norms, torch.zeros_like(G))
    eigenvalues = torch.linalg.eigvalsh(units @ units.T)
    kept = eigenvalues > eigenvalues.max() * 8 * G.shape[0] * torch.finfo(torch.float64).eps
    condition = float(eigenvalues.max() / eigenvalues[kept].min())
    return 16 * G.shape[0] * U * condition


@pytest.mark.parametrize("T,P", SHAPES)
@pytest.mark.parametrize("seed", range(3))
def test_config_matches_torchjd(T, P, seed):
    G = random_gradients(T, P, seed=seed, dtype=torch.float64)
    rtol = config_tolerance(G)
    assert_close_rel(fastmtl.aggregate(G, "config"), torchjd.ConFIG()(G), rtol, f"T={T} P={P}")
    pref = torch.rand(T, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.1
    expected = torchjd.ConFIG(pref_vector=pref)(G)
    assert_close_rel(fastmtl.aggregate(G, "config", pref_vector=pref), expected, rtol, f"T={T} P={P} pref")


def test_config_dependent_zero_and_more_tasks_than_parameters():
    G = random_gradients(3, 50, seed=1, dtype=torch.float64)
    cases = {
        "duplicate": torch.stack([G[0], G[0], G[1]]),
        "parallel": torch.stack([G[0], 2 * G[0], G[1], G[2]]),
        "zero row": torch.stack([G[0], torch.zeros_like(G[0]), G[1]]),
        "T > P": random_gradients(6, 4, seed=2, dtype=torch.float64),
    }
    for what, D in cases.items():
        # The rank cut makes these well-conditioned on the kept eigenvalues: the bound above holds.
        assert_close_rel(fastmtl.aggregate(D, "config"), torchjd.ConFIG()(D), config_tolerance(D), what)
    zero = torch.zeros(3, 10, dtype=torch.float64)
    assert torch.equal(fastmtl.aggregate(zero, "config"), torchjd.ConFIG()(zero))


def test_config_direction_has_equal_projections_on_the_unit_gradients():
    # Eq. 2: with independent unit gradients, u_i · d / |d| is the same for every task (w = 1).
    G = random_gradients(5, 100, seed=6, dtype=torch.float64)
    d = fastmtl.aggregate(G, "config")
    projections = (G / G.norm(dim=1, keepdim=True)) @ d
    assert torch.allclose(projections, projections.mean().expand(5), rtol=1e-12)
    assert abs(float(d.norm() - (G @ (d / d.norm())).sum())) < 1e-12 * float(d.norm())


def test_config_options():
    with pytest.raises(ValueError, match="pref_vector"):
        fastmtl.aggregate(torch.randn(3, 10), "config", pref_vector=[1.0, 2.0])
    with pytest.raises(ValueError, match="pref_vector"):
        methods.create("config", pref_vector=torch.ones(2, 2))
    with pytest.raises(ValueError, match="pref_vector"):
        methods.create("config", pref_vector=[float("inf")])


# ----- all five ------------------------------------------------------------------------------------

OPTIONS = {"random": {}, "constant": {"weights": [1.0, 2.0, 0.5, 1.5]}, "krum": {"n_byzantine": 1},
           "trimmed_mean": {"trim_number": 1}, "config": {}}


@pytest.mark.parametrize("method", sorted(OPTIONS))
def test_non_finite_gradients(method):
    G = random_gradients(4, 20, seed=3, dtype=torch.float64)
    G[2, 5] = float("nan")
    G[1, 7] = float("inf")
    d = fastmtl.aggregate(G, method, **OPTIONS[method])
    if method in ("krum", "config"):  # Gram-space solves: the documented all-NaN
        assert torch.isnan(d).all()
    else:  # no solve on K: the columns holding NaN/Inf are not finite, the others are
        bad = ~torch.isfinite(G).all(dim=0)
        assert not torch.isfinite(d[bad]).any() and torch.isfinite(d[~bad]).all()
        if method == "trimmed_mean":  # NaN even where the trimming removed the bad value
            assert torch.isnan(d[bad]).all()


@pytest.mark.parametrize("method", sorted(OPTIONS))
def test_in_the_optimizer(method):
    torch.manual_seed(0)
    encoder, head = torch.nn.Linear(4, 3), torch.nn.Linear(3, 4)
    opt = fastmtl.MTLOptimizer(torch.optim.SGD([*encoder.parameters(), *head.parameters()], lr=0.1), method,
                               shared=encoder.parameters(), **OPTIONS[method])
    x = torch.randn(16, 4)
    before = [p.detach().clone() for p in encoder.parameters()]
    for _ in range(2):
        out = head(encoder(x))
        opt.zero_grad()
        opt.backward([out[:, t].pow(2).mean() for t in range(4)])
        opt.step()
    assert all(torch.isfinite(p).all() for p in encoder.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, encoder.parameters()))
    assert opt.state_dict()["fastmtl"]["groups"][0]["method_state"] == {}
