"""MoDo, SDMGrad, CR-MOGM and ExcessMTL (methods/stochastic_weightings.py) against torchjd 0.18's
MoDoWeighting, SDMGradWeighting, CRMOGMWeighting and ExcessMTL over several consecutive (stateful)
steps on the same float64 inputs, plus hand-computed steps of the papers' formulas, options, the
NaN policy, T = 1, float32 input, state round-trips and MTLOptimizer.

Tolerances, from error bounds (u = 2⁻⁵³; each implementation is within the bound of the exact
result, so two of them differ by at most twice it):
* Simplex projection (shift by max y, sort, cumulative sum, threshold): on y with |y_i| <= M the
  shifted entries are within 2M and one rounding u 2M, the cumulative sums of up to T terms within
  T·u·T·2M, θ within (T + 2) u (2 T M + 1), the output one more rounding: δ_∞ <= (T + 4)(T + 2) u
  (2M + 1), δ₂ <= √T δ_∞ (``projection_rounding``). A tie in the
  choice of ρ moves θ by at most the rounding of the compared values (θ is continuous in y).
* MoDo: λ ↦ Π(λ - γ(A + ρI)λ) is Lipschitz with L = ‖I - γ(A + ρI)‖₂ in the 2-norm (Π is
  non-expansive); each step adds the rounding of Aλ ((T + 3) u M) and of Π, so after n steps the
  state is within Σ_k L^{n-k} δ of the exact one (``modo_bound``).
* SDMGrad: one inner iteration maps the errors (e_v, e_w) of the velocity and the weights to
  (μ e_v + ‖Â‖₂ e_w + δ_v, e_w + lr e_v' + δ_w); δ_v covers the product Â(w + λw̃) and the
  normalisation of A ((3T + 12) u ‖|Â|‖_F z/(1 - μ), z = 1 + λ‖w̃‖₂), δ_w the step and Π
  (``sdmgrad_bound``). The recurrence is run over every inner iteration of every step. With the
  default lr = 10 this a-priori bound exceeds 1 after a few iterations, so the default-options
  comparison measures the sensitivity instead: torchjd rerun on K perturbed by 8 T u |K| (the
  size of K's own rounding), and the tolerance is 8 times that spread plus the one-step rounding.
* CR-MOGM: the EMA is a contraction (α <= 1), so |λ_k - λ'_k| <= max_j |λ̂_j - λ̂'_j| + 4 k u
  max|λ|. λ̂: UPGrad against torchjd's UPGrad within 2 T solve_rtol(T) max|w| (tests/test_dual_cone.py:
  solve_rtol(T) = 5 T (1 + reg)(2 + reg)/reg · 4 (2T + 2) u, reg = 1e-4); MGDA against torchjd's
  MGDA (the same Frank-Wolfe iterates and stopping rule) within 1e-10 relative, as tests/test_methods.py.
* ExcessMTL: log w_k equals log w_0 + η Σ_j r_j up to a constant shift (which softmax ignores), so
  the errors of the log-weights add up, with no amplification: E = Σ_k η r_k · 2 (P + 2k + 8) u
  (r = Ê/(b + 1e-7); Ê a sum of P positive terms, each within (2k + 4) u after k hypot/sqrt
  accumulations, and the baseline as many) + 8 k u (log and softmax). |Δw_t| <= 3 E w_t, so
  |Δd| <= (3E + 2 T u) max|G| with the combination's rounding (Σw = 1).
* A combination Σ w_t g_t in float32 against float64 with the same weights: conftest's
  weighted_sum_error_bound.
"""

import io
import math

import pytest
import tiny_models
import torch
from conftest import UNIT_ROUNDOFF, assert_within, weighted_sum_error_bound

import fastmtl
from fastmtl import methods
from fastmtl.methods.stochastic_weightings import project_onto_simplex

torchjd = pytest.importorskip("torchjd.aggregation")

U = UNIT_ROUNDOFF[torch.float64]
REG = 1e-4


def inputs(T, P, steps, seed=0, scale=None):
    """Independent batches' gradients: G_k [T, P] with entries of size ~1/√P (K ≈ I) by default."""
    gen = torch.Generator().manual_seed(seed)
    scale = 1 / math.sqrt(P) if scale is None else scale
    shared = torch.randn(P, generator=gen, dtype=torch.float64)
    mix = torch.linspace(-1.0, 1.0, T, dtype=torch.float64)[:, None]
    return [scale * (mix * shared + torch.randn(T, P, generator=gen, dtype=torch.float64)) for _ in range(steps)]


def projection_rounding(T, M, u=U):
    return math.sqrt(T) * (T + 4) * (T + 2) * u * (2 * M + 1)


