"""fastmtl.metrics against fairlearn and scipy (test-only oracles), hand-computed cases, and
the defining properties of feature disentanglement."""

import numpy as np
import pytest
import torch

import fastmtl
from fastmtl import metrics

fairlearn = pytest.importorskip("fairlearn.metrics")
scipy_stats = pytest.importorskip("scipy.stats")


def binary_data(seed, n=400, groups=3):
    """Labels, predictions and a sensitive attribute with every (group, label) cell filled."""
    rng = np.random.default_rng(seed)
    s = np.arange(n) % groups
    y = (rng.random(n) < 0.3 + 0.15 * s).astype(int)
    y[:2 * groups] = np.repeat([0, 1], groups)  # each group has positives and negatives
    p = np.where(rng.random(n) < 0.7 + 0.05 * s, y, 1 - y)
    return y, p, s


# float64 sums of n <= 400 counts: exact; the rates' divisions round once: 1e-15 covers it.
EXACT = 1e-15
# float64 results of at most a few dozen operations on O(1) values, each rounding by u = 1.1e-16
# (logs and square roots within a few u): 1e-12 bounds the accumulated error with room.
FEW_OPS = 1e-12


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("groups", [2, 3, 5])
def test_fairness_gaps_match_fairlearn(seed, groups):
    y, p, s = binary_data(seed, groups=groups)
    assert metrics.demographic_parity_difference(y, p, sensitive_features=s) == pytest.approx(
        fairlearn.demographic_parity_difference(y, p, sensitive_features=s), abs=EXACT)
    assert metrics.equal_opportunity_difference(y, p, sensitive_features=s) == pytest.approx(
        fairlearn.equal_opportunity_difference(y, p, sensitive_features=s), abs=EXACT)
    assert metrics.equalized_odds_difference(y, p, sensitive_features=s) == pytest.approx(
        fairlearn.equalized_odds_difference(y, p, sensitive_features=s), abs=EXACT)
    # FairBranch's EO: |ΔTPR| + |ΔFPR|, from fairlearn's two parts.
    expected = (fairlearn.true_positive_rate_difference(y, p, sensitive_features=s)
                + fairlearn.false_positive_rate_difference(y, p, sensitive_features=s))
    assert metrics.equalized_odds_difference(y, p, sensitive_features=s, agg="sum") == pytest.approx(expected,
                                                                                                      abs=EXACT)


def test_fairness_hand_case_and_tensor_results():
    # Group 0: y = 1 1 0 0, ŷ = 1 0 0 1 (TPR 1/2, FPR 1/2, selection 1/2);
    # group 1: y = 1 1 0 0, ŷ = 1 1 0 0 (TPR 1, FPR 0, selection 1/2).
    y = torch.tensor([1, 1, 0, 0, 1, 1, 0, 0])
    p = torch.tensor([1, 0, 0, 1, 1, 1, 0, 0])
    s = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    dp = metrics.demographic_parity_difference(y, p, sensitive_features=s)
    assert isinstance(dp, torch.Tensor) and dp.dim() == 0 and float(dp) == 0.0
    assert float(metrics.equal_opportunity_difference(y, p, sensitive_features=s)) == 0.5
    assert float(metrics.equalized_odds_difference(y, p, sensitive_features=s)) == 0.5
    assert float(metrics.equalized_odds_difference(y, p, sensitive_features=s, agg="sum")) == 1.0
    # A group without positives has no TPR: left out, so one group remains and the gap is 0.
    assert metrics.equal_opportunity_difference([1, 0, 0], [1, 0, 1], sensitive_features=[0, 1, 1]) == 0.0
    with pytest.raises(ValueError, match="binary"):
        metrics.demographic_parity_difference([0, 2], [0, 1], sensitive_features=[0, 1])
    with pytest.raises(ValueError, match="agg"):
        metrics.equalized_odds_difference(y, p, sensitive_features=s, agg="mean")
    with pytest.raises(ValueError, match="lengths"):
        metrics.demographic_parity_difference(y, p[:3], sensitive_features=s)


def test_group_and_worst_group_accuracy_hand_case():
    y = np.array([0, 0, 1, 1, 1, 0])
    p = np.array([0, 1, 1, 1, 0, 0])
    a = np.array([0, 1, 0, 1, 1, 0])
    groups = metrics.attribute_groups(y, a)  # 2·y + a
    assert groups.tolist() == [0, 1, 2, 3, 3, 0]
    assert metrics.group_accuracies(y, p, groups) == {0: 1.0, 1: 0.0, 2: 1.0, 3: 0.5}
    assert metrics.worst_group_accuracy(y, p, groups) == 0.0
    assert metrics.average_accuracy(y, p) == pytest.approx(4 / 6, abs=EXACT)
    t = metrics.worst_group_accuracy(torch.tensor(y), torch.tensor(p), torch.tensor([5, 5, 5, 7, 7, 7]))
    assert isinstance(t, torch.Tensor) and float(t) == pytest.approx(2 / 3, abs=EXACT)  # empty groups dropped


