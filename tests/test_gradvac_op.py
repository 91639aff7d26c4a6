"""The gradvac_weights op (csrc/include/fastmtl/gradvac_math.h) against the torch reference
(methods/gradvac.py, impl="torch"), a plain-Python oracle of the paper's update and torchjd.

Tolerance (pair_bound): every pair step computes the cosine and norms from K with at most
2T + 8 roundings (the c K c form, the products, the square roots), error γ_{2T+8} relative to
the absolute values summed (|c|ᵀ|K||c|, (|c|ᵀ|K|)_j), i.e. γ_{2T+8} ρ relative to the norms,
with ρ the cancellation ratio of the step; the step's w is Lipschitz in the cosine and target
with factor 1 / (√(1-φ²) √(1-φ̂²)); κ is the worst product over the steps (from the oracle), and
each of the T steps of a task carries the earlier ones forward. So the weights differ by <= 2 T κ γ_{2T+8} Σ_i |c_i| (both paths), the
targets by <= 2 T κ γ_{2T+8} (they are convex combinations of values in [-1, 1]).
"""

import math

import pytest
import torch
from conftest import assert_close_rel, gamma
from oracles import random_gradients

import fastmtl
from fastmtl import functional, methods
from fastmtl.methods.gradvac import gradvac_step

pytestmark = [pytest.mark.skipif(not fastmtl.HAS_EXT, reason="fastmtl._C not built"),
              pytest.mark.usefixtures("keep_subnormals")]  # exact scaling and tiny magnitudes need subnormals

TASKS = [1, 2, 3, 5, 8, 16, 33, 64]


def oracle(K, targets, order, beta, eps):
    """GradVac in Gram space, one task at a time, its scalars on the host: weights, targets,
    max_i Σ_k |c_ik| and κ (module docstring)."""
    T = K.shape[0]
    targets = targets.clone()
    order = [list(range(T))] * T if order is None else order.tolist()
    weights, mass, kappa = torch.zeros(T, dtype=torch.float64), 0.0, 1.0
    for i in range(T):
        c = torch.zeros(T, dtype=torch.float64)
        c[i] = 1.0
        for j in order[i]:
            if j == i:
                continue
            v = c @ K
            squared = float(v @ c)
            norm_i, norm_j = math.sqrt(max(squared, 0.0)), math.sqrt(max(float(K[j, j]), 0.0))
            cosine = float(v[j]) / (norm_i * norm_j + eps)
            target = float(targets[i, j])
            # Cancellation in c K c and in (c K)_j: their computed values carry γ |c|ᵀ|K||c| and
            # γ (|c|ᵀ|K|)_j, relative to |g_i^PC|² and |g_i^PC||g_j|.
            spread = max(float(c.abs() @ K.abs() @ c.abs()) / max(squared, 1e-300),
                         float((c.abs() @ K.abs())[j]) / max(norm_i * norm_j + eps, 1e-300), 1.0)
            if cosine < target:
                root_cosine = math.sqrt(max(1 - cosine * cosine, 0.0))
                root_target = math.sqrt(max(1 - target * target, 0.0))
                c[j] += norm_i * (target * root_cosine - cosine * root_target) / (norm_j * root_target + eps)
                kappa = max(kappa, spread / max(root_cosine * root_target, 1e-300))
            kappa = max(kappa, spread)
            targets[i, j] = (1 - beta) * target + beta * cosine
        weights += c
        mass = max(mass, float(c.abs().sum()))
    return weights, targets, mass, kappa


def pair_bound(T: int, kappa: float) -> float:
    return 2 * T * kappa * gamma(2 * T + 8, torch.float64)


def random_targets(T, seed, spread=0.6):
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(T, T, generator=generator, dtype=torch.float64) - 0.5) * 2 * spread


def random_order(T, seed):
    return functional.pcgrad_order(T, shuffle=True, generator=torch.Generator().manual_seed(seed), device="cpu")


