"""PCD and FairGrad (methods/pcd_fairgrad.py; ops csrc/include/fastmtl/pcd_math.h, fairgrad_math.h)
against torchjd 0.18 on the same float64 inputs, against hand-computed cases of their papers'
formulas and their own optimality conditions; options, NaN policy, T = 1, state, op == torch path.

Tolerances (u = 2⁻⁵³):
* PCD: torchjd, the op and the torch path run the same active-set steps (same tolerances, so
  the same active sets on inputs whose constraints are decided by margins far above them); each
  step solves S_AA r = S_Ap backward stably (LU or Cholesky: relative error <= c cond(S_AA) γ_T,
  Higham 2002 Thm 9.5 / 10.4), and cond(S_AA) <= cond(S̃) for every principal block of the
  normalised secondary Gram matrix S̃ (Cauchy interlacing). Over at most 10 T steps, plus the EMA
  and rescaling (a few roundings, γ_16), two paths differ by at most
  pcd_bound = 2 (10 T cond(S̃) γ_{2T} + γ_16) relative to max|w|.
* FairGrad: ours stops at rounding level; at the root, x is determined up to
  cond(H) × the residual's evaluation error γ_{T+2} (|K| x + x^-p) / ... (H = K + diag(p x^(-p-1)),
  the Jacobian of F(x) = K x - x^-p). scipy's least_squares stops on its ftol/xtol/gtol = 1e-8
  rules, not at the root: its error is estimated a posteriori by the Newton correction
  |H(x_s)⁻¹ F(x_s)| at its result x_s (first order; the test allows twice it, the second-order
  term being O(|correction|²) at these magnitudes), plus our own bound.
"""

import math

import pytest
import torch
from conftest import assert_close_rel, gamma

import fastmtl
from fastmtl import methods
from fastmtl.methods.pcd_fairgrad import fairgrad_weights

torchjd = pytest.importorskip("torchjd.aggregation")

U = 2.0**-53
IMPLS = ["torch", pytest.param("auto", marks=pytest.mark.skipif(not fastmtl.HAS_EXT, reason="fastmtl._C not built"))]
needs_ext = pytest.mark.skipif(not fastmtl.HAS_EXT, reason="fastmtl._C not built")


def gradients(T: int, seed: int, P: int = 30) -> torch.Tensor:
    """Random float64 gradients with different norms (so the normalisation matters)."""
    generator = torch.Generator().manual_seed(seed)
    G = torch.randn(T, P, generator=generator, dtype=torch.float64)
    return G * (0.2 + 3 * torch.rand(T, 1, generator=generator, dtype=torch.float64))


# ----- PCD -----------------------------------------------------------------------------------------


def pcd_bound(K: torch.Tensor, ema_scales: torch.Tensor) -> float:
    """pcd_bound of the module docstring, from the normalised secondary block S̃."""
    T = K.shape[0]
    if T == 1:
        return 2 * gamma(16, torch.float64)
    S = (K * torch.outer(ema_scales, ema_scales))[1:, 1:]
    eigenvalues = torch.linalg.eigvalsh(S)
    cond = float(eigenvalues.max() / eigenvalues.min())
    return 2 * (10 * T * cond * gamma(2 * T, torch.float64) + gamma(16, torch.float64))


def scales_of(method) -> torch.Tensor:
    """s_i = 1/√(v̂_i + eps) from the method's state after a step (the formula, independently)."""
    beta, eps = method.options["beta"], method.options["eps"]
    v = method.sq_norm_ema / (1 - beta ** float(method.n_steps))
    return 1 / (v + eps).sqrt()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("T", [2, 3, 4, 5, 6, 8])