def test_delta_m_hand_cases():
    # Accuracy up 10 % (better, counts negative), error up 10 % (worse, counts positive): Δm = 0.
    assert metrics.delta_m([0.55, 1.1], [0.5, 1.0], [True, False]) == pytest.approx(0.0, abs=FEW_OPS)
    assert metrics.delta_m([0.55, 0.9], [0.5, 1.0], [True, False]) == pytest.approx(-10.0, abs=FEW_OPS)
    assert metrics.delta_m([0.5, 1.0], [0.5, 1.0], True) == 0.0  # the baselines themselves: 0
    out = metrics.delta_m(torch.tensor([0.6], dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64), True)
    assert isinstance(out, torch.Tensor) and float(out) == pytest.approx(-20.0, abs=FEW_OPS)
    with pytest.raises(ValueError, match="baseline is 0"):
        metrics.delta_m([1.0], [0.0], True)
    with pytest.raises(ValueError, match="higher_is_better"):
        metrics.delta_m([1.0, 2.0], [1.0, 2.0], [True])


def test_mean_rank_matches_scipy_rankdata():
    rng = np.random.default_rng(0)
    table = rng.integers(0, 4, size=(6, 5)).astype(float)  # many ties
    higher = np.array([True, False, True, True, False])
    expected = np.mean([scipy_stats.rankdata(np.where(h, -col, col)) for col, h in zip(table.T, higher)], axis=0)
    np.testing.assert_allclose(metrics.mean_rank(table, higher), expected, rtol=0, atol=FEW_OPS)


def test_gains_are_per_task_differences():
    assert metrics.knowledge_gain([0.9, 0.8], [0.85, 0.9]) == pytest.approx(-0.025, abs=EXACT)
    np.testing.assert_allclose(metrics.knowledge_gain([0.9, 0.8], [0.85, 0.9], reduction="none"), [0.05, -0.1],
                               atol=EXACT)
    assert metrics.discrimination_gain([0.1, 0.3], [0.2, 0.2]) == pytest.approx(0.0, abs=EXACT)


@pytest.mark.parametrize("seed", range(5))
def test_ranking_similarity_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 5, 12).astype(float), rng.integers(0, 5, 12).astype(float)  # with ties
    assert metrics.ranking_similarity(a, b) == pytest.approx(scipy_stats.kendalltau(a, b).statistic, abs=FEW_OPS)
    assert metrics.ranking_similarity(a, b, method="spearman") == pytest.approx(
        scipy_stats.spearmanr(a, b).statistic, abs=FEW_OPS)
    assert metrics.ranking_similarity(a, a) == pytest.approx(1.0, abs=FEW_OPS)
    assert metrics.ranking_similarity(a, -a) == pytest.approx(-1.0, abs=FEW_OPS)


def test_feature_disentanglement_properties():
    rng = np.random.default_rng(1)
    s = rng.random((4, 30))
    assert metrics.feature_disentanglement(np.tile(s[:1], (4, 1))) == pytest.approx(1.0, abs=FEW_OPS)  # identical
    disjoint = np.zeros((3, 9))
    disjoint[np.arange(9) % 3, np.arange(9)] = rng.random(9) + 0.1  # each feature owned by one task
    assert metrics.feature_disentanglement(disjoint) == 0.0
    value = metrics.feature_disentanglement(s)
    assert 0 < value < 1
    assert metrics.feature_disentanglement(s[[2, 0, 3, 1]]) == pytest.approx(value, abs=FEW_OPS)  # task order
    # Hand case, two tasks: p = (1/4, 3/4) on the one used feature, an unused feature left out.
    h = -(0.25 * np.log(0.25) + 0.75 * np.log(0.75)) / np.log(2)
    assert metrics.feature_disentanglement([[1.0, 0.0], [3.0, 0.0]]) == pytest.approx(h, abs=FEW_OPS)
    # Weighted by saliency: the shared feature (total 4) dominates the owned one (total 1).
    weighted = metrics.feature_disentanglement([[2.0, 1.0], [2.0, 0.0]], weighted=True)
    assert weighted == pytest.approx((4 * 1.0 + 1 * 0.0) / 5, abs=FEW_OPS)
    with pytest.raises(ValueError, match="T >= 2"):
        metrics.feature_disentanglement([[1.0, 2.0]])
    with pytest.raises(ValueError, match="non-negative"):
        metrics.feature_disentanglement([[1.0], [-1.0]])


def test_feature_saliency_from_losses_and_representation():
    torch.manual_seed(0)
    z = torch.randn(8, 5, requires_grad=True)
    heads = [torch.nn.Linear(5, 1) for _ in range(2)]
    with torch.no_grad():
        heads[0].weight[0, 3:] = 0  # task 0 uses features 0-2 only
        heads[1].weight[0, :3] = 0  # task 1 uses features 3-4 only
    losses = [head(z).pow(2).mean() for head in heads]
    s = metrics.feature_saliency(losses, z)
    expected = torch.stack([torch.autograd.grad(loss, z, retain_graph=True)[0].abs().sum(0) for loss in losses])
    assert s.shape == (2, 5) and torch.allclose(s, expected, rtol=0, atol=0)
    assert float(metrics.feature_disentanglement(s)) == 0.0  # disjoint ownership
    assert fastmtl.metrics is metrics