def check(K, targets, order, beta=0.5, eps=1e-8, what=""):
    weights, new_targets = torch.ops.fastmtl.gradvac_weights(K, targets, order, beta, eps)
    T = K.shape[0]
    assert weights.shape == (T,) and new_targets.shape == (T, T)
    assert weights.dtype == new_targets.dtype == torch.float64
    expected_weights, expected_targets = gradvac_step(K, targets, order, beta, eps)
    oracle_weights, oracle_targets, mass, kappa = oracle(K, targets, order, beta, eps)
    bound = pair_bound(T, kappa)
    for name, expected in (("reference", expected_weights), ("oracle", oracle_weights)):
        assert_close_rel(weights, expected, bound, f"{what} weights vs {name}", scale=T * mass)
    for name, expected in (("reference", expected_targets), ("oracle", oracle_targets)):
        assert_close_rel(new_targets, expected, bound, f"{what} targets vs {name}", scale=1.0)
    return weights, new_targets


@pytest.mark.parametrize("T", TASKS)
@pytest.mark.parametrize("shuffle", [False, True])
def test_matches_reference_and_oracle(T, shuffle):
    for seed in range(2):
        G = random_gradients(T, 2 * T + 10, seed=seed, dtype=torch.float64)
        order = random_order(T, seed) if shuffle else None
        check(G @ G.T, random_targets(T, seed), order, beta=0.3, what=f"T={T} seed={seed}")
        check(G @ G.T, torch.zeros(T, T, dtype=torch.float64), order, what=f"T={T} zero targets")


@pytest.mark.parametrize("T,rank", [(5, 2), (16, 3), (64, 4)])
def test_rank_deficient(T, rank):
    torch.manual_seed(T)
    G = torch.randn(T, rank, dtype=torch.float64) @ torch.randn(rank, 30, dtype=torch.float64)
    check(G @ G.T, random_targets(T, 1), random_order(T, 1))


def test_zero_duplicated_and_opposite_tasks():
    G = random_gradients(6, 30, seed=2, dtype=torch.float64)
    G[2] = 0  # cosines with it are 0 / eps = 0; a positive target gives it a weight ~ |g_i| φ̂ / eps
    G[4] = G[0]
    G[5] = -G[1]
    for targets in (torch.zeros(6, 6, dtype=torch.float64), random_targets(6, 3, spread=0.3)):
        weights, _ = check(G @ G.T, targets, random_order(6, 4))
        assert torch.isfinite(weights).all()


def test_scale_free():
    # Weights and targets depend on cosines and norm ratios only; eps (added to |g_i||g_j| and
    # |g_j|√(1-φ̂²)) is the one absolute quantity, so it is taken far below both here.
    G = random_gradients(8, 30, seed=5, dtype=torch.float64)
    K, targets, order = G @ G.T, random_targets(8, 5), random_order(8, 5)
    # The smallest subnormal, made at run time (keep_subnormals is on): a subnormal literal is
    # parsed as 0 when the module is compiled after a training module turned on flush-to-zero.
    eps = math.ldexp(1.0, -1074)
    weights, new_targets = torch.ops.fastmtl.gradvac_weights(K, targets, order, 0.5, eps)
    for s in (2.0**500, 2.0**-500):  # exponent shifts only: bit for bit
        w, t = torch.ops.fastmtl.gradvac_weights(K * (s * s), targets, order, 0.5, eps)
        assert torch.equal(w, weights) and torch.equal(t, new_targets)
    _, _, mass, kappa = oracle(K, targets, order, 0.5, eps)
    for s in (1e150, 1e-150):  # the rounding of sG and of its Gram matrix: γ_{P+2} more
        scaled = s * G
        w, t = torch.ops.fastmtl.gradvac_weights(scaled @ scaled.T, targets, order, 0.5, eps)
        bound = pair_bound(8, kappa) + 2 * 8 * kappa * gamma(G.shape[1] + 2, torch.float64)
        assert_close_rel(w, weights, bound, f"s={s}", scale=8 * mass)
        assert_close_rel(t, new_targets, bound, f"s={s}", scale=1.0)