@pytest.mark.parametrize("tau,beta,eps", [(0.02, 0.999, 1e-8), (0.3, 0.9, 1e-8), (0.8, 0.5, 0.0), ("vector", 0.0, 1e-3)])
def test_pcd_matches_torchjd_over_steps(impl, T, tau, beta, eps):
    if tau == "vector":
        tau = torch.linspace(0.0, 0.9, T - 1, dtype=torch.float64)
    ours = methods.create("pcd", tau=tau, beta=beta, eps=eps, impl=impl)
    theirs = torchjd.PCDWeighting(tau=tau, beta=beta, eps=eps)
    active = 0
    for step in range(5):  # the EMA carries over the steps
        G = gradients(T, seed=100 * T + step)
        K = G @ G.T
        got, expected = ours.weights(K), theirs(K)
        assert_close_rel(got, expected, pcd_bound(K, scales_of(ours)), f"T={T} step={step}")
        assert_close_rel(ours.sq_norm_ema, theirs._sq_norm_ema, 4 * U, "EMA")
        assert int(ours.n_steps) == int(theirs._n_steps) == step + 1
        active += int((got[1:] > 0).sum())
    if not (isinstance(tau, float) and tau < 0.1):
        assert active > 0  # the constraints did bind: the active-set solve was exercised


@pytest.mark.parametrize("T", [3, 5, 8])
def test_pcd_kkt_conditions(T):
    # Own oracle: w/w_0 = [1, μ] solves the QP: feasible within the tolerance, μ >= 0, active
    # constraints hold with equality (complementary slackness), d rescaled to |g_0|.
    method = methods.create("pcd", tau=0.5, beta=0.0, eps=0.0)
    for seed in range(5):
        G = gradients(T, seed=seed)
        K = G @ G.T
        w = method.weights(K)
        s = scales_of(method)
        Kn = K * torch.outer(s, s)
        multipliers = w / s / (w[0] / s[0])  # [1, μ]: w_i = μ_i s_i × (common factor)
        assert (multipliers[1:] >= 0).all()
        slack = Kn[1:] @ multipliers - 0.5 * Kn.diagonal()[1:]
        scale = float(Kn.diagonal().max())
        assert (slack >= -1e-9 * scale - 1e-12 * scale).all()
        active = multipliers[1:] > 0
        assert torch.allclose(slack[active], torch.zeros_like(slack[active]), atol=1e-10 * scale)
        assert_close_rel((w @ G).norm(), G[0].norm(), 8 * T * U)


