"""CAGrad (Liu et al. 2021, "Conflict-Averse Gradient Descent for Multi-task Learning").

With the mean gradient g0 and c ≥ 0, find w on the simplex minimising
    F(w) = g_wᵀ g0 + √φ |g_w|,   g_w = Σ_i w_i g_i,   √φ = c |g0|,
then the update is d = g0 + (√φ / |g_w|) g_w (the point of the ball |d - g0| <= √φ that
maximises min_i g_iᵀd, whose value is F's minimum F*), except in the Pareto-stationary case
|g_w| < ``norm_eps``, where it is 0, as torchjd (whose cvxpy solve is the reference). In Gram space, with K
normalised by its trace as torchjd: g_wᵀ g0 = wᵀ K 1/T and |g_w| = √(wᵀ K w).

The Pareto-stationary case. F is not differentiable at g_w = 0, and that is where its minimiser
sits when 0 is in the convex hull H of the gradients and c > 1 (F(w) >= (c - 1)|g0||g_w| >= 0 =
F(g_w = 0) by Cauchy-Schwarz); with c = 1 any other minimiser is antiparallel to g0 and gives
d = g0 - g0 = 0 too. A smoothed |g_w| (this module's former FISTA solve) stalls at |g_w| ~ 1e-3..1e-1
there and turns the division by |g_w| into a large update that conflicts with some tasks. So the
solve is exact instead, with no smoothing:

* A minimiser g* != 0 is the projection of -ρ g0 onto H with ρ = |g*| / √φ (the projection's
  normal-cone condition is F's optimality condition, with √φ / |g*| = 1 / ρ). With p(ρ) =
  proj_H(-ρ g0) and ψ(ρ) = |p(ρ)|² - φρ², every root ρ > 0 of ψ gives a minimiser. The minimiser
  is unique unless F* = 0 (then the non-zero minimisers lie on one ray, so d is still unique;
  c = 1 above), and ψ(ρ_max) < 0 for ρ_max = max_i |g_i| / √φ; hence ψ > 0 on (0, ρ*), ψ < 0
  beyond, and ψ < 0 for all ρ > 0 when g* = 0.
* Hence |g*| <= norm_eps iff ψ(norm_eps / √φ) <= 0: one projection gives torchjd's verdict (which
  tests |g_w| < norm_eps on its solution: the same except at equality), exactly for the K given,
  as |p|² ~ norm_eps² = 1e-8 is far above its rounding (~1e-16). The update is then 0.
* Otherwise a bracketed root search on [norm_eps / √φ, ρ_max] finds ρ*: on the face of H that
  carries p(ρ), w is affine in ρ and ψ a quadratic, whose root gives the exact w* once the search
  reaches ρ*'s face; else a geometric bisection step. The best w by F among all candidates met is
  kept.

Projections are Wolfe's minimum-norm-point algorithm (``min_norm_point``, exact: it ends at the
minimiser in finitely many steps) on the Gram matrix of the shifted gradients, K + ρ(b1ᵀ + 1bᵀ) +
ρ²|g0|²11ᵀ, warm-started from the previous corral. With c = 0, F is linear: w is the minimum-norm
point of the face of H that minimises it (d = g0, or 0 when that face reaches 0).

Accuracy (checked by tests/test_cagrad.py against the optimality conditions, torchjd and cvxpy):
for every non-zero update, cert = F(w) - min_i g_iᵀd, an upper bound of F(w) - F* (d is in the
ball), is at most (1 + c)√u in units where ‖G‖_F = 1 (u = 2⁻⁵³; the worst step is a quadratic's
root near a double root, computed to √u; the face solves are at rounding level; measured: ~1e-12
or less on the tests' inputs), which bounds |d - d*| <= √(2 √φ cert / |g_w|) ‖G‖_F. The solve is exact for the K it is given: for float32
gradients, K carries the float32 rounding of the Gram matrix (torchjd's too). Without smoothing,
c >= 1 keeps torchjd's non-conflicting property: min_i g_iᵀd = F(w) - cert >= F* - cert >= -cert,
and F* >= 0 for c >= 1.

Cost: ``max_iters`` (default 12) bounds the rounds of the root search, each one Wolfe solve of at
most 2T + 10 steps; the tests' inputs need at most 7 rounds. The loops end early (``tol``: the
relative width in ρ at which the search stops) on the CPU, and in the compiled op on either device.
Two paths compute the same algorithm:

* the compiled op ``torch.ops.fastmtl.cagrad_weights`` (csrc/include/fastmtl/cagrad_math.h),
  used whenever the extension is (impl "auto", "cpp", "cuda"): float64 C++, each Wolfe step one
  Cholesky solve of (K_S + 11ᵀ) on the gathered corral S, the face's path w(ρ) from the same
  matrix. On one CPU thread ~3 µs at T = 4, ~15-20 µs at T = 16, ~0.1-0.6 ms at T = 64. On a GPU
  it is one launch of one thread, which takes the same early exits: no host sync.
* the torch reference below (impl="torch"): a T-square ``linalg.solve`` per Wolfe step (and a
  (T+1)-square one per face); ~1-3 ms at T <= 16, ~5-17 ms at T = 64 on one CPU thread. On a GPU
  all steps run, with fixed shapes and selections by masks: no host sync.

``rescale`` reproduces the official code's options: 0 none (torchjd), 1 divide by 1 + c², 2
divide by 1 + c. Scale: mean-like (g0 + ...), as torchjd with rescale=0.
"""

