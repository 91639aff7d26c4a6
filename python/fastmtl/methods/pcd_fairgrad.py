"""PCD and FairGrad, two Gram-space weightings of torchjd 0.18, written from their papers and
checked against torchjd on the same inputs (tests/test_pcd_fairgrad.py).

Each has one compiled op for its T × T solve (``torch.ops.fastmtl.pcd_weights``,
``fairgrad_weights``; csrc/include/fastmtl/pcd_math.h, fairgrad_math.h): one call on the CPU or
one kernel launch on a GPU, with no host round-trip. ``impl="torch"`` (or no extension) runs
``pcd_weights`` / ``fairgrad_weights`` below, the same steps in masked torch ops, a fixed number
of them (slower, but no host synchronisation on a GPU either).
"""

from __future__ import annotations

import torch

from fastmtl.methods import _options
from fastmtl.methods._state import check_keys, on_device
from fastmtl.methods.base import GramWeighting, register
from fastmtl.methods.peers_torchjd import _vector_option

# PCD's tolerances, torchjd 0.18's (csrc/include/fastmtl/pcd_math.h explains each).
PCD_TOL = 1e-9  # a constraint violated by <= PCD_TOL * max_i K~_ii holds
PCD_DEPENDENCE_TOL = 1e-9  # floor of the dependence test |z|² <= tol S_pp (raised to the precision)


def pcd_precision(dtype: torch.dtype) -> float:
    """Relative precision of a Gram matrix accumulated in ``dtype``: 10 eps, as torchjd."""
    return 10.0 * torch.finfo(dtype).eps