@pytest.mark.parametrize("impl", IMPLS)
def test_pcd_hand_cases(impl):
    def weights(G, tau):
        return methods.create("pcd", tau=tau, beta=0.0, eps=0.0, impl=impl).weights(G @ G.T)

    # No violated constraint: g_0 = (1, 0), g_1 = (1, 1): g_1·g_0 = 1 >= 0.3 |g_1|² — d = g_0.
    G = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    assert torch.equal(weights(G, 0.3), torch.tensor([1.0, 0.0], dtype=torch.float64))
    # One active constraint (orthogonal unit gradients, τ = 1/2): d̃ = g_0 + g_1/2, rescaled to |g_0|.
    G = torch.eye(2, dtype=torch.float64)
    expected = torch.tensor([1.0, 0.5], dtype=torch.float64) / math.sqrt(1.25)
    assert_close_rel(weights(G, 0.5), expected, 8 * U)
    # Scales matter: g_1 = 4 e_1 normalises to e_1 — the same direction as above.
    G = torch.tensor([[1.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    assert_close_rel(weights(G, 0.5) @ G, expected[0] * G[0] + expected[1] * G[1] / 4, 16 * U)
    # Infeasible (anti-parallel secondaries, τ > 0): d = g_0.
    G = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0]], dtype=torch.float64)
    assert torch.equal(weights(G, 0.1), torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    # τ = 0 and g_1 = -g_0: the projection of g_0 on {d : g_0·d <= 0} is 0 — a zero update.
    G = torch.tensor([[1.0, 2.0], [-1.0, -2.0]], dtype=torch.float64)
    assert torch.equal(weights(G, 0.0), torch.zeros(2, dtype=torch.float64))
    # Zero primary gradient: zero update (the EMA still counts the step).
    G = torch.tensor([[0.0, 0.0], [1.0, 2.0]], dtype=torch.float64)
    assert torch.equal(weights(G, 0.3), torch.zeros(2, dtype=torch.float64))


@pytest.mark.parametrize("impl", IMPLS)
def test_pcd_one_task_is_the_gradient(impl):
    G = torch.tensor([[3.0, -4.0, 12.0]], dtype=torch.float64)
    method = methods.create("pcd", impl=impl)
    for _ in range(3):
        assert_close_rel(method.weights(G @ G.T), torch.ones(1, dtype=torch.float64), 8 * U)
    assert_close_rel(fastmtl.aggregate(G, "pcd", impl=impl), G[0], 8 * U)
    assert torch.equal(methods.create("pcd", impl=impl).weights(torch.zeros(1, 1)), torch.zeros(1, dtype=torch.float64))


@needs_ext
@pytest.mark.parametrize("T", [1, 2, 4, 8, 16])
def test_pcd_op_matches_torch_path(T):
    op_method = methods.create("pcd", tau=0.4, beta=0.8, impl="auto")
    torch_method = methods.create("pcd", tau=0.4, beta=0.8, impl="torch")
    for step in range(4):
        G = gradients(T, seed=7 * T + step, P=3 * T + 10)
        K = G @ G.T
        got, expected = op_method.weights(K), torch_method.weights(K)
        assert_close_rel(got, expected, pcd_bound(K, scales_of(torch_method)), f"T={T} step={step}")
        assert_close_rel(op_method.sq_norm_ema, torch_method.sq_norm_ema, 0.0)  # the same torch ops


@pytest.mark.parametrize("impl", IMPLS)
def test_pcd_scale_linear_with_a_fresh_state_and_eps_zero(impl):
    G = gradients(5, seed=3)
    d = fastmtl.aggregate(G, "pcd", tau=0.5, eps=0.0, impl=impl)
    for c in (1e-3, 7.0, 2.0**40):
        assert_close_rel(fastmtl.aggregate(c * G, "pcd", tau=0.5, eps=0.0, impl=impl), c * d,
                         pcd_bound(G @ G.T, 1 / G.norm(dim=1)))


@pytest.mark.parametrize("impl", IMPLS)
def test_pcd_nan_keeps_state_and_state_round_trip(impl):
    method = methods.create("pcd", tau=0.3, beta=0.9, impl=impl)
    for step in range(2):
        G = gradients(4, seed=step)
        method.weights(G @ G.T)
    state = method.state_dict()
    bad = torch.eye(4, dtype=torch.float64)
    bad[1, 2] = math.nan
    assert method.weights(bad).isnan().all()
    assert torch.equal(method.sq_norm_ema, state["sq_norm_ema"]) and torch.equal(method.n_steps, state["n_steps"])
    bad[1, 2] = math.inf
    assert method.weights(bad).isnan().all()
    assert torch.equal(method.sq_norm_ema, state["sq_norm_ema"])
    # Round trip: a new method loaded with the state continues exactly as the original.
    other = methods.create("pcd", tau=0.3, beta=0.9, impl=impl)
    other.load_state_dict(state)
    state["sq_norm_ema"].zero_()  # the loaded tensors are copies
    G = gradients(4, seed=9)
    assert torch.equal(other.weights(G @ G.T), method.weights(G @ G.T))
    assert torch.equal(other.state_dict()["sq_norm_ema"], method.state_dict()["sq_norm_ema"])
    # A change of T restarts the EMA (as torchjd).
    G = gradients(3, seed=1)
    method.weights(G @ G.T)
    assert method.sq_norm_ema.shape == (3,) and int(method.n_steps) == 1
    assert methods.create("pcd").state_dict() == {"sq_norm_ema": None, "n_steps": None}


def test_pcd_load_state_errors():
    method = methods.create("pcd", tau=[0.1, 0.2])
    with pytest.raises(ValueError, match="pcd: a state_dict with the keys"):
        method.load_state_dict({"ema": torch.zeros(3)})
    with pytest.raises(ValueError, match="tau has 2 values"):
        method.load_state_dict({"sq_norm_ema": torch.zeros(4, dtype=torch.float64), "n_steps": torch.tensor(2)})
    with pytest.raises(ValueError, match=r"sq_norm_ema must be a floating-point \[T\]"):
        method.load_state_dict({"sq_norm_ema": torch.zeros(3, 3), "n_steps": torch.tensor(2)})
    with pytest.raises(ValueError, match="n_steps must be a 0-d"):
        method.load_state_dict({"sq_norm_ema": torch.zeros(3), "n_steps": torch.tensor([2])})
    with pytest.raises(ValueError, match="both be None"):
        method.load_state_dict({"sq_norm_ema": torch.zeros(3), "n_steps": None})
    method.load_state_dict({"sq_norm_ema": torch.ones(3), "n_steps": torch.tensor(2)})
    assert method.sq_norm_ema.dtype == torch.float64


def test_pcd_options():
    for bad in (-0.1, 1.5, math.nan):
        with pytest.raises(ValueError, match="pcd: tau"):
            methods.create("pcd", tau=bad)
    with pytest.raises(ValueError, match=r"pcd: tau\[1\] must be <= 1"):
        methods.create("pcd", tau=[0.5, 2.0])
    with pytest.raises(ValueError, match="pcd: tau must be a 1-D"):
        methods.create("pcd", tau=torch.zeros(2, 2))
    with pytest.raises(ValueError, match="pcd: beta must be < 1"):
        methods.create("pcd", beta=1.0)
    with pytest.raises(ValueError, match="pcd: beta must be >= 0"):
        methods.create("pcd", beta=-0.5)
    with pytest.raises(ValueError, match="pcd: eps must be >= 0"):
        methods.create("pcd", eps=-1e-8)
    with pytest.raises(TypeError, match="pcd: tau"):
        methods.create("pcd", tau="0.1")
    with pytest.raises(ValueError, match="tau has 2 values but G has 3 secondary tasks"):
        fastmtl.aggregate(torch.randn(4, 10), "pcd", tau=[0.1, 0.2])
    assert methods.create("pcd", tau=torch.tensor([0.1, 0.2], dtype=torch.float64)).options["tau"] == (0.1, 0.2)


def test_pcd_float32_input_matches_torchjd():
    # torchjd's Gramian is float32 here and its precision 10 eps(float32); ours records G's
    # accumulation dtype. Both Gram matrices carry float32 rounding (γ_P relative to |g_i||g_j|),
    # which the active-set solve amplifies by at most cond(S̃) per step, as pcd_bound's float64 part.
    G = gradients(5, seed=4).float()
    method = methods.create("pcd", tau=0.3)
    got = method(G)
    expected = torchjd.PCD(tau=0.3)(G)
    assert got.dtype == torch.float32
    K = (G.double() @ G.double().T)
    bound = 2 * 10 * 5 * float(torch.linalg.cond(K[1:, 1:] / K.diagonal()[1:].sqrt().outer(K.diagonal()[1:].sqrt()))) \
        * gamma(G.shape[1] + 8, torch.float32)
    assert_close_rel(got, expected, bound, scale=G.abs().max() * G.shape[0])


# ----- FairGrad ------------------------------------------------------------------------------------


def fairgrad_error(K: torch.Tensor, x: torch.Tensor, alpha: float) -> torch.Tensor:
    """|H(x)⁻¹ F(x)|: the Newton correction at x, a first-order estimate of |x - x*|."""
    p = 1 / alpha
    F = K @ x - x ** (-p)
    H = K + torch.diag(p * x ** (-p - 1))
    return torch.linalg.solve(H, F).abs()


def own_bound(K: torch.Tensor, x: torch.Tensor, alpha: float) -> torch.Tensor:
    """cond(H) γ_{T+2} (|K| x + x^-p) mapped through H⁻¹: ours is at the root up to this."""
    p = 1 / alpha
    H = K + torch.diag(p * x ** (-p - 1))
    cond = float(torch.linalg.cond(H))
    residual_error = gamma(K.shape[0] + 8, torch.float64) * (K.abs() @ x + x ** (-p))
    return 4 * cond * residual_error.max() / float(torch.linalg.eigvalsh(H).min())


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("T", [2, 3, 4, 5, 6, 8])
@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 5.0])
def test_fairgrad_matches_torchjd(impl, T, alpha):
    for seed in range(3):
        G = gradients(T, seed=seed + 10 * T)
        K = G @ G.T
        got = methods.create("fairgrad", alpha=alpha, impl=impl).weights(K)
        expected = torchjd.FairGradWeighting(alpha)(K)
        bound = 2 * fairgrad_error(K, expected, alpha) + own_bound(K, got, alpha)
        assert ((got - expected).abs() <= bound).all(), f"T={T} seed={seed}: {(got - expected).abs()} > {bound}"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("T", [1, 2, 5, 8, 16])