def test_order_entries_out_of_range_are_skipped():
    G = random_gradients(4, 10, seed=6, dtype=torch.float64)
    K, targets = G @ G.T, random_targets(4, 6)
    expected = torch.ops.fastmtl.gradvac_weights(K, targets, None, 0.5, 1e-8)
    bad = torch.arange(4).expand(4, 4).clone()
    bad[0, 0], bad[1, 1], bad[2, 2] = -9, 4, 1 << 40  # each replaces the task itself (a skip anyway)
    got = torch.ops.fastmtl.gradvac_weights(K, targets, bad, 0.5, 1e-8)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_non_finite_gram_gives_nan_and_the_method_keeps_its_targets():
    G = random_gradients(3, 10, seed=7, dtype=torch.float64)
    K = G @ G.T
    for bad in (math.nan, math.inf):
        broken = K.clone()
        broken[0, 1] = bad
        weights, targets = torch.ops.fastmtl.gradvac_weights(broken, torch.zeros(3, 3, dtype=torch.float64), None,
                                                             0.5, 1e-8)
        assert torch.isnan(weights).all() and torch.isnan(targets).all()
        gradvac = methods.create("gradvac", impl="cpp", shuffle=False)
        gradvac.weights(K)
        kept = gradvac.targets.clone()
        assert torch.isnan(gradvac.weights(broken)).all()
        assert torch.equal(gradvac.targets, kept)


def test_any_float_dtype_and_layout():
    G = random_gradients(5, 20, seed=8, dtype=torch.float64)
    K, targets, order = G @ G.T, random_targets(5, 8), random_order(5, 8)
    expected = torch.ops.fastmtl.gradvac_weights(K, targets, order, 0.5, 1e-8)
    got = torch.ops.fastmtl.gradvac_weights(K.T.contiguous().T, targets.T.contiguous().T,
                                            order.T.contiguous().T, 0.5, 1e-8)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    low = torch.ops.fastmtl.gradvac_weights(K.float(), targets.float(), order, 0.5, 1e-8)  # read in float64
    again = torch.ops.fastmtl.gradvac_weights(K.float().double(), targets.float().double(), order, 0.5, 1e-8)
    assert torch.equal(low[0], again[0]) and torch.equal(low[1], again[1])


E = torch.eye(3, dtype=torch.float64)
Z = torch.zeros(3, 3, dtype=torch.float64)


@pytest.mark.parametrize("args,match", [
    ((torch.ones(2, 3, dtype=torch.float64), Z, None, 0.5, 1e-8), "square"),
    ((torch.ones(3, 3, dtype=torch.int64), Z, None, 0.5, 1e-8), "floating"),
    ((E, torch.zeros(3, 2, dtype=torch.float64), None, 0.5, 1e-8), "targets"),
    ((E, torch.zeros(3, 3, dtype=torch.int64), None, 0.5, 1e-8), "targets"),
    ((E, Z, torch.zeros(3, 2, dtype=torch.int64), 0.5, 1e-8), "order"),
    ((E, Z, torch.zeros(3, 3, dtype=torch.int32), 0.5, 1e-8), "order"),
    ((E, Z, None, 1.5, 1e-8), "beta"),
    ((E, Z, None, -0.1, 1e-8), "beta"),
    ((E, Z, None, math.nan, 1e-8), "beta"),
    ((E, Z, None, 0.5, 0.0), "eps"),
    ((E, Z, None, 0.5, math.nan), "eps"),
    ((E, Z, None, 0.5, math.inf), "eps"),
])
def test_bad_arguments_raise(args, match):
    with pytest.raises(RuntimeError, match=match):
        torch.ops.fastmtl.gradvac_weights(*args)


