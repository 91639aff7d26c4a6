"""Task clustering vs scipy's hierarchical clustering (test-only oracle) and hand cases."""

import numpy as np
import pytest
import torch
from conftest import ALL_IMPLS

import fastmtl

hierarchy = pytest.importorskip("scipy.cluster.hierarchy")
distance = pytest.importorskip("scipy.spatial.distance")


def canonical(labels) -> list[int]:
    """Relabel 0, 1, ... in order of each group's first member."""
    seen: dict[int, int] = {}
    return [seen.setdefault(int(label), len(seen)) for label in labels]


def random_similarity(T: int, seed: int) -> torch.Tensor:
    G = torch.randn(T, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return fastmtl.cosine_similarity(G, impl="torch")


def scipy_labels(S: torch.Tensor, linkage: str, n_groups=None, threshold=None):
    D = (1.0 - S).numpy()
    np.fill_diagonal(D, 0.0)
    Z = hierarchy.linkage(distance.squareform(D, checks=False), method=linkage)
    if n_groups is not None:
        return canonical(hierarchy.fcluster(Z, n_groups, criterion="maxclust"))
    return canonical(hierarchy.fcluster(Z, 1.0 - threshold, criterion="distance"))


@pytest.mark.parametrize("impl", ALL_IMPLS)
@pytest.mark.parametrize("linkage", ["average", "single", "complete"])
@pytest.mark.parametrize("T", [2, 3, 5, 8, 12])
def test_n_groups_matches_scipy(impl, linkage, T):
    for seed in range(4):
        S = random_similarity(T, seed)
        for n_groups in range(1, T + 1):
            labels = fastmtl.cluster_tasks(S, n_groups=n_groups, linkage=linkage, impl=impl)
            assert labels.dtype == torch.int64 and labels.shape == (T,)
            assert labels.tolist() == scipy_labels(S, linkage, n_groups=n_groups), (seed, n_groups)


@pytest.mark.parametrize("impl", ALL_IMPLS)
@pytest.mark.parametrize("linkage", ["average", "single", "complete"])
def test_threshold_matches_scipy(impl, linkage):
    for seed in range(6):
        S = random_similarity(9, seed)
        for threshold in (-0.5, 0.0, 0.2, 0.5, 0.9):
            labels = fastmtl.cluster_tasks(S, threshold=threshold, linkage=linkage, impl=impl)
            assert labels.tolist() == scipy_labels(S, linkage, threshold=threshold), (seed, threshold)


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_hand_case_two_blocks(impl):
    S = torch.tensor(
        [
            [1.0, 0.9, 0.1, 0.0],
            [0.9, 1.0, 0.2, 0.1],
            [0.1, 0.2, 1.0, 0.8],
            [0.0, 0.1, 0.8, 1.0],
        ]
    )
    assert fastmtl.cluster_tasks(S, n_groups=2, impl=impl).tolist() == [0, 0, 1, 1]
    assert fastmtl.cluster_tasks(S, threshold=0.85, impl=impl).tolist() == [0, 0, 1, 2]
    assert fastmtl.cluster_tasks(S, threshold=0.5, impl=impl).tolist() == [0, 0, 1, 1]
    # average linkage of the blocks: (0.1 + 0.0 + 0.2 + 0.1) / 4 = 0.1; single: 0.2; complete: 0.0
    assert fastmtl.cluster_tasks(S, threshold=0.15, linkage="single", impl=impl).tolist() == [0, 0, 0, 0]
    assert fastmtl.cluster_tasks(S, threshold=0.15, linkage="average", impl=impl).tolist() == [0, 0, 1, 1]
    assert fastmtl.cluster_tasks(S, threshold=0.05, linkage="complete", impl=impl).tolist() == [0, 0, 1, 1]


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_ties_are_broken_deterministically_by_index(impl):
    S = torch.ones(4, 4)  # every pair equally similar
    assert fastmtl.cluster_tasks(S, n_groups=3, impl=impl).tolist() == [0, 0, 1, 2]
    assert fastmtl.cluster_tasks(S, n_groups=2, impl=impl).tolist() == [0, 0, 0, 1]


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_single_task(impl):
    assert fastmtl.cluster_tasks(torch.ones(1, 1), n_groups=1, impl=impl).tolist() == [0]
    assert fastmtl.cluster_tasks(torch.ones(1, 1), threshold=0.5, impl=impl).tolist() == [0]


def test_compiled_equals_reference_on_many_random_cases():
    if not fastmtl.HAS_EXT:
        pytest.skip("fastmtl._C not built")
    for seed in range(30):
        S = random_similarity(10, 100 + seed)
        for linkage in ("average", "single", "complete"):
            for n_groups in (1, 3, 7):
                a = fastmtl.cluster_tasks(S, n_groups=n_groups, linkage=linkage, impl="cpp")
                b = fastmtl.cluster_tasks(S, n_groups=n_groups, linkage=linkage, impl="torch")
                assert torch.equal(a, b)


def tied_similarity(T: int, seed: int) -> torch.Tensor:
    """Symmetric similarities on a grid of 1/8: many exact ties, so the tie rule decides merges."""
    X = torch.randint(-8, 9, (T, T), generator=torch.Generator().manual_seed(seed)).double() / 8
    return (X + X.T) / 2


def direct_labels(S: torch.Tensor, linkage: str, n_groups=None, threshold=None) -> list[int]:
    """The clustering rules applied literally (O(T^3)): each merge scans the whole upper triangle
    of the active clusters for its row-major first maximum (numpy's argmax returns the first),
    then merges with the same expressions as the kernels, so every merged similarity has the
    same bits and the labels must be equal, not close."""
    sim = S.double().numpy().copy()
    T = len(sim)
    active = np.ones(T, dtype=bool)
    size = np.ones(T)
    cluster_of = np.arange(T)
    upper = np.triu(np.ones((T, T), dtype=bool), 1)
    for groups in range(T, 1, -1):
        if n_groups is not None and groups <= n_groups:
            break
        masked = np.where(upper & active[:, None] & active[None, :], sim, -np.inf)
        a, b = divmod(int(masked.argmax()), T)
        if threshold is not None and not masked[a, b] >= threshold:
            break
        if linkage == "single":
            merged = np.maximum(sim[a], sim[b])
        elif linkage == "complete":
            merged = np.minimum(sim[a], sim[b])
        else:
            merged = (size[a] * sim[a] + size[b] * sim[b]) / (size[a] + size[b])
        others = active.copy()
        others[[a, b]] = False
        sim[a, others] = merged[others]
        sim[others, a] = merged[others]
        size[a] += size[b]
        active[b] = False
        cluster_of[cluster_of == b] = a
    return canonical(cluster_of)


@pytest.mark.parametrize("impl", ALL_IMPLS)
@pytest.mark.parametrize("linkage", ["average", "single", "complete"])
@pytest.mark.parametrize("T", [64, 200])
def test_equals_the_direct_algorithm_at_moderate_T(impl, linkage, T):
    # The O(T^2)-expected search (per-row best partners) must pick exactly the merges of the
    # literal O(T^3) scan, ties included.
    for S in (random_similarity(T, T), tied_similarity(T, T)):
        for n_groups in (1, 2, T // 8, T // 2):
            labels = fastmtl.cluster_tasks(S, n_groups=n_groups, linkage=linkage, impl=impl)
            assert labels.tolist() == direct_labels(S, linkage, n_groups=n_groups), n_groups
        for threshold in (-0.25, 0.0, 0.25, 0.5):
            labels = fastmtl.cluster_tasks(S, threshold=threshold, linkage=linkage, impl=impl)
            assert labels.tolist() == direct_labels(S, linkage, threshold=threshold), threshold


def test_compiled_equals_reference_on_tied_cases():
    if not fastmtl.HAS_EXT:
        pytest.skip("fastmtl._C not built")
    for seed in range(20):
        S = tied_similarity(12 + seed, seed)
        for linkage in ("average", "single", "complete"):
            for n_groups in (1, 3, 7):
                a = fastmtl.cluster_tasks(S, n_groups=n_groups, linkage=linkage, impl="cpp")
                b = fastmtl.cluster_tasks(S, n_groups=n_groups, linkage=linkage, impl="torch")
                assert torch.equal(a, b), (seed, linkage, n_groups)


def test_numpy_numbers_are_accepted():
    S = random_similarity(6, 0)
    expected = fastmtl.cluster_tasks(S, n_groups=3)
    assert torch.equal(fastmtl.cluster_tasks(S, n_groups=np.int64(3)), expected)
    assert torch.equal(fastmtl.cluster_tasks(S, n_groups=np.int32(3)), expected)
    assert torch.equal(fastmtl.cluster_tasks(S, threshold=np.float32(0.25)), fastmtl.cluster_tasks(S, threshold=0.25))
    for bad in (True, np.bool_(True)):
        with pytest.raises(TypeError, match="n_groups"):
            fastmtl.cluster_tasks(S, n_groups=bad)
        with pytest.raises(ValueError, match="threshold"):
            fastmtl.cluster_tasks(S, threshold=bad)
    with pytest.raises(ValueError, match="threshold"):
        fastmtl.cluster_tasks(S, threshold=np.float64("nan"))


@pytest.mark.parametrize("impl", ["auto", *ALL_IMPLS])
def test_impl_cuda_is_refused_not_run_on_the_host(impl):
    S = random_similarity(5, 1)
    with pytest.raises(ValueError, match="impl='cuda'"):
        fastmtl.cluster_tasks(S, n_groups=2, impl="cuda")
    assert fastmtl.cluster_tasks(S, n_groups=2, impl=impl).tolist() == scipy_labels(S, "average", n_groups=2)
