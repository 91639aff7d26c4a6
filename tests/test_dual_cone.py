"""UPGrad and DualProj's QP, min vᵀAv s.t. v ≥ u with A = K / tr K + reg·I, on the inputs
where an inexact solver shows: rank-deficient and ill-conditioned K (more tasks than rank,
stationary Jacobians as in torchjd's tests, duplicated, opposite and zero tasks, badly scaled
tasks, a Murty-hard family), T from 1 to 64. Oracles: the exact rational solution of the float64
problem (Python's fractions), quadprog on the same QP, torchjd's UPGrad / DualProj (quadprog).
Every check runs on the torch reference (its CPU early-exit path and the fixed-budget path a GPU
runs) and on the compiled op fastmtl::dual_cone_weights (tests/test_dual_cone_op.py has the op's
own checks: arguments, NaN policy, CUDA).

Tolerances come from error bounds, not from a run (see ``solve_rtol``)."""


import pytest
import torch
from conftest import ALL_IMPLS, UNIT_ROUNDOFF, assert_within, gamma
from oracles import dual_cone_exact_solution as exact_solution
from oracles import random_gradients

import fastmtl
from fastmtl import methods
from fastmtl.methods import dual_cone

# T×T solves: threads only add overhead; exact scaling and tiny magnitudes need subnormals
pytestmark = pytest.mark.usefixtures("one_thread", "keep_subnormals")

REG = 1e-4  # torchjd's and fastmtl's default norm_eps and reg_eps
U64 = UNIT_ROUNDOFF[torch.float64]


def gamma_f64(n: int) -> float:
    return gamma(n, torch.float64)


# ----- error bounds ------------------------------------------------------------------------------


def kkt_rtol(T: int) -> float:
    """The relative KKT residual a solution may keep and still pass the solver's check: w = A s + A u
    is a sum of 2T products per component, within γ_2T (|A|(|s| + |u|)) of its exact value (Higham
    §3.1); the check allows four times that, with two more terms (dual_cone._kkt_tolerance). The
    test restates the number rather than import it."""
    return 4 * (2 * T + 2) * U64


def solve_rtol(T: int, reg: float = REG) -> float:
    """Bound on ‖v − v*‖∞ / ‖v‖∞ for a v = u + s (u >= 0) that passed the solver's KKT check.

    * Residual: the natural residual r = min(s, A s + q) of the returned s (its negative entries,
      at most kkt_rtol ‖v‖∞, clamped to 0) has |r_i| <= 5 kkt_rtol(T) ‖A‖∞ ‖v‖∞: the check allows
      kkt_rtol |A|(|s| + |u|) <= 2 kkt_rtol ‖A‖∞ ‖v‖∞ off the free set (|s|, |u| <= v), the solve's
      own residual on it is within the same (backward stability), and the clamp moves A s by at
      most kkt_rtol ‖A‖∞ ‖v‖∞. ‖A‖∞ <= √T ‖A‖₂ <= √T (1 + reg) (K / tr K has eigenvalues in [0, 1]).
    * Condition: for a strongly monotone LCP, ‖s − s*‖₂ <= (1 + L) / μ · ‖r‖₂ with L = ‖A‖₂ <= 1 + reg
      and μ = λmin(A) >= reg (Facchinei & Pang 2003, §6.3: error bounds of the natural map):
      (2 + reg) / reg, twice the condition-number bound (1 + reg) / reg of A. ‖r‖₂ <= √T ‖r‖∞.
    Together: 5 T (1 + reg) (2 + reg) / reg · kkt_rtol(T)."""
    return 5 * T * (1 + reg) * (2 + reg) / reg * kkt_rtol(T)


def regularised(K: torch.Tensor, reg: float = REG, norm_eps: float = REG) -> torch.Tensor:
    """A = K / tr K + reg·I, K counted as 0 below norm_eps (torchjd's projector), restated here."""
    K = K.double()
    trace = float(K.trace())
    normalised = torch.zeros_like(K) if trace < norm_eps else K / trace
    return normalised + reg * torch.eye(K.shape[0], dtype=torch.float64)