def modo_bound(As, gamma, rho):
    """2 Σ_k L_k..L_n δ_k over the steps (both sides), in the 2-norm of λ (so also per entry)."""
    error = 0.0
    for A in As:
        T = A.shape[0]
        L = float(torch.linalg.matrix_norm(torch.eye(T, dtype=A.dtype) - gamma * (A + rho * torch.eye(T)), ord=2))
        M = 1 + gamma * (float(A.abs().sum(1).max()) + rho)
        delta = math.sqrt(T) * (T + 3) * U * M + projection_rounding(T, M)
        error = L * error + delta
    return 2 * error


def normalised(A):
    m = A.diagonal().clamp_min(0).sqrt().mean()
    return A / (m * m + 1e-8)


def sdmgrad_bound(As, lr, momentum, n_iter, lambda_, pref):
    e_w = 0.0
    z = 1 + lambda_ * float(pref.norm())
    for A in As:
        T = A.shape[0]
        Ahat = normalised(A)
        a = float(torch.linalg.matrix_norm(Ahat, ord=2))
        v_max = float(Ahat.abs().norm()) * z / (1 - momentum)
        delta_v = (3 * T + 12) * U * v_max
        delta_w = math.sqrt(T) * U * (1 + lr * v_max) + projection_rounding(T, 1 + lr * v_max)
        e_v = 0.0  # the velocity restarts at 0 (exactly) at every step
        for _ in range(n_iter):
            e_v = momentum * e_v + a * e_w + delta_v
            e_w = e_w + lr * e_v + delta_w
    return 2 * (e_w / (1 + lambda_) + 3 * U)


# ----- simplex projection ----------------------------------------------------------------------------


