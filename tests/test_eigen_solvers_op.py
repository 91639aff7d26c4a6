"""The spectral Gram-space ops imtl_g_weights and aligned_mtl_weights (Householder
tridiagonalisation + implicit shifted QR, csrc/include/fastmtl/eigen_math.h) against the torch
reference (impl="torch": LAPACK's svd/eigh) and torchjd, on full-rank, rank-deficient and
degenerate Gram matrices, at extreme scales, with the NaN policy and the argument checks; CUDA
against the CPU op.

Tolerances. Both sides decompose K backward stably: each eigenvalue is within δ = c T u ||K||₂
of the exact one (the op: Golub & Van Loan §8.3.6; LAPACK: Anderson et al., LAPACK Users' Guide
§4.7), so a spectral function of the kept part, pinv(K) or K^-½, moves by a relative
O(κ δ / ||K||) = O(κ T u), κ = λ_max / λ_min over the kept eigenvalues. Both results carry it:
the tests allow 64 κ T u (c = 32 per side), times |v|₁/|Σv| for IMTL-G's normalisation by Σv.

The rank cut (λ > T eps λ_max) is a discontinuity: a null eigenvalue computed on the wrong side
changes the weights by O(1). The rank-deficient cases therefore use integer gradients, whose
Gram matrix is exact in float64, so that the null eigenvalues are exactly 0 and only the
solvers' own rounding (O(u) λ_max ≪ the cut 2 T u λ_max) moves them; the tests check that
LAPACK's result is below the cut too (a precondition of comparing at all), and zero, duplicated
and opposite gradients give exact structure.
"""

import pytest
import torch
from conftest import assert_close_rel
from oracles import random_gradients

import fastmtl
from fastmtl import methods
from fastmtl.methods.gram_space import aligned_mtl_weights, imtl_g_weights

pytestmark = pytest.mark.usefixtures("one_thread", "keep_subnormals")  # exact scaling and tiny magnitudes need subnormals

U = 2.0**-53
EPS = torch.finfo(torch.float64).eps
TASKS = [1, 2, 3, 5, 8, 16, 33, 64]
MODES = ["min", "median", "rmse"]
cuda_only = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")]


def gram(G: torch.Tensor) -> torch.Tensor:
    G = G.double()
    return G @ G.T