@pytest.mark.parametrize("alpha", [0.25, 1.0, 3.0])
def test_fairgrad_solves_its_equation(impl, T, alpha):
    # Own oracle: K x = x^(-1/α) to the residual's evaluation error times cond(H).
    G = gradients(T, seed=T, P=2 * T + 10)
    K = G @ G.T
    x = methods.create("fairgrad", alpha=alpha, impl=impl).weights(K)
    assert (x > 0).all()
    p = 1 / alpha
    cond = float(torch.linalg.cond(K + torch.diag(p * x ** (-p - 1))))
    residual = K @ x - x ** (-p)
    assert (residual.abs() <= 4 * cond * gamma(T + 8, torch.float64) * (K.abs() @ x + x ** (-p))).all()
    # Non-conflicting: every task's directional derivative g_i·d = (Kx)_i = x_i^(-1/α) > 0.
    assert ((G @ (x @ G)) > 0).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_fairgrad_hand_cases(impl):
    def weights(K, alpha):
        return methods.create("fairgrad", alpha=alpha, impl=impl).weights(K)

    # α = 1 on a diagonal K: x_i = K_ii^(-1/2).
    K = torch.diag(torch.tensor([4.0, 9.0, 0.25, 1e-6], dtype=torch.float64))
    assert_close_rel(weights(K, 1.0), K.diagonal() ** -0.5, 8 * U)
    # General α on a diagonal K: k x = x^(-1/α) gives x = k^(-α/(1+α)).
    assert_close_rel(weights(K, 2.0), K.diagonal() ** (-2 / 3), 16 * U)
    # T = 1: x = |g|^(-2α/(1+α)); α = 1: d = g/|g|.
    G = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    assert_close_rel(fastmtl.aggregate(G, "fairgrad", alpha=1.0, impl=impl), G[0] / 5, 8 * U)
    assert_close_rel(weights(G @ G.T, 3.0), torch.tensor([25.0 ** -0.75], dtype=torch.float64), 16 * U)
    # α = 0: linear scalarisation, 1/T (torchjd's convention).
    assert torch.equal(weights(torch.randn(3, 3).double(), 0.0), torch.full((3,), 1 / 3, dtype=torch.float64))
    # Equal tasks K = I + J, α = 1: x = 1/√(T + 1).
    K = torch.ones(4, 4, dtype=torch.float64) + torch.eye(4, dtype=torch.float64)
    assert_close_rel(weights(K, 1.0), torch.full((4,), 5 ** -0.5, dtype=torch.float64), 64 * U)