def test_projection_of_known_vectors():
    # Duchi et al. 2008: sorted (1.2, 0.5, -0.3); ρ = 2 (0.5 > (1.7 - 1)/2 = 0.35, -0.3 < 0.4/3), θ = 0.35.
    y = torch.tensor([0.5, 1.2, -0.3], dtype=torch.float64)
    assert_within(project_onto_simplex(y), torch.tensor([0.15, 0.85, 0.0], dtype=torch.float64), 4 * U)
    on_simplex = torch.tensor([0.25, 0.5, 0.125, 0.125], dtype=torch.float64)
    assert torch.equal(project_onto_simplex(on_simplex), on_simplex)
    assert torch.equal(project_onto_simplex(torch.tensor([5.0, -1.0, 0.0], dtype=torch.float64)),
                       torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    assert torch.equal(project_onto_simplex(torch.tensor([3.0], dtype=torch.float64)), torch.ones(1, dtype=torch.float64))
    # Far beyond the simplex's scale: the largest entry's vertex, not zeros lost to cancellation.
    assert torch.equal(project_onto_simplex(torch.tensor([-3e40, -1e41, -2e40], dtype=torch.float64)),
                       torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    # A uniform shift: the projection of c·1 is 1/T whatever c.
    assert_within(project_onto_simplex(torch.full((5,), -7.0, dtype=torch.float64)), torch.full((5,), 0.2, dtype=torch.float64), 8 * 7 * U)


@pytest.mark.parametrize("seed", range(20))
def test_projection_is_the_closest_simplex_point(seed):
    # KKT of min |x - y|² on the simplex: x = max(y - θ, 0) with Σx = 1; checked against a bisection on θ.
    gen = torch.Generator().manual_seed(seed)
    T = 1 + seed % 9
    y = 3 * torch.randn(T, generator=gen, dtype=torch.float64)
    x = project_onto_simplex(y)
    low, high = float(y.min()) - 1, float(y.max())
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if float((y - mid).clamp_min(0).sum()) > 1 else (low, mid)
    M = float(y.abs().max())
    assert_within(x, (y - low).clamp_min(0), projection_rounding(T, M) + 4 * U * (M + 1), f"seed {seed}")  # + bisection
    assert (x >= 0).all() and abs(float(x.sum()) - 1) <= T * projection_rounding(T, M)


# ----- MoDo ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [2, 3, 5])
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("gamma,rho", [(0.1, 0.1), (0.5, 0.0), (2.0, 0.3)])
def test_modo_matches_torchjd_over_steps(T, seed, gamma, rho):
    Gs = inputs(T, 40, 6, seed)
    Ks = [G @ G.T for G in Gs]
    ours, peer = methods.create("modo", gamma=gamma, rho=rho), torchjd.MoDoWeighting(gamma=gamma, rho=rho)
    for step, K in enumerate(Ks):
        assert_within(ours.weights(K), peer(K), modo_bound(Ks[:step + 1], gamma, rho), f"step {step}")


@pytest.mark.parametrize("seed", range(3))
def test_modo_on_the_papers_two_batch_product(seed):
    # A = J_1 J_2ᵀ from two independent batches: not symmetric; weights(A) takes it as torchjd does.
    J1, J2 = inputs(4, 30, 2, seed)
    As = [J1 @ J2.T, J2 @ J1.T, J1 @ J1.T]
    assert not torch.equal(As[0], As[0].T)
    ours, peer = methods.create("modo"), torchjd.MoDoWeighting()
    for step, A in enumerate(As):
        assert_within(ours.weights(A), peer(A), modo_bound(As[:step + 1], 0.1, 0.1), f"step {step}")


def test_modo_hand_cases():
    # K = I from uniform: y = (1 - γ(1 + ρ))/T · 1 projects back to 1/T, at every step.
    method = methods.create("modo", gamma=0.3, rho=0.2)
    for _ in range(3):
        assert_within(method.weights(torch.eye(4, dtype=torch.float64)), torch.full((4,), 0.25, dtype=torch.float64), 16 * U)
    # K = diag(1, 0), γ = 0.5, ρ = 0: y = (0.25, 0.5), θ = -0.125 -> (0.375, 0.625); then
    # y = (0.1875, 0.625), θ = -0.09375 -> (0.28125, 0.71875) (all exact in binary).
    method = methods.create("modo", gamma=0.5, rho=0.0)
    K = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    assert torch.equal(method.weights(K), torch.tensor([0.375, 0.625], dtype=torch.float64))
    assert torch.equal(method.weights(K), torch.tensor([0.28125, 0.71875], dtype=torch.float64))
    # The update is w · G with w = λ, and MTLOptimizer's K = G Gᵀ.
    G = inputs(3, 20, 1)[0]
    assert_within(fastmtl.aggregate(G, "modo"), methods.create("modo").weights(G @ G.T) @ G,
                  weighted_sum_error_bound(G, torch.ones(3)) * 2 + 64 * U * float(G.abs().max()))


# ----- SDMGrad ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [2, 3, 5])
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("pref", [None, "given"])
def test_sdmgrad_matches_torchjd_over_steps(T, seed, pref):
    options = {"lr": 0.2, "momentum": 0.5, "n_iter": 3, "lambda_": 0.3}
    Gs = inputs(T, 40, 4, seed)
    Ks = [G @ G.T for G in Gs]
    w_tilde = torch.full((T,), 1 / T, dtype=torch.float64)
    if pref is not None:
        w_tilde = torch.linspace(1.0, 2.0, T, dtype=torch.float64)
        options["pref_vector"] = w_tilde.tolist()
    ours = methods.create("sdmgrad", **options)
    peer = torchjd.SDMGradWeighting(**{**options, "pref_vector": None if pref is None else w_tilde})
    for step, K in enumerate(Ks):
        bound = sdmgrad_bound(Ks[:step + 1], options["lr"], 0.5, 3, 0.3, w_tilde)
        assert bound < 1e-9  # the bound is informative here
        assert_within(ours.weights(K), peer(K), bound, f"step {step}")


@pytest.mark.parametrize("T", [2, 4])
@pytest.mark.parametrize("seed", range(3))
def test_sdmgrad_matches_torchjd_with_the_default_options(T, seed):
    Gs = inputs(T, 40, 4, seed)
    ours, peer = methods.create("sdmgrad"), torchjd.SDMGradWeighting()
    for step, G in enumerate(Gs):
        K = G @ G.T
        state = None if peer._w is None else peer._w.clone()
        spread = 0.0
        theirs = peer(K)
        for sign in (1, -1):  # torchjd from the same state, on K perturbed at its own rounding level
            probe = torchjd.SDMGradWeighting()
            if state is not None:
                probe._ensure_state(K)
                probe._w = state.clone()
            perturbed = K + sign * 8 * T * U * K.abs() * torch.linspace(-1, 1, T * T, dtype=torch.float64).view(T, T)
            spread = max(spread, float((probe((perturbed + perturbed.T) / 2) - theirs).abs().max()))
        assert_within(ours.weights(K), theirs, 8 * (spread + 8 * T * U), f"step {step}")


def test_sdmgrad_on_the_papers_two_batch_product():
    J1, J2 = inputs(3, 30, 2, seed=4)
    options = {"lr": 0.2, "momentum": 0.5, "n_iter": 3, "lambda_": 0.3}
    As = [J1 @ J2.T, J2 @ J1.T]
    ours, peer = methods.create("sdmgrad", **options), torchjd.SDMGradWeighting(**options)
    for step, A in enumerate(As):
        bound = sdmgrad_bound(As[:step + 1], 0.2, 0.5, 3, 0.3, torch.full((3,), 1 / 3, dtype=torch.float64))
        assert_within(ours.weights(A), peer(A), bound, f"step {step}")


def test_sdmgrad_hand_cases():
    # K = diag(1, 0): m = mean(1, 0) = 0.5, Â = c K with c = 1/(0.25 + 1e-8). One iteration, μ = 0,
    # λ = 0, lr = 0.1: v = Â w = (0.5 c, 0), y = (0.5 - 0.05 c, 0.5), θ = -0.025 c, w = (0.5 - 0.025 c, 0.5 + 0.025 c).
    K = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    c = 1 / (0.25 + 1e-8)
    w = methods.create("sdmgrad", lr=0.1, momentum=0.0, n_iter=1, lambda_=0.0).weights(K)
    assert_within(w, torch.tensor([0.5 - 0.025 * c, 0.5 + 0.025 * c], dtype=torch.float64), 32 * U)
    # λ = 1, w̃ = (1, 0): v = Â(w + w̃) = (1.5 c, 0), y = (0.5 - 0.15 c, 0.5), θ = -0.075 c; weights (w + w̃)/2.
    w = methods.create("sdmgrad", lr=0.1, momentum=0.0, n_iter=1, lambda_=1.0, pref_vector=[1, 0]).weights(K)
    inner = torch.tensor([0.5 - 0.075 * c, 0.5 + 0.075 * c], dtype=torch.float64)
    assert_within(w, (inner + torch.tensor([1.0, 0.0], dtype=torch.float64)) / 2, 32 * U)
    # Two iterations with momentum μ: v_2 = μ v_1 + Â (w_1 + λ w̃).
    method = methods.create("sdmgrad", lr=0.1, momentum=0.5, n_iter=2, lambda_=0.0)
    w1 = torch.tensor([0.5 - 0.025 * c, 0.5 + 0.025 * c], dtype=torch.float64)
    v2 = 0.5 * torch.tensor([0.5 * c, 0.0], dtype=torch.float64) + c * K @ w1
    y = w1 - 0.1 * v2
    theta = (y.sum() - 1) / 2
    assert_within(method.weights(K), y - theta, 64 * U)
    # K = 0: the gradient vanishes, the weights stay (w + λ w̃)/(1 + λ) = uniform.
    assert_within(methods.create("sdmgrad").weights(torch.zeros(3, 3, dtype=torch.float64)), torch.full((3,), 1 / 3, dtype=torch.float64),
                  8 * U)
    # Scale: the normalisation makes the weights independent of A's scale (up to the 1e-8).
    K = inputs(4, 30, 1, seed=3, scale=1.0)[0]
    K = K @ K.T
    a = methods.create("sdmgrad", lr=0.2, n_iter=3).weights(K)
    b = methods.create("sdmgrad", lr=0.2, n_iter=3).weights(64 * K)
    m2 = float(K.diagonal().sqrt().mean()) ** 2
    assert_within(a, b, sdmgrad_bound([K], 0.2, 0.5, 3, 0.3, torch.full((4,), 0.25, dtype=torch.float64)) + 1e3 * 1e-8 / m2)


# ----- CR-MOGM ---------------------------------------------------------------------------------------


def upgrad_bound(T, weights):
    kkt = 4 * (2 * T + 2) * U
    solve = 5 * T * (1 + REG) * (2 + REG) / REG * kkt
    return 2 * T * solve * float(weights.abs().max())


@pytest.mark.parametrize("T", [2, 3, 5])
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("base", ["upgrad", "mgda"])
def test_crmogm_matches_torchjd_over_steps(T, seed, alpha, base):
    Gs = inputs(T, 40, 5, seed, scale=1.0)
    ours = methods.create("crmogm", base=base, alpha=alpha)
    peer = torchjd.CRMOGMWeighting(torchjd.UPGradWeighting() if base == "upgrad" else torchjd.MGDAWeighting(),
                                   alpha=alpha)
    worst_base = 0.0
    for step, G in enumerate(Gs):
        K = G @ G.T
        theirs = peer(K)
        estimate = torchjd.UPGradWeighting()(K) if base == "upgrad" else torchjd.MGDAWeighting()(K)
        worst_base = max(worst_base, upgrad_bound(T, estimate) if base == "upgrad"
                         else 1e-10 * float(estimate.abs().max()))
        assert_within(ours.weights(K), theirs, worst_base + 4 * (step + 1) * U * float(theirs.abs().max()),
                      f"step {step}")


def test_crmogm_smoothing_is_exact_on_a_fixed_base():
    # A base whose weights we know: the EMA of torchjd and ours on the same λ̂ (MGDA on diagonal K,
    # T = 2: one exact line search gives w ∝ (1/K_11, 1/K_22)).
    K1 = torch.diag(torch.tensor([1.0, 4.0], dtype=torch.float64))
    K2 = torch.diag(torch.tensor([4.0, 1.0], dtype=torch.float64))
    exact = {0: torch.tensor([0.8, 0.2], dtype=torch.float64), 1: torch.tensor([0.2, 0.8], dtype=torch.float64)}
    method = methods.create("crmogm", base="mgda", alpha=0.5, base_options={"epsilon": 1e-12})
    assert_within(method.weights(K1), exact[0], 8 * U)  # λ_0 = λ̂_1
    assert_within(method.weights(K2), (exact[0] + exact[1]) / 2, 8 * U)
    method = methods.create("crmogm", base="mgda", alpha=0.5, initial_weights=[1, 0], base_options={"epsilon": 1e-12})
    assert_within(method.weights(K1), torch.tensor([0.9, 0.1], dtype=torch.float64), 8 * U)
    # α = 1 freezes λ at λ_0; α = 0 is the base itself.
    frozen = methods.create("crmogm", base="upgrad", alpha=1.0, initial_weights=[0.25, 0.75])
    for K in (K1, K2):
        assert torch.equal(frozen.weights(K), torch.tensor([0.25, 0.75], dtype=torch.float64))
    plain = methods.create("crmogm", base="upgrad", alpha=0.0)
    for K in (K1, K2):
        assert torch.equal(plain.weights(K), methods.create("upgrad").weights(K))
    # A stateful base keeps its own state inside (GradVac), and state_dict nests it.
    nested = methods.create("crmogm", base="gradvac", base_options={"shuffle": False})
    nested.weights(K1)
    assert nested.state_dict()["base_state"]["targets"] is not None


@pytest.mark.parametrize("impl", ["torch", "auto"])
def test_crmogm_runs_the_bases_op(impl, monkeypatch):
    if impl == "auto" and not fastmtl.HAS_EXT:
        pytest.skip("fastmtl._C not built")
    calls = []
    original = methods.method_class("mgda").compiled_solve
    monkeypatch.setattr(methods.method_class("mgda"), "compiled_solve",
                        lambda self, K: calls.append(1) or original(self, K))
    K = torch.diag(torch.tensor([1.0, 4.0], dtype=torch.float64))
    methods.create("crmogm", base="mgda", impl=impl).weights(K)
    assert len(calls) == (1 if impl == "auto" else 0)


# ----- ExcessMTL -------------------------------------------------------------------------------------


def excess_oracle(Gs, eta, n_warmup):
    """The paper's steps as written (Eq. 6-9, Appendix C.1), in float64 on the CPU, one step at a
    time: returns the directions and each step's ratio r (0 during warm-up)."""
    T, P = Gs[0].shape
    S = torch.zeros(T, P, dtype=torch.float64)
    w = torch.full((T,), 1 / T, dtype=torch.float64)
    warm, baseline, out, ratios = torch.zeros(T, dtype=torch.float64), None, [], []
    for k, G in enumerate(Gs):
        S = S + G * G
        excess = (G * G / torch.sqrt(S + 1e-7)).sum(1)
        if k < n_warmup:
            warm = warm + excess
            out.append(w @ G), ratios.append(torch.zeros(T, dtype=torch.float64))
            continue
        if baseline is None:
            baseline = warm / n_warmup if n_warmup else excess
            r = excess / (baseline + 1e-7) if n_warmup else excess
        else:
            r = excess / (baseline + 1e-7)
        w = w * torch.exp(eta * (r - r.max()))
        w = w / w.sum()
        out.append(w @ G), ratios.append(r)
    return out, ratios


def excess_bound(Gs, ratios, eta, u=U):
    P = Gs[0].shape[1]
    E = sum(eta * float(r.abs().max()) * 2 * (P + 2 * (k + 1) + 8) * u + 8 * (k + 1) * u
            for k, r in enumerate(ratios))
    return 2 * E


@pytest.mark.parametrize("T,P", [(2, 5), (3, 40), (5, 100)])
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("eta,n_warmup", [(1.0, 0), (0.1, 0), (0.5, 2), (0.05, 3)])
def test_excess_mtl_matches_torchjd_and_the_paper_over_steps(T, P, seed, eta, n_warmup):
    Gs = inputs(T, P, 6, seed, scale=0.3)
    ours = methods.create("excess_mtl", robust_step_size=eta, n_warmup_steps=n_warmup)
    peer = torchjd.ExcessMTL(robust_step_size=eta, n_warmup_steps=n_warmup)
    expected, ratios = excess_oracle(Gs, eta, n_warmup)
    for step, G in enumerate(Gs):
        d = ours(G)
        size = float(G.abs().max())
        bound = (3 * excess_bound(Gs, ratios[:step + 1], eta) + 4 * T * U) * size
        assert_within(d, peer(G), bound, f"torchjd, step {step}")
        assert_within(d, expected[step], bound, f"oracle, step {step}")


def test_excess_mtl_hand_cases():
    # T = 2, P = 1, G = (1, 2)ᵀ: Ê = (1/√(1 + 1e-7), 4/√(4 + 1e-7)), used undivided at the first step:
    # w = softmax(log(1/2) + Ê); the same G again: Ê' = (1/√(2 + 1e-7), 4/√(8 + 1e-7)), r = Ê'/(Ê + 1e-7).
    G = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    method = methods.create("excess_mtl")
    e1 = torch.tensor([1 / math.sqrt(1 + 1e-7), 4 / math.sqrt(4 + 1e-7)], dtype=torch.float64)
    w1 = torch.softmax(e1, 0)
    assert_within(method(G), w1 @ G, 16 * U * 2)
    e2 = torch.tensor([1 / math.sqrt(2 + 1e-7), 4 / math.sqrt(8 + 1e-7)], dtype=torch.float64)
    w2 = torch.softmax(torch.log(w1) + e2 / (e1 + 1e-7), 0)
    assert_within(method(G), w2 @ G, 64 * U * 2)
    assert abs(float(w2[0] - w1[0])) < 1e-6  # r ≈ 1/√2 for both tasks: the weights barely move
    # Warm-up: uniform for n steps, then the baseline is the warm-up mean.
    method = methods.create("excess_mtl", n_warmup_steps=2, robust_step_size=0.5)
    for _ in range(2):
        assert torch.equal(method(G), torch.tensor([1.5], dtype=torch.float64))
    e = [torch.tensor([1 / math.sqrt(k + 1e-7), 4 / math.sqrt(4 * k + 1e-7)], dtype=torch.float64) for k in (1, 2, 3)]
    baseline = (e[0] + e[1]) / 2
    w3 = torch.softmax(torch.log(torch.full((2,), 0.5, dtype=torch.float64)) + 0.5 * e[2] / (baseline + 1e-7), 0)
    assert_within(method(G), w3 @ G, 64 * U * 2)
    assert int(method.state_dict()["count"]) == 3


def test_excess_mtl_refuses_shards_and_feature_mode():
    G = inputs(2, 10, 1)[0]
    method = methods.create("excess_mtl")
    for offset in (0, 5):
        with pytest.raises(ValueError, match="excess_mtl.*column"):
            method(G, column_offset=offset)
    with pytest.raises(ValueError, match="excess_mtl.*feature"):
        method(G, signs=torch.ones(10, dtype=torch.float64), batch=2)
    assert method.state_dict()["root"] is None  # nothing ran


def test_excess_mtl_float32_overflowing_squares_stay_finite():
    # |g| ~ 2e19: g² overflows float32, the hypot-accumulated root does not.
    G = (2e19 * inputs(3, 50, 1, seed=2, scale=1.0)[0]).float()
    method = methods.create("excess_mtl")
    d = method(G)
    assert d.dtype == torch.float32 and torch.isfinite(d).all()
    assert torch.isfinite(method.state_dict()["root"]).all()


# ----- all four: options, NaN, T = 1, float32, state, fresh ------------------------------------------

CASES = {
    "modo": {"gamma": 0.3},
    "sdmgrad": {"lr": 0.5, "n_iter": 4},
    "crmogm": {"base": "upgrad", "alpha": 0.7},
    "excess_mtl": {"robust_step_size": 0.5, "n_warmup_steps": 1},
}


def run_steps(method, Gs):
    return [method(G) for G in Gs]


@pytest.mark.parametrize("name,options,error", [
    ("modo", {"gamma": 0.0}, ValueError), ("modo", {"gamma": -1}, ValueError), ("modo", {"rho": -0.1}, ValueError),
    ("modo", {"gamma": float("nan")}, ValueError), ("modo", {"gamma": "a"}, TypeError),
    ("sdmgrad", {"lr": 0}, ValueError), ("sdmgrad", {"momentum": 1.0}, ValueError),
    ("sdmgrad", {"momentum": -0.1}, ValueError), ("sdmgrad", {"n_iter": 0}, ValueError),
    ("sdmgrad", {"n_iter": 2.5}, TypeError), ("sdmgrad", {"lambda_": -1}, ValueError),
    ("sdmgrad", {"pref_vector": []}, ValueError), ("sdmgrad", {"pref_vector": [[1.0]]}, TypeError),
    ("crmogm", {"base": "graddrop"}, ValueError), ("crmogm", {"base": "nope"}, ValueError),
    ("crmogm", {"base": "imtl", "base_options": {"n_tasks": 2}}, ValueError),  # reads the losses, learns s
    ("crmogm", {"base": "cosreg"}, ValueError), ("crmogm", {"base": methods.create("mgda")}, TypeError),
    ("crmogm", {"base": "mgda", "alpha": 1.5}, ValueError), ("crmogm", {"base": "mgda", "alpha": -0.1}, ValueError),
    ("crmogm", {"base": "mgda", "base_options": [1]}, TypeError),
    ("crmogm", {"base": "mgda", "base_options": {"max_iters": 0}}, ValueError),
    ("crmogm", {"base": "mgda", "initial_weights": [1.0, float("inf")]}, ValueError),
    ("excess_mtl", {"robust_step_size": 0}, ValueError), ("excess_mtl", {"n_warmup_steps": -1}, ValueError),
    ("excess_mtl", {"n_warmup_steps": 1.5}, TypeError), ("modo", {"impl": "fast"}, ValueError),
    ("excess_mtl", {"impl": "fast"}, ValueError),
])
def test_option_errors(name, options, error):
    with pytest.raises(error, match=name):
        methods.create(name, **options)


def test_length_options_are_checked_against_T():
    with pytest.raises(TypeError, match="base"):
        methods.create("crmogm")  # no default base, as torchjd's required weighting
    G = inputs(3, 10, 1)[0]
    with pytest.raises(ValueError, match="sdmgrad: pref_vector"):
        fastmtl.aggregate(G, "sdmgrad", pref_vector=[1, 2])
    with pytest.raises(ValueError, match="crmogm: initial_weights"):
        fastmtl.aggregate(G, "crmogm", base="mgda", initial_weights=[1, 2])
    with pytest.raises(ValueError, match="modo: K"):
        methods.create("modo").weights(torch.ones(2, 3))


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_non_finite_step_gives_nan_and_leaves_the_state(name):
    Gs = inputs(3, 30, 5, seed=1, scale=1.0)
    method, reference = methods.create(name, **CASES[name]), methods.create(name, **CASES[name])
    for G in Gs[:2]:
        method(G), reference(G)
    before = method.state_dict()
    for bad in (float("nan"), float("inf")):
        G = Gs[2].clone()
        G[1, 3] = bad
        d = method(G)
        assert torch.isnan(d).all(), name
        assert_same_state(method.state_dict(), before, name)
    for G in Gs[2:]:
        assert torch.equal(method(G), reference(G)), name  # as if the bad steps never happened


def assert_same_state(a, b, what):
    assert set(a) == set(b), what
    for key in a:
        if isinstance(a[key], dict):
            assert_same_state(a[key], b[key], what)
        elif isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), f"{what}: {key}"
        else:
            assert a[key] == b[key], f"{what}: {key}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_first_step_that_is_not_finite_leaves_a_fresh_start(name):
    Gs = inputs(2, 20, 3, seed=5, scale=1.0)
    method, reference = methods.create(name, **CASES[name]), methods.create(name, **CASES[name])
    bad = Gs[0].clone()
    bad[0, 0] = float("nan")
    assert torch.isnan(method(bad)).all()
    for G in Gs:
        assert torch.equal(method(G), reference(G)), name


@pytest.mark.parametrize("name", sorted(CASES))
def test_one_task_gives_its_gradient(name):
    # The simplex of one task is {1}: MoDo's and SDMGrad's w = 1 (and (1 + λ)/(1 + λ)), UPGrad's 1,
    # ExcessMTL's softmax of one logit.
    method = methods.create(name, **CASES[name])
    for G in inputs(1, 25, 3, seed=2, scale=1.0):
        assert_within(method(G), G[0], 8 * U * G[0].abs(), name)


@pytest.mark.parametrize("name", ["modo", "sdmgrad", "crmogm"])
def test_float32_input_gram_methods(name):
    # The weights come from the float64 K of the float32 G (their own computation, tested above in
    # float64); the update is w · G in float32 within the combination bound of the float64 one.
    Gs = [G.float() for G in inputs(4, 60, 3, seed=3, scale=1.0)]
    method, twin = methods.create(name, **CASES[name]), methods.create(name, **CASES[name])
    for G in Gs:
        d = method(G)
        w = twin.weights(twin.gram(G))
        assert d.dtype == torch.float32 and w.dtype == torch.float64
        assert_within(d, w @ G.double(), weighted_sum_error_bound(G, w), name)
    assert all(v.dtype == torch.float64 for v in flat_tensors(method.state_dict()) if v.is_floating_point())


def flat_tensors(state):
    for value in state.values():
        if isinstance(value, dict):
            yield from flat_tensors(value)
        elif isinstance(value, torch.Tensor):
            yield value


def test_float32_input_excess_mtl():
    # Against the float64 run on the same (float32) values: the bound of the docstring with u of float32.
    Gs = [G.float() for G in inputs(3, 50, 5, seed=6, scale=0.3)]
    method = methods.create("excess_mtl", robust_step_size=0.5)
    _, ratios = excess_oracle([G.double() for G in Gs], 0.5, 0)
    reference = methods.create("excess_mtl", robust_step_size=0.5)
    u32 = UNIT_ROUNDOFF[torch.float32]
    for step, G in enumerate(Gs):
        d = method(G)
        assert d.dtype == torch.float32
        expected = reference(G.double())
        bound = (3 * excess_bound(Gs, ratios[:step + 1], 0.5, u32) + 4 * 3 * u32) * float(G.abs().max())
        assert_within(d, expected, bound, f"step {step}")
    assert method.state_dict()["root"].dtype == torch.float32


@pytest.mark.parametrize("name", sorted(CASES))
def test_state_round_trip_continues_identically(name):
    Gs = inputs(3, 30, 6, seed=7, scale=1.0)
    method, uninterrupted = methods.create(name, **CASES[name]), methods.create(name, **CASES[name])
    for G in Gs[:3]:
        method(G), uninterrupted(G)
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    resumed = method.fresh()
    assert resumed.options == method.options
    assert_same_state(resumed.state_dict(), methods.create(name, **CASES[name]).state_dict(), name)  # empty
    resumed.load_state_dict(torch.load(buffer))
    for G in Gs[3:]:
        assert torch.equal(resumed(G), uninterrupted(G)), name
    # The loaded tensors are copies: the saved state is not advanced by the resumed method.
    saved = method.state_dict()
    resumed(Gs[0])
    assert_same_state(method.state_dict(), saved, name)


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_states_are_refused(name):
    method = methods.create(name, **CASES[name])
    with pytest.raises(ValueError, match=name):
        method.load_state_dict({"nope": None})
    state = method.state_dict()
    key = next(k for k in state if k not in ("base", "base_state", "started", "count"))
    broken = dict(state, **{key: torch.ones(2, 2, 2)})
    with pytest.raises(ValueError, match=name):
        method.load_state_dict(broken)
    if name == "crmogm":
        with pytest.raises(ValueError, match="base"):
            method.load_state_dict(dict(state, base="mgda"))


def test_a_change_of_T_starts_over():
    for name in sorted(CASES):
        method = methods.create(name, **CASES[name])
        method(inputs(3, 20, 1)[0])
        G = inputs(2, 20, 1, seed=4)[0]
        assert torch.equal(method(G), methods.create(name, **CASES[name])(G)), name


# ----- MTLOptimizer ----------------------------------------------------------------------------------


def batch(seed):
    return tiny_models.batch(seed, 16)


@pytest.mark.parametrize("name", sorted(CASES))
def test_through_mtl_optimizer(name):
    # Three steps of MTLOptimizer against per-task autograd gradients, the same method object called
    # on G, and SGD; then a checkpoint of the optimizer continues as the uninterrupted run.
    net, reference = tiny_models.model(), tiny_models.model()
    opt = fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), name, shared=net.encoder.parameters(),
                               **CASES[name])
    method = methods.create(name, **CASES[name])
    for step in range(3):
        x, y = batch(step)
        opt.zero_grad()
        opt.backward(net.losses(x, y))
        opt.step()
        losses = reference.losses(x, y)
        d = method(tiny_models.task_gradients(losses, list(reference.encoder.parameters())))
        tiny_models.sgd_step(reference, d, torch.autograd.grad(sum(losses), list(reference.heads.parameters())), 0.1)
        for a, b in zip(net.parameters(), reference.parameters()):
            assert torch.allclose(a, b, rtol=0, atol=1e-12), (name, step)
    state = opt.state_dict()
    twin = tiny_models.model()
    twin.load_state_dict(net.state_dict())
    resumed = fastmtl.MTLOptimizer(torch.optim.SGD(twin.parameters(), lr=0.1), name,
                                   shared=twin.encoder.parameters(), **CASES[name])
    resumed.load_state_dict(state)
    for step in range(3, 5):
        for o, n in ((opt, net), (resumed, twin)):
            x, y = batch(step)
            o.zero_grad()
            o.backward(n.losses(x, y))
            o.step()
    for a, b in zip(net.parameters(), twin.parameters()):
        assert torch.equal(a, b), name
