"""The raw op fastmtl::cagrad_weights (csrc/include/fastmtl/cagrad_math.h, CPU and CUDA kernels)
against the torch reference (python/fastmtl/methods/cagrad.py, cagrad_weights): argument checks,
the NaN policy, T = 1..64 on random, rank-deficient and degenerate inputs, scales, and CUDA vs CPU.
tests/test_cagrad.py runs the method-level properties (torchjd, cvxpy, certificates) for both.

Tolerances. Both implementations solve the same problem exactly up to rounding, with the
documented accuracy (module docstring of cagrad.py): for a non-zero output with weights v =
1/T + (√φ/|g_w|) w, cert(w) = Σ_j w_j s_j - min_i s_i (s = K̂ v, K̂ = K / trace K) is at most
(1 + c)√u, and then |d - d*| <= √(2 √φ cert / |g_w|) ‖G‖_F. So two outputs differ by at most the
sum of their bounds (``update_bound``); a certificate is checked on each output itself, with the
rounding of its float64 evaluation added (γ_n per sum of n terms |K̂_ij| <= 1). Zero outputs (the
Pareto-stationary verdict) must agree, except at c = 1 with 0 in the hull, where the verdict is
decided by rounding and d* = 0 (see tests/test_cagrad.py).
"""

import math

import pytest
import torch
from conftest import UNIT_ROUNDOFF, gamma

import fastmtl
from fastmtl import methods
from fastmtl.methods.cagrad import cagrad_weights

pytestmark = [pytest.mark.skipif(not fastmtl.HAS_EXT, reason="fastmtl._C not built"),
              pytest.mark.usefixtures("keep_subnormals")]  # exact scaling and tiny magnitudes need subnormals

F64 = torch.float64
U64 = UNIT_ROUNDOFF[F64]
DEFAULTS = {"rescale": 0, "norm_eps": 1e-4, "max_iters": 12, "tol": 1e-12}
TASKS = [1, 2, 3, 5, 8, 16, 33, 64]
C_VALUES = [0.0, 0.2, 0.5, 1.0, 2.0, 10.0]


def op(K: torch.Tensor, c: float, rescale=0, norm_eps=1e-4, max_iters=12, tol=1e-12) -> torch.Tensor:
    return torch.ops.fastmtl.cagrad_weights(K, c, rescale, norm_eps, max_iters, tol)


def reference(K: torch.Tensor, c: float) -> torch.Tensor:
    return cagrad_weights(K.double().cpu(), c=c, **DEFAULTS)


def random_gradients(T: int, P: int, seed: int) -> torch.Tensor:
    return torch.randn(T, P, generator=torch.Generator().manual_seed(seed), dtype=F64)