def rows_of(kind: str, T: int) -> torch.Tensor:
    """The u's: UPGrad projects each e_i / T, DualProj the mean 1 / T."""
    if kind == "upgrad":
        return torch.eye(T, dtype=torch.float64) / T
    return torch.full((1, T), 1.0 / T, dtype=torch.float64)


# ----- inputs ------------------------------------------------------------------------------------


def _orthonormal(n: int, generator) -> torch.Tensor:
    Q, R = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    return Q * R.diagonal().sign()


def low_rank(T: int, P: int, rank: int, seed: int) -> torch.Tensor:
    """Q₁ diag(σ) Q₂ᵀ with random orthonormal factors and |N(0, 1)| singular values: rank exactly."""
    gen = torch.Generator().manual_seed(seed)
    left, right = _orthonormal(T, gen)[:, :rank], _orthonormal(P, gen)[:rank]
    return left @ torch.diag(torch.randn(rank, generator=gen, dtype=torch.float64).abs()) @ right


def stationary(T: int, P: int, rank: int, seed: int, strictly: bool) -> torch.Tensor:
    """A Jacobian with a non-negative combination of its rows equal to 0: cᵀJ = 0 with c > 0
    (strictly) or c >= 0 with zeros (weakly). Its columns are random and made orthogonal to c."""
    gen = torch.Generator().manual_seed(seed)
    c = torch.rand(T, generator=gen, dtype=torch.float64) + 0.1
    if not strictly:
        c[torch.randperm(T, generator=gen)[: T // 2]] = 0
    basis = torch.randn(T, rank, generator=gen, dtype=torch.float64)
    basis -= c[:, None] * (c @ basis) / (c @ c)
    return basis @ torch.randn(rank, P, generator=gen, dtype=torch.float64)


def murty_hard(T: int, seed: int) -> torch.Tensor:
    """Rows of Fathi's (1979) matrix L (1 on the diagonal, 2 below), signs flipped at random: K = L Lᵀ
    up to signs, a matrix on which single-pivot rules take exponentially many steps, and whose QP
    solution spans many orders of magnitude."""
    gen = torch.Generator().manual_seed(seed)
    L = torch.tril(torch.full((T, T), 2.0, dtype=torch.float64), -1) + torch.eye(T, dtype=torch.float64)
    return L * torch.where(torch.rand(T, 1, generator=gen) < 0.5, -1.0, 1.0).double()


def with_duplicates(T: int, seed: int) -> torch.Tensor:
    g = random_gradients((T + 1) // 2, 40, seed=seed, dtype=torch.float64)
    return torch.cat([g, g])[:T]


def with_opposites(T: int, seed: int) -> torch.Tensor:
    g = random_gradients((T + 1) // 2, 40, seed=seed, dtype=torch.float64)
    return torch.cat([g, -g])[:T]


def with_zero_rows(T: int, seed: int) -> torch.Tensor:
    g = random_gradients(T, 40, seed=seed, dtype=torch.float64)
    g[::3] = 0
    return g


def badly_scaled(T: int, seed: int) -> torch.Tensor:
    return random_gradients(T, 40, seed=seed, dtype=torch.float64) * torch.logspace(-6, 6, T, dtype=torch.float64)[:, None]


# (name, G): the cases first (20 tasks of rank 10, a 9×11 matrix of rank 5).
DEGENERATE = [
    ("20 tasks, rank 10", low_rank(20, 10, 10, 0)),
    ("20 tasks, rank 10 (b)", low_rank(20, 10, 10, 1)),
    ("20 tasks, rank 5", low_rank(20, 10, 5, 2)),
    ("20 tasks, rank 1", low_rank(20, 10, 1, 3)),
    ("9x11, rank 5", low_rank(9, 11, 5, 4)),
    ("9x11, rank 5 (b)", low_rank(9, 11, 5, 5)),
    ("4x3, rank 1", low_rank(4, 3, 1, 6)),
    ("4x3, rank 2", low_rank(4, 3, 2, 7)),
    ("32 tasks, rank 6", low_rank(32, 40, 6, 8)),
    ("64 tasks, rank 12", low_rank(64, 30, 12, 9)),
    ("strongly stationary 20x10 r5", stationary(20, 10, 5, 10, strictly=True)),
    ("strongly stationary 20x100 r19", stationary(20, 100, 19, 11, strictly=True)),
    ("weakly stationary 20x10 r5", stationary(20, 10, 5, 12, strictly=False)),
    ("weakly stationary 40x30 r20", stationary(40, 30, 20, 13, strictly=False)),
    ("duplicated tasks", with_duplicates(12, 14)),
    ("opposite tasks", with_opposites(12, 15)),
    ("zero rows", with_zero_rows(10, 16)),
    ("scales 1e-6..1e6", badly_scaled(16, 17)),
    ("huge (1e15)", 1e15 * low_rank(9, 11, 5, 18)),
    ("small (1e-2, trace above norm_eps)", 1e-2 * low_rank(20, 100, 19, 19)),
    ("Murty-hard 16", murty_hard(16, 20)),
    ("Murty-hard 64", murty_hard(64, 21)),
]
SMALL = [(name, G) for name, G in DEGENERATE if G.shape[0] <= 12]  # for the exact rational oracle


def _ids(cases):
    return [name for name, _ in cases]


# ----- oracles -----------------------------------------------------------------------------------


def quadprog_solution(A: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    quadprog = pytest.importorskip("quadprog")
    import numpy as np

    T = A.shape[0]
    return torch.tensor(np.stack([quadprog.solve_qp(A.numpy(), np.zeros(T), np.eye(T), u.numpy())[0] for u in U]))


# The solvers under test: the torch reference's default path (on the CPU: the early exit), its
# fixed-budget path (the one a GPU runs), and the compiled op.
PATHS = ["auto", "fixed-budget",
         pytest.param("op", marks=pytest.mark.skipif(not fastmtl.HAS_EXT, reason="fastmtl._C not built"))]


def project(K, U, path="auto"):
    """fastmtl's solution on ``path`` (one of PATHS)."""
    if path == "op":
        return torch.ops.fastmtl.dual_cone_weights(K.double(), U, REG, REG)
    options = {"early_exit": False} if path == "fixed-budget" else {}
    return dual_cone.dual_cone_projection_weights(K, U, norm_eps=REG, reg_eps=REG, **options)


# ----- the QP itself -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", ["upgrad", "dualproj"])
@pytest.mark.parametrize("name,G", SMALL, ids=_ids(SMALL))
def test_equals_the_exact_rational_solution(name, G, kind, path):
    K = G @ G.T
    T = K.shape[0]
    U = rows_of(kind, T)
    V = project(K, U, path)
    A = regularised(K)
    for u, v in zip(U, V):
        exact = exact_solution(A, u, v > u)
        assert_within(v, exact, solve_rtol(T) * float(exact.abs().max()), f"{name}, {kind}")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", ["upgrad", "dualproj"])
@pytest.mark.parametrize("name,G", DEGENERATE, ids=_ids(DEGENERATE))
def test_matches_quadprog_on_degenerate_inputs(name, G, kind, path):
    K = G @ G.T
    T = K.shape[0]
    U = rows_of(kind, T)
    V = project(K, U, path)
    expected = quadprog_solution(regularised(K), U)
    # Both are within solve_rtol of the exact solution (quadprog's Goldfarb-Idnani steps are
    # backward stable too): twice the bound between them.
    for v, e in zip(V, expected):
        assert_within(v, e, 2 * solve_rtol(T) * float(e.abs().max()), f"{name}, {kind}")


@pytest.mark.parametrize("T", [1, 2, 3, 5, 8, 13, 24, 33, 48, 64])
@pytest.mark.parametrize("family", ["rank_half", "duplicates", "opposites", "zero_rows", "scales", "murty"])
def test_matches_quadprog_for_every_size(T, family):
    seed = 100 + T
    G = {"rank_half": lambda: low_rank(T, 2 * T, max(1, T // 2), seed),
         "duplicates": lambda: with_duplicates(T, seed), "opposites": lambda: with_opposites(T, seed),
         "zero_rows": lambda: with_zero_rows(T, seed), "scales": lambda: badly_scaled(T, seed),
         "murty": lambda: murty_hard(T, seed)}[family]()
    K = G @ G.T
    for kind in ("upgrad", "dualproj"):
        U = rows_of(kind, T)
        for path in ("auto", "fixed-budget", "op") if fastmtl.HAS_EXT else ("auto", "fixed-budget"):
            V = project(K, U, path)
            expected = quadprog_solution(regularised(K), U)
            for v, e in zip(V, expected):
                assert_within(v, e, 2 * solve_rtol(T) * float(e.abs().max()), f"{family}, T={T}, {kind}")


@pytest.mark.parametrize("early_exit", [True, False], ids=["early-exit", "fixed-budget"])
@pytest.mark.parametrize("name,G", DEGENERATE, ids=_ids(DEGENERATE))
def test_every_row_passes_the_kkt_check_within_the_budget(name, G, early_exit):
    K = G @ G.T
    T = K.shape[0]
    A = dual_cone.regularised_gram(K, norm_eps=REG, reg_eps=REG)
    result = dual_cone.dual_cone_qp(A, rows_of("upgrad", T), early_exit=early_exit)
    assert bool(result.solved.all()), f"{name}: KKT violations {result.violation.tolist()}"
    assert (result.v >= rows_of("upgrad", T)).all()
    # The check itself, restated: s = v − u >= 0 (exactly, after the clamp) and A v >= 0 up to the
    # residual of solve_rtol's first point, 5 kkt_rtol ‖A‖∞ ‖v‖∞.
    Av = result.v @ A
    residual = 5 * kkt_rtol(T) * float(A.abs().sum(1).max()) * result.v.abs().amax(1, keepdim=True)
    assert (Av >= -residual).all(), name


@pytest.mark.skipif(not fastmtl.HAS_EXT, reason="fastmtl._C not built")
@pytest.mark.parametrize("kind", ["upgrad", "dualproj"])
@pytest.mark.parametrize("name,G", DEGENERATE, ids=_ids(DEGENERATE))
def test_the_op_passes_the_kkt_check(name, G, kind):
    # The op does not report its violation: its rows are checked as above, v >= u exactly and
    # A v >= -5 kkt_rtol ‖A‖∞ ‖v‖∞ (solve_rtol's residual), and against the torch reference.
    K = G @ G.T
    T = K.shape[0]
    U = rows_of(kind, T)
    A = dual_cone.regularised_gram(K, norm_eps=REG, reg_eps=REG)
    V = project(K, U, "op")
    assert (V >= U).all(), name
    residual = 5 * kkt_rtol(T) * float(A.abs().sum(1).max()) * V.abs().amax(1, keepdim=True)
    assert (V @ A >= -residual).all(), name
    for v, e in zip(V, project(K, U, "auto")):  # both within solve_rtol of the exact solution
        assert_within(v, e, 2 * solve_rtol(T) * float(e.abs().max()), f"{name}, {kind}")


def test_an_exhausted_budget_returns_a_feasible_point_and_says_so(monkeypatch):
    # No interior-point start, one pivoting step: the Murty-hard input cannot be solved so. The
    # rows that fail the check say so, and every row still satisfies v >= u.
    monkeypatch.setattr(dual_cone, "_IPM_ITERATIONS", 0)
    monkeypatch.setattr(dual_cone, "_cleanup_pivots", lambda T: 1)
    G = murty_hard(32, 3)
    K = G @ G.T
    U = rows_of("upgrad", 32)
    result = dual_cone.dual_cone_qp(dual_cone.regularised_gram(K, norm_eps=REG, reg_eps=REG), U, early_exit=False)
    assert not bool(result.solved.all())
    assert torch.equal(result.solved, result.violation <= kkt_rtol(32))
    assert (result.v >= U).all()


def test_the_fixed_budget_path_never_reads_a_tensor_on_the_host():
    # On a GPU, .item(), bool(tensor), .nonzero() and friends all go through these two aten ops
    # (a device sync each); the fixed-budget path, the one a GPU runs, must call neither.
    from torch.utils._python_dispatch import TorchDispatchMode

    class HostReads(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket in (torch.ops.aten._local_scalar_dense, torch.ops.aten.nonzero,
                                       torch.ops.aten.is_nonzero, torch.ops.aten.item):
                self.seen.append(func)
            return func(*args, **(kwargs or {}))

    G = low_rank(20, 10, 10, 0)
    K = G @ G.T
    with HostReads() as mode:
        dual_cone.dual_cone_projection_weights(K, rows_of("upgrad", 20), norm_eps=REG, reg_eps=REG, early_exit=False)
    assert mode.seen == []
    with HostReads() as mode:  # the check can fail: the CPU path does read (its early exit)
        dual_cone.dual_cone_projection_weights(K, rows_of("upgrad", 20), norm_eps=REG, reg_eps=REG, early_exit=True)
    assert mode.seen


# ----- the methods, against torchjd and by their properties --------------------------------------


@pytest.mark.parametrize("impl", ALL_IMPLS)
@pytest.mark.parametrize("method,peer", [("upgrad", "UPGradWeighting"), ("dualproj", "DualProjWeighting")])
@pytest.mark.parametrize("name,G", DEGENERATE, ids=_ids(DEGENERATE))
def test_weights_match_torchjd_on_degenerate_inputs(name, G, method, peer, impl):
    torchjd = pytest.importorskip("torchjd.aggregation")
    pytest.importorskip("quadprog")
    pytest.importorskip("qpsolvers")
    K = G @ G.T
    T = K.shape[0]
    ours = methods.create(method, impl=impl).weights(K)
    theirs = getattr(torchjd, peer)()(K)
    # UPGrad sums T solutions v_r >= u_r >= 0, each within solve_rtol ‖v_r‖∞ <= solve_rtol ‖w‖∞ of the
    # exact one, on both sides (quadprog's Goldfarb-Idnani solve is backward stable as well).
    rows = T if method == "upgrad" else 1
    assert_within(ours, theirs, 2 * rows * solve_rtol(T) * float(theirs.abs().max()), name)


@pytest.mark.parametrize("impl", ALL_IMPLS)
@pytest.mark.parametrize("method", ["upgrad", "dualproj"])
@pytest.mark.parametrize("name,G", DEGENERATE, ids=_ids(DEGENERATE))
def test_non_conflicting_on_degenerate_inputs(name, G, method, impl):
    # J d = K w = tr K (A w − reg w) with w = Σ_r v_r, and each projected row has
    # (A v_r)_i >= −5 kkt_rtol ‖A‖∞ ‖v_r‖∞ (solve_rtol's residual) with ‖v_r‖∞ <= ‖w‖∞ (v_r >= 0), so
    # g_i · d >= −tr K (reg w_i + rows · 5 kkt_rtol ‖A‖∞ ‖w‖∞); the reg term is torchjd's too. Rounding:
    # K from G and G · (w · G) each sum P or T products, so 2 γ_{P+T+1} |g_i| Σ_j w_j |g_j|.
    T, P = G.shape
    K = fastmtl.functional.gram_for_weights(G, impl=impl)  # the K aggregate solves on
    w = methods.create(method, impl=impl).weights(K)
    d = fastmtl.aggregate(G, method, impl=impl)
    assert K.trace() >= REG  # below norm_eps, K counts as 0 and nothing is projected (as torchjd)
    A = regularised(K)
    rows = T if method == "upgrad" else 1
    solve = K.trace() * (REG * w + rows * 5 * kkt_rtol(T) * float(A.abs().sum(1).max()) * float(w.abs().max()))
    norms = G.norm(dim=1)
    rounding = 2 * gamma_f64(P + T + 1) * norms * float(w.abs() @ norms)
    assert (G @ d >= -(solve + rounding)).all(), f"{name}: {float((G @ d / (solve + rounding)).min()):.3g} slacks"


@pytest.mark.parametrize("impl", ALL_IMPLS)
@pytest.mark.parametrize("method", ["upgrad", "dualproj"])
@pytest.mark.parametrize("name,G", DEGENERATE, ids=_ids(DEGENERATE))
def test_permutation_invariant_on_degenerate_inputs(name, G, method, impl):
    # Two solves of the same problem, each within rows · solve_rtol ‖w‖∞ of the exact weights
    # (UPGrad sums T rows v_r with ‖v_r‖∞ <= ‖w‖∞); d = w · G adds Σ_i |δw_i| |g_i| and the rounding
    # of two weighted sums of T terms, 2 γ_{T+1} Σ_i w_i |g_i|.
    T = G.shape[0]
    permutation = torch.randperm(T, generator=torch.Generator().manual_seed(T))
    w = methods.create(method, impl=impl).weights(fastmtl.functional.gram_for_weights(G, impl=impl))
    permuted = methods.create(method, impl=impl).weights(fastmtl.functional.gram_for_weights(G[permutation],
                                                                                            impl=impl))
    rows = T if method == "upgrad" else 1
    weight_bound = 2 * rows * solve_rtol(T) * float(w.abs().max())
    assert_within(permuted, w[permutation], weight_bound, f"{name}: weights")
    d_bound = (weight_bound + 2 * gamma_f64(T + 1) * w.abs().max()) * G.abs().sum(0)
    assert_within(fastmtl.aggregate(G[permutation], method, impl=impl), fastmtl.aggregate(G, method, impl=impl), d_bound,
                  f"{name}: d")


@pytest.mark.parametrize("impl", ALL_IMPLS)
@pytest.mark.parametrize("method", ["upgrad", "dualproj"])
def test_zero_and_below_norm_eps_give_the_preference_vector(method, impl):
    # K = 0, or a trace below norm_eps: A = reg·I, so v = u (UPGrad: Σ e_i / T; DualProj: 1 / T).
    for G in (torch.zeros(5, 30, dtype=torch.float64), 1e-4 * low_rank(5, 30, 3, 1)):
        assert torch.allclose(methods.create(method, impl=impl).weights(G @ G.T),
                              torch.full((5,), 0.2, dtype=torch.float64), rtol=0, atol=1e-15)


@pytest.mark.skipif(not fastmtl.HAS_EXT, reason="fastmtl._C not built")
@pytest.mark.parametrize("method", ["upgrad", "dualproj"])
def test_the_methods_call_the_op_unless_impl_is_torch(method, monkeypatch):
    # The dispatch itself: impl="cpp" must reach fastmtl::dual_cone_weights, impl="torch" must not
    # (otherwise the impl comparisons above would compare a path with itself).
    calls = []
    op = torch.ops.fastmtl.dual_cone_weights

    class Spy:
        def __call__(self, *args):
            calls.append(args)
            return op(*args)

    monkeypatch.setattr(torch.ops.fastmtl, "dual_cone_weights", Spy())
    K = low_rank(6, 8, 3, 0) @ low_rank(6, 8, 3, 0).T
    methods.create(method, impl="torch").weights(K)
    assert calls == []
    methods.create(method, impl="cpp").weights(K)
    assert len(calls) == 1