@pytest.mark.parametrize("impl", IMPLS)
def test_fairgrad_zero_and_opposite_gradients(impl):
    G = gradients(4, seed=2)
    G[2] = 0
    K = G @ G.T
    x = methods.create("fairgrad", alpha=1.0, impl=impl).weights(K)
    assert x[2] == 0
    keep = [0, 1, 3]
    reduced = methods.create("fairgrad", alpha=1.0, impl=impl).weights(K[keep][:, keep])
    assert_close_rel(x[keep], reduced, 64 * U)
    assert torch.equal(methods.create("fairgrad", alpha=2.0, impl=impl).weights(torch.zeros(3, 3)),
                       torch.zeros(3, dtype=torch.float64))
    # g and -g: no root; a finite, positive iterate, and d = Σ x_i g_i stays small next to |x||g|.
    G = torch.tensor([[1.0, 2.0], [-1.0, -2.0]], dtype=torch.float64)
    x = methods.create("fairgrad", alpha=1.0, max_iters=40, impl=impl).weights(G @ G.T)
    assert torch.isfinite(x).all() and (x > 0).all()
    assert (x @ G).norm() <= 1e-3 * x.abs().sum() * G[0].norm()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_fairgrad_scaling(impl, alpha):
    # d(cG) = c^((1-α)/(1+α)) d(G): x(c² K) = c^(-2α/(1+α)) x(K).
    G = gradients(5, seed=1)
    d = fastmtl.aggregate(G, "fairgrad", alpha=alpha, impl=impl)
    for c in (1e-3, 10.0):
        scaled = fastmtl.aggregate(c * G, "fairgrad", alpha=alpha, impl=impl)
        assert_close_rel(scaled, c ** ((1 - alpha) / (1 + alpha)) * d, 1e-12)