@pytest.mark.parametrize("T", [2, 5, 16])
def test_method_cpp_matches_torch_over_steps(T):
    # Index order on both paths; the targets carry over the steps, and with them each step's
    # difference (the bounds add up).
    cpp = methods.create("gradvac", impl="cpp", beta=0.3, shuffle=False)
    ref = methods.create("gradvac", impl="torch", beta=0.3, shuffle=False)
    bound = 0.0
    for step in range(4):
        G = random_gradients(T, 3 * T, seed=step, dtype=torch.float64)
        K = G @ G.T
        previous = torch.zeros(T, T, dtype=torch.float64) if ref.targets is None else ref.targets.clone()
        _, _, mass, kappa = oracle(K, previous, None, 0.3, 1e-8)
        bound += pair_bound(T, kappa)
        assert_close_rel(cpp.weights(K), ref.weights(K), bound, f"step {step}", scale=T * mass)
        assert_close_rel(cpp.targets, ref.targets, bound, f"step {step}", scale=1.0)
        assert_close_rel(cpp(G), ref(G), bound + gamma(T + 1, torch.float64), f"step {step} update",
                         scale=float(T * mass * G.abs().max()))


def test_method_shuffled_orders_match():
    # Generators with one seed draw the same orders on both paths (and in the oracle).
    T = 6
    cpp = methods.create("gradvac", impl="cpp", generator=torch.Generator().manual_seed(3))
    ref = methods.create("gradvac", impl="torch", generator=torch.Generator().manual_seed(3))
    order = random_order(T, 3)
    G = random_gradients(T, 20, seed=11, dtype=torch.float64)
    K = G @ G.T
    _, _, mass, kappa = oracle(K, torch.zeros(T, T, dtype=torch.float64), order, 0.5, 1e-8)
    assert_close_rel(cpp.weights(K), ref.weights(K), pair_bound(T, kappa), scale=T * mass)
    assert_close_rel(cpp.targets, ref.targets, pair_bound(T, kappa), scale=1.0)


def test_matches_torchjd_over_steps(monkeypatch):
    torchjd = pytest.importorskip("torchjd.aggregation")
    monkeypatch.setattr(torch, "randperm", lambda n, *args, **kwargs: torch.arange(n))  # index order there too
    peer = torchjd.GradVac(beta=0.3)
    gradvac = methods.create("gradvac", beta=0.3, shuffle=False, impl="cpp")
    for step in range(5):
        G = random_gradients(4, 300, seed=step, dtype=torch.float64)
        assert_close_rel(fastmtl.aggregate(G, gradvac), peer(G), 1e-10, f"step {step}")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
@pytest.mark.parametrize("T", TASKS)
def test_cuda_matches_cpu(T):
    G = random_gradients(T, 2 * T + 10, seed=9, dtype=torch.float64)
    G[0] = 0
    K, targets, order = G @ G.T, random_targets(T, 9), random_order(T, 9)
    w, t = torch.ops.fastmtl.gradvac_weights(K, targets, order, 0.4, 1e-8)
    w_cuda, t_cuda = torch.ops.fastmtl.gradvac_weights(K.cuda(), targets.cuda(), order.cuda(), 0.4, 1e-8)
    assert w_cuda.device.type == t_cuda.device.type == "cuda"
    _, _, mass, kappa = oracle(K, targets, order, 0.4, 1e-8)
    assert_close_rel(w_cuda, w, pair_bound(T, kappa), scale=T * mass)
    assert_close_rel(t_cuda, t, pair_bound(T, kappa), scale=1.0)
    broken = K.clone().cuda()
    broken[0, 0] = math.inf
    w_bad, _ = torch.ops.fastmtl.gradvac_weights(broken, targets.cuda(), None, 0.4, 1e-8)
    assert torch.isnan(w_bad).all()
    gradvac = methods.create("gradvac", impl="cuda", shuffle=False)
    gradvac.weights(K.cuda())
    kept = gradvac.targets.clone()
    assert torch.isnan(gradvac.weights(broken)).all() and torch.equal(gradvac.targets, kept)