from __future__ import annotations

import torch

from fastmtl._numerics import trace_normalised
from fastmtl.methods import _options
from fastmtl.methods.base import GramWeighting, register


@register
class CAGrad(GramWeighting):
    name = "cagrad"

    def __init__(self, *, c: float = 0.5, rescale: int = 0, norm_eps: float = 1e-4, max_iters: int = 12,
                 tol: float = 1e-12, impl: str = "auto"):
        rescale = _options.integer(self.name, "rescale", rescale, low=0)
        if rescale > 2:
            raise ValueError(f"{self.name}: rescale must be 0, 1 or 2, got {rescale!r}")
        self._set_options(c=_options.real(self.name, "c", c, low=0.0), rescale=rescale,
                         norm_eps=_options.real(self.name, "norm_eps", norm_eps, low=0.0, low_open=True),
                         max_iters=_options.integer(self.name, "max_iters", max_iters),
                         tol=_options.real(self.name, "tol", tol, low=0.0), impl=impl)

    def solve(self, K: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
        return cagrad_weights(K, **{k: v for k, v in self.options.items() if k != "impl"})

    def compiled_solve(self, K: torch.Tensor) -> torch.Tensor:  # csrc/include/fastmtl/cagrad_math.h
        options = self.options
        return torch.ops.fastmtl.cagrad_weights(K, options["c"], options["rescale"], options["norm_eps"],
                                                options["max_iters"], options["tol"])


def cagrad_weights(K: torch.Tensor, *, c: float, rescale: int, norm_eps: float, max_iters: int,
                   tol: float) -> torch.Tensor:
    T = K.shape[0]
    K = trace_normalised(K, norm_eps)
    mean = torch.full((T,), 1.0 / T, dtype=K.dtype, device=K.device)
    b = K @ mean  # g_i . g0
    s = (mean @ b).clamp_min(0)  # |g0|²
    sqrt_phi = c * s.sqrt()
    if c == 0:
        w, stationary = _linear_minimiser(K, b), torch.zeros((), dtype=torch.bool, device=K.device)
    else:
        w, stationary = _root_search(K, b, s, c, sqrt_phi, norm_eps, max_iters, tol)
    g_w_norm = (w @ K @ w).clamp_min(0).sqrt()
    # torchjd's rule: |g_w| < norm_eps means (approximately) Pareto-stationary, and the update is 0.
    zero = stationary | (g_w_norm < norm_eps)
    weights = mean + sqrt_phi / torch.where(zero, 1.0, g_w_norm) * w
    weights = torch.where(zero, torch.zeros_like(weights), weights)
    return weights / {0: 1.0, 1: 1.0 + c * c, 2: 1.0 + c}[rescale]


def _wolfe_steps(T: int) -> int:
    # Wolfe's algorithm adds one gradient per major step and drops at least one per minor step, so
    # it takes at least as many steps as the optimal face has vertices (<= T); 2T + 10 leaves room
    # for the minor steps (measured: at most T + 2 from a cold start, T <= 128).
    return 2 * T + 10


def _linear_minimiser(K: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """c = 0: F(w) = bᵀw is minimal on the face of the simplex where b_i = min b. Where that face
    is not a vertex (ties, e.g. g0 = 0), torchjd's interior-point solve lands inside it; its
    minimum-norm point gives the same Pareto-stationary verdict whenever the face reaches g_w = 0.
    Ties are b_i within 4 γ_(T+2) of the minimum (b is a mean of T entries |K_ij| <= 1)."""
    T = K.shape[0]
    face = b <= b.min() + 4 * (T + 2) * torch.finfo(K.dtype).eps
    w, _, _ = min_norm_point(K, _wolfe_steps(T), allowed=face)
    return w


def _root_search(K, b, s, c, sqrt_phi, norm_eps, max_iters, tol):
    """The minimiser w of F for c > 0 and whether |g*| <= norm_eps (see the module docstring)."""
    T = K.shape[0]
    steps = _wolfe_steps(T)
    shift = b[:, None] + b[None, :]

    def objective(v):
        return b @ v + sqrt_phi * (v @ K @ v).clamp_min(0).sqrt()

    def project(rho, start=None):  # p(ρ) = proj_H(-ρ g0) = g_w (w and its corral) and ψ(ρ)
        w_rho, corral, _ = min_norm_point(K + rho * shift + rho * rho * s, steps, start=start)
        return w_rho, corral, w_rho @ K @ w_rho - (c * c) * s * rho * rho

    safe_phi = torch.where(sqrt_phi > 0, sqrt_phi, 1.0)
    low = norm_eps / safe_phi
    high = torch.maximum(K.diagonal().max().clamp_min(0).sqrt() / safe_phi, low) * 1.01  # ψ(high) < 0
    w, corral, psi = project(low)
    stationary = psi <= 0
    best = w
    rho = low
    on_host = K.device.type == "cpu"
    for _ in range(max_iters):
        roots, candidates = _face_roots(K, b, s, c, corral)
        for ok, candidate in candidates:
            best = torch.where(ok & (objective(candidate) <= objective(best)), candidate, best)
        # Next trial: the face's root nearest to the last trial if it is inside the bracket,
        # else the geometric midpoint (the bracket spans up to ~4 decades).
        inside = (roots > low) & (roots < high)
        distance = torch.where(inside, (roots - rho).abs(), torch.full_like(roots, float("inf")))
        nearest = (roots * torch.nn.functional.one_hot(distance.argmin(), 2).to(roots.dtype)).sum()
        trial = torch.where(inside.any(), nearest, (low * high).sqrt())
        converged = ((roots - rho).abs() <= tol * rho).any() | (high - low <= tol * high)
        if on_host and bool(stationary | converged):  # reading CPU tensors costs no device sync
            break
        rho = trial
        w, corral, psi = project(rho, start=(w, corral))
        low, high = torch.where(psi > 0, rho, low), torch.where(psi <= 0, rho, high)
        best = torch.where(objective(w) <= objective(best), w, best)
    return best, stationary


def _face_roots(K, b, s, c, corral):
    """On the affine hull of the corral's gradients, the nearest point to -ρ g0 is g_w with
    w(ρ) = w_a + ρ w_b (the KKT system [K_S 1; 1ᵀ 0] [w; -ν] = [-ρ b_S; 1], linear in ρ), so
    ψ(ρ) = |g_w(ρ)|² - c²|g0|²ρ² is a quadratic; its two real roots (-1 for a root that does not
    exist) and, for each, w(ρ) clipped to the simplex with a flag saying it is finite."""
    T = K.shape[0]
    dtype, device = K.dtype, K.device
    on = corral.to(dtype)
    M = torch.zeros((T + 1, T + 1), dtype=dtype, device=device)
    M[:T, :T] = torch.where(corral[:, None] & corral[None, :], K, torch.eye(T, dtype=dtype, device=device))
    M[:T, T] = on
    M[T, :T] = on
    rhs = torch.zeros((T + 1, 2), dtype=dtype, device=device)
    rhs[T, 0] = 1
    rhs[:T, 1] = -b * on
    solution = torch.linalg.solve_ex(M, rhs, check_errors=False).result[:T]
    w_a, w_b = solution[:, 0] * on, solution[:, 1] * on
    A0, A1, A2 = w_a @ K @ w_a, w_a @ K @ w_b, w_b @ K @ w_b
    a = A2 - (c * c) * s
    discriminant = A1 * A1 - A0 * a
    root = discriminant.clamp_min(0).sqrt()
    q = -(A1 + torch.where(A1 >= 0, root, -root))  # the two roots q / a and A0 / q, without cancellation
    roots = torch.stack([q / torch.where(a != 0, a, 1.0), A0 / torch.where(q != 0, q, 1.0)])
    real = torch.stack([a != 0, q != 0]) & (discriminant >= 0) & torch.isfinite(roots)
    roots = torch.where(real, roots, torch.full_like(roots, -1.0))
    candidates = []
    for rho in roots.unbind():
        v = (w_a + rho.clamp_min(0) * w_b).clamp_min(0)
        total = v.sum()
        ok = torch.isfinite(v).all() & (total > 0)
        candidates.append((ok, v / torch.where(ok, total, 1.0)))
    return roots, candidates


def min_norm_point(K: torch.Tensor, steps: int, *, allowed: torch.Tensor | None = None,
                   start: tuple[torch.Tensor, torch.Tensor] | None = None):
    """w on the simplex (on the ``allowed`` tasks) minimising |g_w|² = wᵀKw, by Wolfe's
    minimum-norm-point algorithm (Wolfe 1976, "Finding the nearest point in a polytope"): an
    active-set method that ends, after finitely many steps, at the exact minimiser (up to rounding),
    also where it lies on a face of the hull or where K is rank-deficient.

    The state is a "corral" S of affinely independent gradients and the barycentric weights
    ``lam`` of the current point x = g_lam. A major step adds the gradient with the smallest g_jᵀx
    unless |x|² - min_j g_jᵀx is at rounding level (then x is optimal: this Frank-Wolfe gap bounds
    |x|² - min|g_w|²); a minor step moves to the affine minimiser of S when it lies inside conv(S),
    else to the boundary point of the segment towards it, dropping a gradient. ``start`` = (lam,
    corral) of an earlier solve resumes from there with a minor step (any corral of affinely
    independent gradients and point in its hull is a valid state). Fixed shapes and masks (no host
    sync); ``steps`` bounds the number of steps, and the point with the smallest |g_w| seen is
    returned, with its corral and whether the optimality test passed. On the CPU the loop ends
    once optimal."""
    T = K.shape[0]
    dtype, device = K.dtype, K.device
    eye = torch.eye(T, dtype=dtype, device=device)
    inf = torch.full((T,), float("inf"), dtype=dtype, device=device)
    allowed = torch.ones(T, dtype=torch.bool, device=device) if allowed is None else allowed
    if start is None:
        shortest = torch.where(allowed, K.diagonal(), inf).argmin()
        lam = torch.nn.functional.one_hot(shortest, T).to(dtype)
        corral = lam > 0
        major = torch.ones((), dtype=torch.bool, device=device)
    else:
        lam, corral = start
        major = torch.zeros((), dtype=torch.bool, device=device)
    done = torch.zeros((), dtype=torch.bool, device=device)
    best, best_corral, best_norm = lam, corral, lam @ K @ lam
    # The gap's rounding: K lam and lamᵀ K lam are sums of T + 1 terms of size <= max diag(K).
    gap_tol = 4 * (T + 2) * torch.finfo(dtype).eps * K.diagonal().abs().max()
    on_host = device.type == "cpu"
    for _ in range(steps):
        K_lam = K @ lam
        K_lam_allowed = torch.where(allowed, K_lam, inf)
        entering = torch.nn.functional.one_hot(K_lam_allowed.argmin(), T).bool()
        # Optimal: the gap is at rounding level, or |x|² is (x = 0), or the entering gradient is in
        # the corral already (g_jᵀx = |x|² on the corral's affine hull: its gap is rounding, or
        # noise in K, e.g. the Gram matrix of float32 gradients, which need not even be PSD).
        x_norm = lam @ K_lam
        optimal = major & ((x_norm - K_lam_allowed.min() <= gap_tol) | (x_norm <= gap_tol) | (entering & corral).any())
        done = done | optimal
        corral_try = torch.where(major, corral | entering, corral)
        # Affine minimiser of the corral: (K_S + 11ᵀ) α = 1, μ = α / Σα (identity rows off S).
        alpha = torch.linalg.solve_ex(torch.where(corral_try[:, None] & corral_try[None, :], K + 1, eye),
                                      corral_try.to(dtype), check_errors=False).result
        alpha = torch.where(corral_try, alpha, torch.zeros_like(alpha))
        total = alpha.sum()
        mu = alpha / torch.where(total > 0, total, torch.ones_like(total))
        broken = ~(torch.isfinite(mu).all() & (total > 0))  # a numerically singular corral: stop here
        inside = ((mu > 0) | ~corral_try).all()
        # Otherwise step from lam towards mu up to the first weight that reaches 0, and drop it.
        ratio = torch.where(corral_try & (mu <= 0), lam / (lam - mu).clamp_min(torch.finfo(dtype).tiny), inf)
        theta = ratio.min().clamp(0, 1)
        leaving = torch.nn.functional.one_hot(ratio.argmin(), T).bool()
        stepped = (lam + theta * (mu - lam)).clamp_min(0)
        stepped = torch.where(leaving | ~corral_try, torch.zeros_like(stepped), stepped)
        stepped = stepped / stepped.sum().clamp_min(torch.finfo(dtype).tiny)
        # Stuck: the gradient that just entered leaves at once (θ = 0). In exact arithmetic the
        # entering gradient gets a positive weight in the new affine minimiser, so this is noise.
        stuck = major & ~inside & (leaving & entering).any() & (theta <= 0)
        broken = broken | stuck
        keep = done | broken
        lam = torch.where(keep, lam, torch.where(inside, mu, stepped))
        corral = torch.where(keep, corral, torch.where(inside, corral_try, corral_try & (stepped > 0)))
        major = inside
        norm = lam @ K @ lam
        better = norm <= best_norm
        best, best_norm = torch.where(better, lam, best), torch.where(better, norm, best_norm)
        best_corral = torch.where(better, corral, best_corral)
        done = done | broken
        if on_host and bool(done):
            break
    return best, best_corral, done