def degenerate(T: int, seed: int) -> dict[str, torch.Tensor]:
    """Rank-deficient (more tasks than rank), a zero row, duplicated and opposite tasks."""
    G = random_gradients(T, 2 * T + 3, seed)
    cases = {"full_rank": G, "rank_deficient": random_gradients(T, max(1, T // 3), seed + 1)}
    if T >= 3:
        zero_row = G.clone()
        zero_row[1] = 0
        duplicated = G.clone()
        duplicated[2] = G[0]
        opposite = G.clone()
        opposite[2] = -G[0]
        cases.update(zero_row=zero_row, duplicated=duplicated, opposite=opposite)
    return cases


def certificate(G: torch.Tensor, v: torch.Tensor, c: float):
    """(cert + its evaluation's rounding, |g_w|, √φ) for a non-zero output v (normalised units)."""
    G = G.double()
    K = G @ G.T
    K = K / K.trace()
    T = K.shape[0]
    mean = torch.full((T,), 1.0 / T, dtype=F64)
    v = v.double().cpu()
    extra = v - mean
    ratio = float(extra.sum())  # √φ / |g_w| > 0
    w = extra / ratio
    s = K @ v
    # K̂ carries γ_(P+1) per entry (|K̂_ij| <= 1), s and w·s are sums of T terms.
    slack = 2 * gamma(G.shape[1] + 2 * T + 3, F64) * float(v.abs().sum()) * (1 + float(w.abs().sum()))
    sqrt_phi = c * float((mean @ K @ mean).clamp_min(0).sqrt())
    return float(w @ s - s.min()) + slack, float((w @ K @ w).clamp_min(0).sqrt()), sqrt_phi


def update_bound(G: torch.Tensor, v: torch.Tensor, c: float) -> float:
    """|v·G - d*| for a non-zero output with cert at its documented bound (1 + c)√u, in G's units,
    plus the float64 rounding of v·G (sums of T terms)."""
    _, g_norm, sqrt_phi = certificate(G, v, c)
    distance = math.sqrt(2 * sqrt_phi * (1 + c) * math.sqrt(U64) / g_norm) * float(G.norm())
    return distance + gamma(G.shape[0] + 1, F64) * float((v.double().abs() @ G.double().abs()).norm())


def is_zero(v: torch.Tensor) -> bool:
    return torch.equal(v, torch.zeros_like(v))


def assert_agrees(G: torch.Tensor, mine: torch.Tensor, theirs: torch.Tensor, c: float, what) -> None:
    assert mine.dtype == F64 and mine.shape == (G.shape[0],), what
    assert bool(torch.isfinite(mine).all()), what
    if is_zero(mine) != is_zero(theirs):
        # c = 1 with 0 in the hull: ψ = 0 exactly near ρ = 0 and rounding decides the verdict, but
        # d* = 0: the non-zero side must be within its bound of 0.
        nonzero = theirs if is_zero(mine) else mine
        assert c == 1, (what, is_zero(mine))
        assert float((nonzero.double() @ G.double()).norm()) <= update_bound(G, nonzero, c), what
        return
    if is_zero(mine):
        return
    if c == 0:  # the mean: weights exactly 1/T in both
        assert torch.equal(mine, theirs), what
        return
    cert, _, _ = certificate(G, mine, c)
    assert cert <= (1 + c) * math.sqrt(U64), (what, cert)
    difference = float(((mine - theirs) @ G.double()).norm())
    assert difference <= update_bound(G, mine, c) + update_bound(G, theirs, c), (what, difference)


# ----- agreement with the reference -------------------------------------------------------------------


@pytest.mark.parametrize("T", TASKS)
def test_matches_the_reference(T):
    for name, G in degenerate(T, seed=T).items():
        K = G @ G.T
        for c in C_VALUES:
            assert_agrees(G, op(K, c), reference(K, c), c, (T, name, c))


@pytest.mark.parametrize("T", [2, 5, 16])
@pytest.mark.parametrize("scale", [1e150, 1e-150, 1.0])
def test_scales(T, scale):
    # CAGrad is scale-free above norm_eps: gradients × 1e150 (K up to ~1e302) give λ-scaled weights'
    # updates within the same bounds; gradients × 1e-150 (trace(K) ~ 1e-298 < norm_eps) give 0,
    # torchjd's rule, in both implementations.
    G = random_gradients(T, 3 * T, seed=100 + T)
    K = (scale * G) @ (scale * G).T
    assert bool(torch.isfinite(K).all())
    for c in (0.0, 0.5, 2.0):
        mine, theirs = op(K, c), reference(K, c)
        if scale < 1e-100:
            assert is_zero(mine) and is_zero(theirs), (T, c)
            continue
        assert not is_zero(mine), (T, scale, c)  # P > T: 0 is outside the hull
        assert_agrees(G, mine, theirs, c, (T, scale, c))
        unscaled = op(G @ G.T, c)
        assert_agrees(G, mine, unscaled, c, (T, scale, c, "unscaled"))


@pytest.mark.parametrize("rescale,divisor", [(1, lambda c: 1 + c * c), (2, lambda c: 1 + c)])
def test_rescale_divides(rescale, divisor):
    G = random_gradients(6, 10, seed=3)
    K = G @ G.T
    for c in (0.3, 1.5):
        plain = op(K, c)
        # one division more, rounded once: u relative per weight.
        assert torch.allclose(op(K, c, rescale=rescale), plain / divisor(c), rtol=2 * U64, atol=0)


def test_float32_gram_is_read_in_float64():
    # The op solves in float64: a float32 K gives the same weights as its float64 copy.
    G = random_gradients(7, 20, seed=5).float()
    K = G @ G.T
    for c in (0.0, 0.5, 2.0):
        assert torch.equal(op(K, c), op(K.double(), c))


@pytest.mark.parametrize("rescale", [0, 1, 2])
@pytest.mark.parametrize("c", [0.0, 0.5, 1.0, 2.0])
def test_method_cpp_matches_torch(c, rescale):
    # Through the method object (trace normalisation, options, NaN policy of the base class).
    for T in (3, 12):
        G = random_gradients(T, 2 * T, seed=T)
        G[0] = G[1]
        cpp = methods.create("cagrad", c=c, rescale=rescale, impl="cpp")
        ref = methods.create("cagrad", c=c, rescale=rescale, impl="torch")
        mine, theirs = cpp.weights(cpp.gram(G)), ref.weights(ref.gram(G))
        divisor = {0: 1.0, 1: 1 + c * c, 2: 1 + c}[rescale]
        assert_agrees(G, mine * divisor, theirs * divisor, c, (T, c, rescale))
        # The update is the combine of those weights (float64 sums of T terms).
        d = fastmtl.aggregate(G, cpp)
        bound = gamma(T + 1, F64) * float((mine.abs() @ G.abs()).norm())
        assert float((d - mine @ G).norm()) <= 2 * bound, (T, c)


# ----- the NaN policy --------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_gram_gives_all_nan(bad):
    G = random_gradients(5, 8, seed=1)
    K = G @ G.T
    K[1, 3] = bad
    for c in (0.0, 0.5, 2.0):
        out = op(K, c)
        assert out.dtype == F64 and out.shape == (5,) and bool(out.isnan().all())
    G[2, 4] = bad  # through the method: all-NaN weights and update
    d = fastmtl.aggregate(G, "cagrad", c=0.5, impl="cpp")
    assert bool(d.isnan().all())


# ----- argument checks of the raw op ---------------------------------------------------------------------


@pytest.mark.parametrize("gram,match", [
    (torch.ones(3, dtype=F64), "square"),
    (torch.ones(2, 3, dtype=F64), "square"),
    (torch.ones(0, 0, dtype=F64), "non-empty"),
    (torch.ones(2, 2, 2, dtype=F64), "square"),
    (torch.ones(2, 2, dtype=torch.int64), "floating"),
])
def test_bad_gram(gram, match):
    with pytest.raises(RuntimeError, match=match):
        op(gram, 0.5)


@pytest.mark.parametrize("options,match", [
    ({"c": -0.1}, "c >= 0"),
    ({"c": float("inf")}, "c >= 0"),
    ({"c": float("nan")}, "c >= 0"),
    ({"rescale": 3}, "rescale"),
    ({"rescale": -1}, "rescale"),
    ({"norm_eps": 0.0}, "norm_eps"),
    ({"norm_eps": -1e-4}, "norm_eps"),
    ({"norm_eps": float("inf")}, "norm_eps"),
    ({"norm_eps": float("nan")}, "norm_eps"),
    ({"max_iters": 0}, "max_iters"),
    ({"max_iters": -3}, "max_iters"),
    ({"tol": -1e-12}, "tol"),
    ({"tol": float("nan")}, "tol"),
])
def test_bad_options(options, match):
    arguments = {"c": 0.5, **DEFAULTS, **options}
    with pytest.raises(RuntimeError, match=match):
        op(torch.eye(3, dtype=F64), **arguments)



# ----- CUDA vs CPU ---------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
@pytest.mark.parametrize("T", TASKS)
def test_cuda_matches_cpu(T):
    # The same float64 code in one GPU thread: the same algorithm and branches, so the same
    # verdict and an update within the documented bounds (FMA contraction by nvcc changes rounding).
    for name, G in degenerate(T, seed=T).items():
        K = G @ G.T
        for c in C_VALUES:
            gpu = op(K.cuda(), c)
            assert gpu.device.type == "cuda"
            assert_agrees(G, gpu.cpu(), op(K, c), c, (T, name, c))
    bad = (G @ G.T).cuda()
    bad[0, 0] = float("nan")
    assert bool(op(bad, 0.5).isnan().all())