def integer_gradients(T: int, rank: int, P: int, seed: int) -> torch.Tensor:
    """Integer entries in [-3, 3]; rows beyond ``rank`` are integer combinations of the first:
    K = G Gᵀ is exact in float64 and its null eigenvalues are exactly 0."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.randint(-3, 4, (rank, P), generator=generator, dtype=torch.float64)
    mix = torch.randint(-1, 2, (T - rank, rank), generator=generator, dtype=torch.float64)
    return torch.cat([base, mix @ base])


def kept_condition(K: torch.Tensor, rank: int | None = None) -> float:
    """λ_max / λ_min over the eigenvalues above the rank cut (the kept spectrum)."""
    eigenvalues = torch.linalg.eigvalsh(K)
    kept = eigenvalues[eigenvalues > K.shape[0] * EPS * eigenvalues.max()]
    if rank is not None:  # precondition: LAPACK sees the exact rank (see the module docstring)
        assert kept.numel() == rank
    return float(kept.max() / kept.min()) if kept.numel() else 1.0


def spectral_rtol(K: torch.Tensor, rank: int | None = None) -> float:
    return 64 * kept_condition(K, rank) * K.shape[0] * U


def aligned_scale(K: torch.Tensor) -> float:
    """An upper bound on |w|₂ = |B 1/T|₂ <= |B|₂ / √T, |B|₂ = sqrt(scale / λ_min) <= sqrt(κ): the
    error bound of B is relative to |B|, so w is compared on this scale (its entries may cancel
    to ~0, e.g. when 1/T is orthogonal to the kept eigenvectors)."""
    return (kept_condition(K) / K.shape[0]) ** 0.5


def imtl_g_rtol(K: torch.Tensor, rank: int | None = None) -> float:
    # The reference's v before normalisation: dividing by Σv amplifies by |v|₁ / |Σv|.
    trace = K.diagonal().sum()
    Kn = K / trace if trace > 0 else K
    v = torch.linalg.pinv(Kn) @ Kn.diagonal().clamp_min(0).sqrt()
    amplification = float(v.abs().sum() / v.sum().abs()) if v.abs().sum() > 0 else 1.0
    return spectral_rtol(K, rank) * amplification


# ---- op vs the torch reference -------------------------------------------------------------


@pytest.mark.parametrize("T", TASKS)
@pytest.mark.parametrize("seed", range(3))
def test_imtl_g_op_matches_reference(T, seed):
    K = gram(random_gradients(T, T + 10, seed=seed, dtype=torch.float64))
    assert_close_rel(torch.ops.fastmtl.imtl_g_weights(K), imtl_g_weights(K), imtl_g_rtol(K), f"T={T}")


@pytest.mark.parametrize("scale_mode", MODES)
@pytest.mark.parametrize("T", TASKS)
@pytest.mark.parametrize("seed", range(3))
def test_aligned_mtl_op_matches_reference(scale_mode, T, seed):
    K = gram(random_gradients(T, T + 10, seed=seed, dtype=torch.float64))
    assert_close_rel(torch.ops.fastmtl.aligned_mtl_weights(K, scale_mode), aligned_mtl_weights(K, scale_mode),
                     spectral_rtol(K), f"T={T}", scale=aligned_scale(K))


@pytest.mark.parametrize("T", [2, 3, 5, 8, 16, 33, 64])
@pytest.mark.parametrize("rank_of", [lambda T: 1, lambda T: (T + 1) // 2, lambda T: T - 1])
def test_rank_deficient_gram_matches_reference(T, rank_of):
    rank = max(1, rank_of(T))
    G = integer_gradients(T, rank, 2 * T + 3, seed=T)
    K = gram(G)
    assert torch.equal(K, K.T)
    expected = imtl_g_weights(K)
    assert torch.linalg.svdvals(K).gt(T * EPS * torch.linalg.svdvals(K).max()).sum() == rank  # pinv's cut
    assert_close_rel(torch.ops.fastmtl.imtl_g_weights(K), expected, imtl_g_rtol(K, rank), f"imtl_g T={T} r={rank}")
    for mode in MODES:
        assert_close_rel(torch.ops.fastmtl.aligned_mtl_weights(K, mode), aligned_mtl_weights(K, mode),
                         spectral_rtol(K, rank), f"aligned_mtl {mode} T={T} r={rank}", scale=aligned_scale(K))


def test_zero_duplicated_and_opposite_tasks():
    base = integer_gradients(4, 4, 12, seed=5)
    cases = {
        "zero rows": torch.cat([base[:2], torch.zeros(1, 12, dtype=torch.float64), base[2:], torch.zeros(1, 12)]),
        "duplicated": torch.cat([base, base[1:3]]),
        "opposite": torch.cat([base, -base[:2]]),
        "all zero": torch.zeros(3, 12, dtype=torch.float64),
        "one zero task": torch.zeros(1, 12, dtype=torch.float64),
        # disjoint supports: a row of K with no nonzero off-diagonal entry, set aside by the op
        "orthogonal task": torch.cat([torch.cat([base, torch.zeros(4, 3, dtype=torch.float64)], dim=1),
                                      torch.tensor([[0.0] * 12 + [1.0, -2.0, 2.0]], dtype=torch.float64)]),
    }
    for name, G in cases.items():
        K = gram(G)
        rank = int(torch.linalg.matrix_rank(G))  # exact for small integer matrices
        assert_close_rel(torch.ops.fastmtl.imtl_g_weights(K), imtl_g_weights(K),
                         imtl_g_rtol(K, rank) if rank else 0.0, name)
        for mode in MODES:
            assert_close_rel(torch.ops.fastmtl.aligned_mtl_weights(K, mode), aligned_mtl_weights(K, mode),
                             spectral_rtol(K, rank) if rank else 0.0, f"{name} {mode}", scale=aligned_scale(K))
    # Exact structure: zero tasks get weight exactly 0 from Aligned-MTL (an exact zero eigenvalue)
    # and the all-zero K gives zeros (IMTL-G) and the mean (Aligned-MTL).
    w = torch.ops.fastmtl.aligned_mtl_weights(gram(cases["zero rows"]), "min")
    assert w[2] == 0 and w[5] == 0
    assert torch.equal(torch.ops.fastmtl.imtl_g_weights(gram(cases["all zero"])), torch.zeros(3, dtype=torch.float64))
    assert torch.equal(torch.ops.fastmtl.aligned_mtl_weights(gram(cases["all zero"]), "median"),
                       torch.full((3,), 1 / 3, dtype=torch.float64))


@pytest.mark.parametrize("scale", [1e150, 1e-150])
@pytest.mark.parametrize("T", [2, 5, 16])
def test_weights_are_scale_free_at_extreme_scales(scale, T):
    # Both weightings are scale-free (w(c² K) = w(K)); gradients ~1e±150 give K ~1e±300, where a
    # squared entry would overflow or underflow: the op scales by a power of two internally.
    G = random_gradients(T, T + 10, seed=T, dtype=torch.float64)
    K, K_scaled = gram(G), gram(scale * G)
    assert torch.isfinite(K_scaled).all() and K_scaled.abs().max() > 0
    assert_close_rel(torch.ops.fastmtl.imtl_g_weights(K_scaled), imtl_g_weights(K), imtl_g_rtol(K), "imtl_g")
    for mode in MODES:
        assert_close_rel(torch.ops.fastmtl.aligned_mtl_weights(K_scaled, mode), aligned_mtl_weights(K, mode),
                         spectral_rtol(K), mode, scale=aligned_scale(K))


def test_float32_gram_is_solved_in_float64():
    K = gram(random_gradients(5, 20, seed=1)).float()
    assert torch.ops.fastmtl.imtl_g_weights(K).dtype == torch.float64
    assert torch.equal(torch.ops.fastmtl.imtl_g_weights(K), torch.ops.fastmtl.imtl_g_weights(K.double()))
    assert torch.equal(torch.ops.fastmtl.aligned_mtl_weights(K, "rmse"),
                       torch.ops.fastmtl.aligned_mtl_weights(K.double(), "rmse"))


# ---- NaN policy and argument checks --------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("T", [1, 3])
def test_non_finite_gram_gives_all_nan(bad, T):
    K = torch.eye(T, dtype=torch.float64)
    K[T - 1, 0] = bad
    assert torch.isnan(torch.ops.fastmtl.imtl_g_weights(K)).all()
    for mode in MODES:
        assert torch.isnan(torch.ops.fastmtl.aligned_mtl_weights(K, mode)).all()


def test_bad_arguments_raise():
    good = torch.eye(3, dtype=torch.float64)
    for bad, match in [(torch.ones(3), "square"), (torch.ones(2, 3), "square"), (torch.ones(0, 0), "non-empty"),
                       (torch.ones(3, 3, dtype=torch.int64), "floating-point")]:
        with pytest.raises(RuntimeError, match=match):
            torch.ops.fastmtl.imtl_g_weights(bad)
        with pytest.raises(RuntimeError, match=match):
            torch.ops.fastmtl.aligned_mtl_weights(bad, "min")
    with pytest.raises(RuntimeError, match="scale_mode"):
        torch.ops.fastmtl.aligned_mtl_weights(good, "max")


# ---- through the method objects, and torchjd -----------------------------------------------


@pytest.mark.parametrize("T", TASKS)
def test_methods_cpp_match_torch(T):
    G = random_gradients(T, T + 10, seed=7, dtype=torch.float64)
    K = gram(G)
    cpp, ref = methods.create("imtl_g", impl="cpp"), methods.create("imtl_g", impl="torch")
    assert_close_rel(cpp.weights(K), ref.weights(K), imtl_g_rtol(K), "imtl_g weights")
    for mode in MODES:
        cpp = methods.create("aligned_mtl", scale_mode=mode, impl="cpp")
        ref = methods.create("aligned_mtl", scale_mode=mode, impl="torch")
        assert_close_rel(cpp.weights(K), ref.weights(K), spectral_rtol(K), f"aligned_mtl {mode} weights",
                         scale=aligned_scale(K))
        # d = w G: its error is bounded by the weights' (times |G|), which the line above bounds.
        assert_close_rel(cpp(G), ref(G), spectral_rtol(K), mode, scale=aligned_scale(K) * float(G.norm(dim=1).sum()))
    nan_G = G.clone()
    nan_G[0, 0] = float("nan")
    assert torch.isnan(methods.create("imtl_g", impl="cpp").weights(gram(nan_G))).all()


@pytest.mark.parametrize("T", [2, 3, 5, 8, 16])
def test_matches_torchjd(T):
    torchjd = pytest.importorskip("torchjd.aggregation")
    G = random_gradients(T, T + 10, seed=T, dtype=torch.float64)
    K = gram(G)
    # d = w G from weights within rtol (relative to max |w|): |Δd| <= rtol max|w| Σ|g_i|.
    w = methods.create("imtl_g", impl="torch").weights(K)
    scale = imtl_g_rtol(K) * float(w.abs().max() * G.norm(dim=1).sum())
    d = torchjd.IMTLG()(G)
    assert_close_rel(fastmtl.aggregate(G, "imtl_g", impl="cpp"), d, 1.0, "imtl_g", scale=scale)
    for mode in MODES:
        scale = spectral_rtol(K) * aligned_scale(K) * float(G.norm(dim=1).sum())
        d = torchjd.AlignedMTL(scale_mode=mode)(G)
        assert_close_rel(fastmtl.aggregate(G, "aligned_mtl", scale_mode=mode, impl="cpp"), d, 1.0, mode, scale=scale)


# ---- CUDA ----------------------------------------------------------------------------------


@pytest.mark.parametrize("T", TASKS + [65])
@pytest.mark.parametrize("marks", [pytest.param(None, marks=cuda_only)])
def test_cuda_op_matches_cpu_op(T, marks):
    # The same float64 code on both: only the compilers' contraction choices differ (nvcc fuses
    # multiply-adds), within the spectral bound. T = 65 reads K from global memory.
    K = gram(random_gradients(T, T + 10, seed=T, dtype=torch.float64))
    K_cuda = K.cuda()
    assert_close_rel(torch.ops.fastmtl.imtl_g_weights(K_cuda), torch.ops.fastmtl.imtl_g_weights(K),
                     imtl_g_rtol(K), "imtl_g")
    for mode in MODES:
        assert_close_rel(torch.ops.fastmtl.aligned_mtl_weights(K_cuda, mode), torch.ops.fastmtl.aligned_mtl_weights(K, mode),
                         spectral_rtol(K), mode, scale=aligned_scale(K))
    K_cuda[0, 0] = float("nan")
    assert torch.isnan(torch.ops.fastmtl.imtl_g_weights(K_cuda)).all()
    assert torch.isnan(torch.ops.fastmtl.aligned_mtl_weights(K_cuda, "min")).all()


@pytest.mark.parametrize("marks", [pytest.param(None, marks=cuda_only)])
def test_cuda_methods_do_not_synchronise(marks):
    G = random_gradients(4, 10_000, seed=3).cuda()
    for method, options in [("imtl_g", {}), ("aligned_mtl", {"scale_mode": "median"})]:
        fastmtl.aggregate(G, method, **options)  # warm up (lazy initialisation may sync once)
        torch.cuda.set_sync_debug_mode("error")
        try:
            fastmtl.aggregate(G, method, **options)
        finally:
            torch.cuda.set_sync_debug_mode("default")