@needs_ext
@pytest.mark.parametrize("T", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_fairgrad_op_matches_torch_path(T, alpha):
    G = gradients(T, seed=T, P=3 * T + 10)
    K = G @ G.T
    got = torch.ops.fastmtl.fairgrad_weights(K, alpha, 100)
    expected = fairgrad_weights(K, alpha, 100)
    assert_close_rel(got, expected, 2 * float(own_bound(K, expected, alpha) / expected.abs().max()) + 64 * U)
    assert_close_rel(methods.create("fairgrad", alpha=alpha).weights(K), got, 0.0)


@pytest.mark.parametrize("impl", IMPLS)
def test_fairgrad_nan_and_options(impl):
    K = torch.eye(3, dtype=torch.float64)
    for bad in (math.nan, math.inf):
        K[0, 1] = bad
        assert methods.create("fairgrad", alpha=1.0, impl=impl).weights(K).isnan().all()
    with pytest.raises(TypeError, match="alpha"):
        methods.create("fairgrad")
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="fairgrad: alpha"):
            methods.create("fairgrad", alpha=bad)
    with pytest.raises(ValueError, match="fairgrad: max_iters"):
        methods.create("fairgrad", alpha=1.0, max_iters=0)
    method = methods.create("fairgrad", alpha=1.0)
    assert method.state_dict() == {}
    method.load_state_dict({})
    with pytest.raises(ValueError, match="keeps no state"):
        method.load_state_dict({"x": 1})


def test_fairgrad_float32_input():
    # float32 G: K in float32 (γ_P rounding relative to |g_i||g_j|), amplified by cond(H).
    G = gradients(4, seed=5).float()
    got = fastmtl.aggregate(G, "fairgrad", alpha=1.0)
    assert got.dtype == torch.float32
    K = G.double() @ G.double().T
    x = methods.create("fairgrad", alpha=1.0).weights(K)
    cond = float(torch.linalg.cond(K + torch.diag(x ** -2)))
    assert_close_rel(got, x @ G.double(), 4 * cond * gamma(G.shape[1] + 8, torch.float32))


@needs_ext
def test_ops_reject_bad_arguments():
    K = torch.eye(3, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="taus must be"):
        torch.ops.fastmtl.pcd_weights(K, torch.ones(3), torch.ones(3), 1e-9, 1e-9, 1e-15)
    with pytest.raises(RuntimeError, match="scales must be"):
        torch.ops.fastmtl.pcd_weights(K, torch.ones(2), torch.ones(2), 1e-9, 1e-9, 1e-15)
    with pytest.raises(RuntimeError, match="finite alpha"):
        torch.ops.fastmtl.fairgrad_weights(K, -1.0, 10)
    with pytest.raises(RuntimeError, match="max_iters"):
        torch.ops.fastmtl.fairgrad_weights(K, 1.0, 0)
    bad = K.clone()
    bad[0, 0] = math.nan
    assert torch.ops.fastmtl.pcd_weights(bad, torch.ones(3), torch.ones(2), 1e-9, 1e-9, 1e-15).isnan().all()
    assert torch.ops.fastmtl.fairgrad_weights(bad, 1.0, 10).isnan().all()