@register
class PCD(GramWeighting):
    """PCD, Priority-Constrained Descent (Varam & AlHajri 2026, "Not All Objectives Are Born Equal:
    Priority-Constrained Descent for Hierarchical Multi-Objective Optimization", TMLR,
    arXiv:2606.29521). Task 0
    (the first row of G) is the primary objective; with the normalised gradients g̃_i = s_i g_i,
    s_i = 1/√(v̂_i + eps), v̂_i the bias-corrected EMA (decay ``beta``) of |g_i|² over the calls:

        d̃ = argmin_d ½|d - g̃_0|²  s.t.  g̃_j·d >= τ_j |g̃_j|²  (j >= 1),    d = d̃ |g_0| / |d̃|.

    The QP is solved exactly in Gram space by the dual active-set method of Goldfarb & Idnani
    (1983) with torchjd's tolerances (constraint 1e-9 relative to max K̃_ii; dependence
    max(1e-9, precision); at most 10 T add/drop steps); see csrc/include/fastmtl/pcd_math.h.
    Special cases, as torchjd: g_0 = 0 gives d = 0; infeasible constraints (T >= 3, e.g. two
    anti-parallel secondaries with τ > 0) give d = g_0 (weights [1, 0, ..., 0]); d̃ = 0 up to the
    rounding of K, |d̃|² <= precision (Σ|w_i||g̃_i|)², gives d = 0.

    ``tau``: a float in [0, 1] for every secondary task, or a vector of T - 1 values. ``beta`` in
    [0, 1), ``eps`` >= 0. Defaults as torchjd (0.02, 0.999, 1e-8).

    Scale: |d| = |g_0| (torchjd's). Not permutation-invariant (task 0 is special). d(cG) = c d(G)
    when the EMA has seen the same scale (e.g. a fresh method) and eps = 0; eps > 0 makes it
    approximate.

    State: the EMA of the squared norms [T] and the step count (0-d int64), device tensors
    updated by torch ops (no host sync), restarted from zero when T changes (as torchjd), kept
    unchanged by a step whose K is not finite (then the weights are NaN). Each step updates the
    EMA first, then solves; a zero g_0 still counts as a step.

    ``precision`` = 10 eps of the dtype the Gram matrix was accumulated in, as torchjd's 10 eps of
    its Gramian's dtype: ``gram(G)`` records G's accumulation dtype (float32 for half, bfloat16,
    float32) and the next ``weights(K)`` uses it (K itself may be float64 there, e.g. on CUDA);
    a direct ``weights(K)`` call uses K's dtype.

    Difference from torchjd: the active set is walked in index order (only exact ties of the
    drop ratios can tell), and its system is solved by Cholesky rather than LU; both are exact
    active-set solves of the same QP.

    The torch path (``pcd_weights``) runs the active-set steps as masked tensor operations, all
    10 T of them on a GPU (no host synchronisation; a finished solve makes the rest no-ops); on
    the CPU it stops once finished (reading a CPU flag costs no sync).
    """

    name = "pcd"
    scale_linear = False  # only with eps = 0 and a state that saw the same scale (see above)

    def __init__(self, *, tau=0.02, beta: float = 0.999, eps: float = 1e-8, impl: str = "auto"):
        if isinstance(tau, (list, tuple, torch.Tensor)) or hasattr(tau, "ndim"):
            tau = _vector_option(self.name, "tau", tau)
            for i, value in enumerate(tau):
                _options.real(self.name, f"tau[{i}]", value, low=0.0, high=1.0)
        else:
            tau = _options.real(self.name, "tau", tau, low=0.0, high=1.0)
        beta = _options.real(self.name, "beta", beta, low=0.0, high=1.0)
        if beta == 1.0:
            raise ValueError(f"{self.name}: beta must be < 1, got {beta!r}")
        self._set_options(tau=tau, beta=beta, eps=_options.real(self.name, "eps", eps, low=0.0), impl=impl)
        self.sq_norm_ema: torch.Tensor | None = None
        self.n_steps: torch.Tensor | None = None
        self._taus: dict = {}  # device -> the tau vector there

    # ----- the solve ---------------------------------------------------------------------------

    def weights(self, K: torch.Tensor) -> torch.Tensor:
        self._precision = pcd_precision(self.precision_dtype(K))
        return super().weights(K)

    def _step_inputs(self, K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The scales s of this step, the taus, and the state after this step (EMA, count)."""
        T = K.shape[0]
        ema, count = self.sq_norm_ema, self.n_steps
        if ema is None or ema.shape != (T,):  # first step, or T changed: start over (as torchjd)
            ema = torch.zeros(T, dtype=torch.float64, device=K.device)
            count = torch.zeros((), dtype=torch.int64, device=K.device)
        ema, count = ema.to(device=K.device, dtype=torch.float64), count.to(K.device)
        beta, eps = self.options["beta"], self.options["eps"]
        new_ema = beta * ema + (1.0 - beta) * K.diagonal()
        new_count = count + 1
        debiased = new_ema / (1.0 - torch.pow(beta, new_count.double()))
        denominators = (debiased + eps).sqrt()
        # A zero average: the gradient has always been zero, its scale does not matter (0, as torchjd).
        scales = torch.where(denominators > 0, 1.0 / torch.where(denominators > 0, denominators, 1.0), 0.0)
        return scales, self._tau_vector(T, K.device), new_ema, new_count

    def _tau_vector(self, T: int, device: torch.device) -> torch.Tensor:
        tau = self.options["tau"]
        if isinstance(tau, tuple):
            if len(tau) != T - 1:
                raise ValueError(f"{self.name}: tau has {len(tau)} values but G has {T - 1} secondary tasks "
                                 f"(one value per task after the first)")
            return on_device(self._taus, tau, device)
        return torch.full((T - 1,), tau, dtype=torch.float64, device=device)

    def _keep_state(self, finite, previous_ema, previous_count, new_ema, new_count) -> None:
        if previous_ema is None or previous_ema.shape != new_ema.shape:
            previous_ema, previous_count = torch.zeros_like(new_ema), torch.zeros_like(new_count)
        previous_ema, previous_count = previous_ema.to(new_ema), previous_count.to(new_count.device)
        self.sq_norm_ema = torch.where(finite, new_ema, previous_ema)
        self.n_steps = torch.where(finite, new_count, previous_count)

    def _dependence_tol(self) -> float:
        return max(PCD_DEPENDENCE_TOL, self._precision)

    def solve(self, K: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
        previous = self.sq_norm_ema, self.n_steps
        scales, taus, new_ema, new_count = self._step_inputs(K)
        w = pcd_weights(K, scales, taus, PCD_TOL, self._dependence_tol(), self._precision)
        self._keep_state(finite, *previous, new_ema, new_count)
        return w

    def compiled_solve(self, K: torch.Tensor) -> torch.Tensor:  # csrc/include/fastmtl/pcd_math.h
        previous = self.sq_norm_ema, self.n_steps
        scales, taus, new_ema, new_count = self._step_inputs(K)
        w = torch.ops.fastmtl.pcd_weights(K, scales, taus, PCD_TOL, self._dependence_tol(), self._precision)
        self._keep_state(torch.isfinite(K).all(), *previous, new_ema, new_count)
        return w

    # ----- state -------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"sq_norm_ema": None if self.sq_norm_ema is None else self.sq_norm_ema.clone(),
                "n_steps": None if self.n_steps is None else self.n_steps.clone()}

    def load_state_dict(self, state: dict) -> None:
        check_keys(self.name, state, {"sq_norm_ema", "n_steps"})
        ema, count = state["sq_norm_ema"], state["n_steps"]
        if (ema is None) != (count is None):
            raise ValueError("pcd: sq_norm_ema and n_steps must both be None or both be tensors")
        if ema is not None:
            if not isinstance(ema, torch.Tensor) or ema.dim() != 1 or not ema.is_floating_point():
                raise ValueError(f"pcd: sq_norm_ema must be a floating-point [T] tensor, got {getattr(ema, 'shape', ema)!r}")
            if not isinstance(count, torch.Tensor) or count.dim() != 0:
                raise ValueError(f"pcd: n_steps must be a 0-d tensor, got {getattr(count, 'shape', count)!r}")
            tau = self.options["tau"]
            if isinstance(tau, tuple) and ema.shape[0] != len(tau) + 1:
                raise ValueError(f"pcd: sq_norm_ema has {ema.shape[0]} tasks but tau has {len(tau)} values "
                                 f"(T - 1 = {ema.shape[0] - 1} expected)")
            ema, count = ema.detach().clone().double(), count.detach().clone().long()
        self.sq_norm_ema, self.n_steps = ema, count


def pcd_weights(K: torch.Tensor, scales: torch.Tensor, taus: torch.Tensor, tol: float, dependence_tol: float,
                precision: float) -> torch.Tensor:
    """PCD's weights from a finite float64 K (csrc/include/fastmtl/pcd_math.h), in torch ops:
    the active-set loop as masked updates of (μ, active set, the constraint being added), 10 T
    steps, no host synchronisation on a GPU."""
    T = K.shape[0]
    Kn = K * torch.outer(scales, scales)
    w = _pcd_qp(Kn, taus, tol, dependence_tol)
    squared_norm = w @ Kn @ w
    magnitude = (w.abs() @ Kn.diagonal().clamp_min(0).sqrt()) ** 2
    keep = (K[0, 0] > 0) & (squared_norm > precision * magnitude)
    factor = (K[0, 0] / torch.where(keep, squared_norm, 1.0)).clamp_min(0).sqrt()
    return torch.where(keep, w * scales * factor, torch.zeros(T, dtype=K.dtype, device=K.device))


def _pcd_qp(Kn: torch.Tensor, taus: torch.Tensor, tol: float, dependence_tol: float) -> torch.Tensor:
    """w = [1, μ] of PCD's QP on the normalised Gram matrix (see pcd_math.h)."""
    T = Kn.shape[0]
    first = torch.zeros(T, dtype=Kn.dtype, device=Kn.device)
    first[0] = 1.0
    n = T - 1
    if n == 0:
        return first
    S = Kn[1:, 1:]
    b = taus * S.diagonal() - Kn[1:, 0]
    atol = tol * Kn.diagonal().max().clamp_min(torch.finfo(Kn.dtype).tiny)
    indices = torch.arange(n, device=Kn.device)
    identity = torch.eye(n, dtype=Kn.dtype, device=Kn.device)
    inf = torch.tensor(float("inf"), dtype=Kn.dtype, device=Kn.device)
    false = torch.zeros((), dtype=torch.bool, device=Kn.device)
    mu = torch.zeros(n, dtype=Kn.dtype, device=Kn.device)
    active = torch.zeros(n, dtype=torch.bool, device=Kn.device)
    adding, done, infeasible = false, false, false
    p = torch.zeros((), dtype=torch.int64, device=Kn.device)
    slack_p = torch.zeros((), dtype=Kn.dtype, device=Kn.device)
    for _ in range(10 * T):
        # Pick the most violated constraint when none is being added (or finish: all hold).
        slacks = torch.where(active, 0.0, S @ mu - b)
        q, smallest = slacks.argmin(), slacks.min()  # (a 0-d tensor index would be read on the host)
        choose = ~adding & ~done
        done = done | (choose & (smallest >= -atol))
        p = torch.where(choose, q, p)
        slack_p = torch.where(choose, smallest, slack_p)
        adding = adding | choose
        run = ~done
        is_p = indices == p
        column_p = (S * is_p).sum(1)  # S[:, p] and S[p, :], gathered without a host index
        row_p = (S * is_p[:, None]).sum(0)
        # r on the active set: S_AA r = S_Ap (identity rows elsewhere, so r = 0 there).
        both = active[:, None] & active[None, :]
        factor, info = torch.linalg.cholesky_ex(torch.where(both, S, identity))
        r = torch.cholesky_solve(torch.where(active, column_p, 0.0)[:, None], factor)[:, 0]
        r = torch.where(active, r, 0.0)
        failed = run & (info != 0)  # S_AA not numerically positive definite: keep μ, stop
        done = done | failed
        run = run & ~failed
        S_pp = (column_p * is_p).sum()
        z_squared = S_pp - row_p @ r
        positive = active & (r > 0)
        ratios = torch.where(positive, mu / torch.where(positive, r, 1.0), inf)
        k, partial = ratios.argmin(), ratios.min()
        full = torch.where(z_squared > dependence_tol * S_pp, -slack_p / torch.where(z_squared > 0, z_squared, 1.0), inf)
        take_full = full <= partial
        step = torch.where(take_full, full, partial)
        stuck = run & torch.isinf(step)  # no bounded dual step: infeasible constraints
        infeasible = infeasible | stuck
        done = done | stuck
        run = run & ~stuck
        finite_step = torch.where(run, step, 0.0)
        new_mu = mu - finite_step * r + finite_step * is_p
        drop = ~take_full & (indices == k)
        new_mu = torch.where(drop, 0.0, new_mu)
        new_active = (active | (is_p & take_full)) & ~drop
        mu = torch.where(run, new_mu, mu)
        active = torch.where(run, new_active, active)
        adding = torch.where(run, ~take_full, adding)
        slack_p = torch.where(run & ~take_full, row_p @ mu - (b * is_p).sum(), slack_p)
        if Kn.device.type == "cpu" and bool(done):  # a CPU flag: no device to wait for
            break
    w = torch.cat([first[:1], mu.clamp_min(0)])
    return torch.where(infeasible, first, w)


# ----- FairGrad ------------------------------------------------------------------------------------


@register
class FairGrad(GramWeighting):
    """FairGrad (Ban & Ji 2024, "Fair Resource Allocation in Multi-Task Learning", ICML, Eq. 4):
    α-fair weights x > 0 with K x = x^(-1/α) element-wise (each task's utility rate (Kx)_i =
    g_i·d = x_i^(-1/α)), d = Σ x_i g_i. ``alpha`` >= 0 is required; α = 0 is linear
    scalarisation, x = 1/T (the paper's Section 3, torchjd's convention).

    Solved exactly (to rounding) by damped Newton with an Armijo line search on the strictly
    convex φ(x) = ½ xᵀKx - Σ h(x_i), h' = x^(-1/α) (csrc/include/fastmtl/fairgrad_math.h), at
    most ``max_iters`` steps, stopping after the full Newton step once the Newton decrement is
    <= 2⁻³⁰ (Newton's quadratic convergence makes the next step rounding noise). torchjd solves
    the same equation with scipy's least_squares (its default tolerances, max_nfev =
    ``max_iters`` or 100 T): the results agree to the accuracy of its stopping rule.

    No root: a zero gradient (K_ii = 0) gets x_i = 0 (its equation 0 = x_i^(-1/α) has none; its
    g_i contributes nothing anyway) and the others are solved without it; when 0 is a
    non-negative combination of the non-zero gradients (e.g. g and -g) there is no root at all,
    and x is the iterate after ``max_iters`` steps, growing along the null direction (which adds
    nothing to d). torchjd returns where scipy stops in both cases.

    Scale: as the paper and torchjd (x itself, not normalised). Permutation-invariant. Not
    scale-linear: d(cG) = c^((1-α)/(1+α)) d(G) (α = 1: the same d, as Nash-MTL). T = 1: x =
    |g|^(-2α/(1+α)), i.e. g/|g| for α = 1. No state.

    The torch path (``fairgrad_weights``) runs the same steps in torch ops, the line search as
    one batched evaluation of all 60 step lengths; ``max_iters`` steps on a GPU (no host
    synchronisation; a finished solve makes the rest no-ops), stopping when finished on the CPU.
    """

    name = "fairgrad"
    scale_linear = False

    def __init__(self, *, alpha: float, max_iters: int = 100, impl: str = "auto"):
        self._set_options(alpha=_options.real(self.name, "alpha", alpha, low=0.0),
                          max_iters=_options.integer(self.name, "max_iters", max_iters), impl=impl)

    def solve(self, K: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
        return fairgrad_weights(K, self.options["alpha"], self.options["max_iters"])

    def compiled_solve(self, K: torch.Tensor) -> torch.Tensor:  # csrc/include/fastmtl/fairgrad_math.h
        return torch.ops.fastmtl.fairgrad_weights(K, self.options["alpha"], self.options["max_iters"])


FAIRGRAD_CONVERGED_DECREMENT = 2.0**-30
_LINE_SEARCH_STEPS = 60


def fairgrad_weights(K: torch.Tensor, alpha: float, max_iters: int) -> torch.Tensor:
    """FairGrad's x from a finite float64 K, in torch ops (the steps of fairgrad_math.h)."""
    T = K.shape[0]
    if alpha == 0:
        return torch.full((T,), 1.0 / T, dtype=K.dtype, device=K.device)
    p = 1.0 / alpha
    diagonal = K.diagonal()
    c = diagonal.max()
    live = diagonal > 0  # zero gradients are frozen at x = 1, then given 0
    any_live = c > 0
    Kn = torch.where(live[:, None] & live[None, :], K / torch.where(any_live, c, 1.0), 0.0)
    x = torch.where(live, torch.where(live, Kn.diagonal(), 1.0) ** (-1.0 / (1.0 + p)), 1.0)
    t = 0.5 ** torch.arange(_LINE_SEARCH_STEPS, dtype=K.dtype, device=K.device)  # candidate step lengths
    done = ~any_live
    for _ in range(max_iters):
        Kx = Kn @ x
        F = torch.where(live, Kx - x ** (-p), 0.0)
        H = Kn + torch.diag(torch.where(live, p * x ** (-p - 1), 1.0))
        factor, info = torch.linalg.cholesky_ex(H)
        D = -torch.cholesky_solve(F[:, None], factor)[:, 0]
        done = done | (info != 0)  # not factorisable: keep x, stop
        decrement_squared = (-(F @ D)).clamp_min(0)
        converged = ~done & (decrement_squared.sqrt() <= FAIRGRAD_CONVERGED_DECREMENT)
        # Line search, all candidates at once: [steps, T].
        trial = x + t[:, None] * D
        admissible = ((trial > 0) & torch.isfinite(trial)).all(1)
        ratio = torch.where(live, t[:, None] * D / x, 0.0)
        log_ratio = torch.log1p(torch.where(admissible[:, None], ratio, 0.0))
        if p == 1:
            h_change = log_ratio
        else:
            h_change = x ** (1 - p) * torch.expm1((1 - p) * log_ratio) / (1 - p)
        change = t * (D @ Kx) + 0.5 * t * t * (D @ (Kn @ D)) - h_change.sum(1)
        accepted = admissible & (change <= -0.25 * t * decrement_squared)
        first = torch.where(accepted, torch.arange(_LINE_SEARCH_STEPS, device=K.device), _LINE_SEARCH_STEPS).min()
        found = first < _LINE_SEARCH_STEPS
        step = torch.where(found, t.gather(0, first.clamp_max(_LINE_SEARCH_STEPS - 1).view(1))[0], 0.0)
        full_ok = admissible[0]
        step = torch.where(converged, torch.where(full_ok, 1.0, 0.0), step)
        move = ~done & (converged | found)
        x = torch.where(move, x + step * D, x)
        done = done | converged | ~found
        if K.device.type == "cpu" and bool(done):  # a CPU flag: no device to wait for
            break
    unscale = torch.where(any_live, c, 1.0) ** (-1.0 / (1.0 + p))
    return torch.where(live, x * unscale, 0.0)
