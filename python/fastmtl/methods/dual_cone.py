"""UPGrad and DualProj (Quinton & Rey 2024, "Jacobian Descent for Multi-Objective
Optimization"): project onto the dual cone of the task gradients, so the update conflicts with
no task.

Both reduce to the quadratic program of the paper's Proposition 1, for a weight vector u:
    min_v  vᵀ A v   subject to  v ≥ u,     A = K / trace(K) + reg·I
(the normalisation and regularisation of torchjd's default projector; a trace below norm_eps
counts as K = 0). A is positive definite (reg > 0), so the QP is strictly convex and its
solution is the unique solution of the linear complementarity problem (LCP)
    s = v − u ≥ 0,   w = A s + q ≥ 0 (q = A u),   sᵢ wᵢ = 0.
A guess of the free set F = {i : sᵢ > 0} fixes a candidate: A_FF s_F = −q_F, s = 0 off F. The
candidate is the QP's solution exactly when it passes the KKT check s_F ≥ 0 and w ≥ 0 off F.

The solver is exact in that sense: it ends on a free set that passes the KKT check (to the
rounding of the solve), found by principal pivoting, all rows of U at once with fixed shapes
and no host read (a GPU never waits for it):

1. Block principal pivoting (Júdice & Pires 1994; the primal-dual active-set / semismooth
   Newton step): from F, solve, then F ← (F ∩ {s ≥ 0}) ∪ (off F ∩ {w < 0}). Alone it cycles
   on these non-M-matrices (seen on rank-deficient K), so, as Júdice & Pires, after
   ``_BACKUP`` block steps that do not lower a row's number of KKT violations, the row flips only
   its largest violating index (Murty's 1974 least-index rule, indices in reverse order) until
   the count drops below its best again. Murty's rule never returns to a free set on a P-matrix,
   and the count can drop at most T + 1 times, so the scheme ends on the exact solution after
   finitely many steps in exact arithmetic. The violations are counted beyond the rounding
   tolerance ``_kkt_tolerance`` (relative to the scale of each quantity), so rounding alone does
   not make a solved row pivot on.
2. That finite number has no polynomial bound (Murty's rule can take 2^T − 1 pivots on a
   positive definite matrix, Fathi 1979), so a fixed budget needs a good start:
   ``_IPM_ITERATIONS`` (30) Mehrotra predictor-corrector interior-point iterations on the LCP
   (one Cholesky factorisation of A + diag(w/s) per row and iteration); F = {s > w} from the last
   iterate starts the pivoting, which then has T + 8 steps. This is the fixed-budget path a GPU
   runs: 30 factorisations and T + 8 free-set solves per row, no host read.
3. On the CPU (reading a tensor costs no device sync) the pivoting first runs from
   F = {q < 0} (the tasks that conflict with u) and stops once every row passes the check; only
   the rows still unsolved after ``_FIRST_PIVOTS`` (32) steps get the interior-point start and the
   T + 8 further steps, with the same early exit (there a pivoting step costs about a twentieth of the
   interior-point start).

Budget, measured (``python benchmarks/dual_cone_solver.py budget --seeds 10 --exact-up-to 20``:
1,780 QPs, 26,630 rows u, from rank-deficient, stationary (torchjd's test families), random,
duplicated, opposite, zero, near-rank-deficient, badly scaled, huge and Murty-hard Jacobians,
T = 2..64; tests/test_dual_cone.py checks a part of them): on the fixed-budget path every row
passed the check after at most 2 pivoting steps in 1,763 QPs, 6 in all but the Murty-hard family
(Fathi's matrix, rows' signs flipped), 16 at worst (Murty-hard, T = 64; the budget is 72
there); on the CPU path the start from {q < 0} solved 1,754 of the 1,780 QPs within 32 steps,
the worst took 42 solves. No row was left unsolved; the solutions are within 9.1e-12 (relative)
of quadprog's and, for the 7,410 rows with T ≤ 20, within 8.4e-13 of the exact rational
solution of the float64 QP (the solve's rounding: up to cond(A) ≤ (1 + reg)/reg ulps). Should the budget run out on some
input, the row returns its candidate with the smallest KKT violation, clamped onto v ≥ u
(feasible, and within its violation times cond(A) of the optimum); ``dual_cone_qp`` reports which
rows passed the check.

Which path runs where: with the compiled extension (impl "auto", "cpp" or "cuda"), the methods call
the op ``fastmtl::dual_cone_weights`` (csrc/include/fastmtl/dual_cone_math.h): the CPU path's
scheme of point 3, written once in float64 C++, one job per row u, on the CPU (rows in parallel)
and on a GPU (one launch of one block, one thread per row; each row stops on its own check, so no
host read is needed there either). A row whose q = A u ≥ 0 is solved at F = ∅ without a
factorisation. Cost of the whole op on one CPU thread, UPGrad on K from random G [T, 100]
(``python benchmarks/dual_cone_solver.py op``): 2.5 / 5 / 14 / 800 µs at T = 4 / 8 / 16 / 64
(the reference: 0.1 / 0.3 / 0.2 / 12 ms); DualProj 2.3 to 8.5 µs. Its worst case over the
``budget`` corpus: about 2 ms for the rank-deficient stationary T = 64 families and 12 ms for the
Murty-hard T = 64 one (rows that need the interior-point start). With
impl="torch" (or no extension) ``dual_cone_qp`` below runs: the reference, batched over the rows
in torch ops, with the early exit on the CPU and the fixed budget of point 2 on a GPU.

Scale: as torchjd (pref vector = mean, 1/T per task).
"""

from __future__ import annotations

import abc
from typing import NamedTuple

import torch

from fastmtl._numerics import trace_normalised
from fastmtl.methods import _options
from fastmtl.methods.base import GramWeighting, register

_BACKUP = 3  # block steps allowed without fewer KKT violations before single (Murty) pivots
_FIRST_PIVOTS = 32  # CPU only: pivoting steps from F = {q < 0} before the interior-point start
_IPM_ITERATIONS = 30  # interior-point iterations of the start (fixed: no host read)
_STEP_FRACTION = 0.99  # of the step to the boundary of s, w > 0


def _cleanup_pivots(T: int) -> int:
    """Pivoting steps after the interior-point start (16 needed at most in the measurements, by
    the Murty-hard T = 64 family; 6 by every other)."""
    return T + 8


def _kkt_tolerance(T: int) -> float:
    """Relative size of a KKT violation that rounding alone explains: a component of w = A s + A u
    is a sum of 2T products, off by at most γ_2T (|A|(|s| + |u|))ᵢ (Higham §3.1); s comes from a
    backward-stable solve. Four times that, with two more terms of slack."""
    return 4 * (2 * T + 2) * torch.finfo(torch.float64).eps / 2


class DualConeQP(NamedTuple):
    """The solution of min vᵀAv s.t. v ≥ u for each row u of U, with its KKT check."""

    v: torch.Tensor  # [m, T], v ≥ u
    violation: torch.Tensor  # [m]: the worst KKT violation relative to its rounding scale
    solved: torch.Tensor  # [m] bool: violation ≤ the rounding tolerance (the exact solution)


def regularised_gram(K: torch.Tensor, *, norm_eps: float, reg_eps: float) -> torch.Tensor:
    """A = K / trace(K) + reg·I in float64 (K treated as 0 when its trace is below norm_eps)."""
    K = K.double()
    return trace_normalised(K, norm_eps) + reg_eps * torch.eye(K.shape[0], dtype=K.dtype, device=K.device)


def dual_cone_projection_weights(K: torch.Tensor, U: torch.Tensor, *, norm_eps: float, reg_eps: float,
                                 early_exit: bool | None = None) -> torch.Tensor:
    """For each row u of U [m, T]: the v with π(Jᵀu) = Jᵀv, i.e. argmin vᵀAv s.t. v ≥ u."""
    return dual_cone_qp(regularised_gram(K, norm_eps=norm_eps, reg_eps=reg_eps), U, early_exit=early_exit).v


def dual_cone_qp(A: torch.Tensor, U: torch.Tensor, *, early_exit: bool | None = None) -> DualConeQP:
    """Solve min vᵀAv s.t. v ≥ u for each row u of U [m, T] (A symmetric positive definite,
    [T, T]), in float64. ``early_exit`` (default: on the CPU, outside torch.compile) stops the
    pivoting once every row passes the KKT check; without it the budget is fixed and nothing is
    read on the host."""
    A = A.double()
    U = U.double()
    if early_exit is None:
        early_exit = A.device.type == "cpu" and not torch.compiler.is_compiling()
    T = A.shape[0]
    q = U @ A  # A u per row (A is symmetric)
    scale = A.abs(), U.abs()
    tolerance = _kkt_tolerance(T)
    s = torch.zeros_like(U)
    violation = torch.full(U.shape[:1], float("inf"), dtype=U.dtype, device=U.device)
    if early_exit:
        s, violation = _pivot(A, q, scale, q < 0, s, violation, _FIRST_PIVOTS, tolerance, early_exit)
        rows = (violation > tolerance).nonzero().flatten()  # a host read: fine on the CPU
        if rows.numel():
            s_rows, violation_rows = _pivot(A, q[rows], (scale[0], scale[1][rows]), _interior_point_start(A, q[rows]),
                                            s[rows], violation[rows], _cleanup_pivots(T), tolerance, early_exit)
            s, violation = s.index_copy(0, rows, s_rows), violation.index_copy(0, rows, violation_rows)
    else:
        s, violation = _pivot(A, q, scale, _interior_point_start(A, q), s, violation, _cleanup_pivots(T), tolerance,
                              early_exit)
    return DualConeQP(U + s.clamp_min(0), violation, violation <= tolerance)


def _free_set_solution(A: torch.Tensor, q: torch.Tensor, free: torch.Tensor) -> torch.Tensor:
    """Solve A_FF s_F = -q_F on each row's free set F (s = 0 elsewhere), batched with fixed
    shapes: bound coordinates get identity rows and a zero right-hand side."""
    both = free[:, :, None] & free[:, None, :]
    eye = torch.eye(A.shape[0], dtype=A.dtype, device=A.device)
    system = torch.where(both, A, eye)
    rhs = torch.where(free, -q, torch.zeros_like(q))
    s = torch.linalg.solve_ex(system, rhs.unsqueeze(-1), check_errors=False).result.squeeze(-1)  # no info sync
    return torch.where(free, s, torch.zeros_like(s))


def _kkt_violation(A: torch.Tensor, q: torch.Tensor, scale, free: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Per coordinate: how far the candidate s (zero off F) breaks s_F ≥ 0 or w = A s + q ≥ 0 off
    F, relative to the rounding scale of that quantity (|s_i| against max(|s|, |u|), w_i against
    (|A|(|s| + |u|))_i); 0 where it holds, +inf where the solve gave a non-finite value."""
    abs_A, abs_U = scale
    tiny = torch.finfo(s.dtype).tiny
    w = s @ A + q
    s_scale = torch.maximum(s.abs().amax(1, keepdim=True), abs_U.amax(1, keepdim=True)).clamp_min(tiny)
    w_scale = ((s.abs() + abs_U) @ abs_A).clamp_min(tiny)
    primal = (-s).clamp_min(0) / s_scale  # s is exactly 0 off F
    dual = torch.where(free, 0.0, (-w).clamp_min(0) / w_scale)
    return torch.nan_to_num(torch.maximum(primal, dual), nan=float("inf"), posinf=float("inf"))


def _pivot(A, q, scale, free, best_s, best_violation, steps, tolerance, early_exit):
    """Block principal pivoting with Murty's single-pivot fallback (module docstring) for up to
    ``steps`` free sets per row; keeps each row's candidate with the smallest KKT violation."""
    m, T = q.shape
    index = torch.arange(T, device=q.device)
    fewest = torch.full((m,), T + 1, dtype=torch.long, device=q.device)  # fewest violations so far
    backup = torch.full((m,), _BACKUP, dtype=torch.long, device=q.device)
    for _ in range(steps):
        s = _free_set_solution(A, q, free)
        per_coordinate = _kkt_violation(A, q, scale, free, s)
        violation = per_coordinate.amax(1)
        better = violation < best_violation
        best_violation = torch.where(better, violation, best_violation)
        best_s = torch.where(better[:, None], s, best_s)
        if early_exit and bool((best_violation <= tolerance).all()):
            break
        wrong = per_coordinate > tolerance  # empty on a solved row: its free set stays
        count = wrong.sum(1)
        fewer = count < fewest
        fewest = torch.where(fewer, count, fewest)
        block = fewer | (backup > 0)
        backup = torch.where(fewer, _BACKUP, (backup - 1).clamp_min(0))
        last = torch.where(wrong, index, -1).amax(1, keepdim=True)  # Murty: the largest violating index
        free = free ^ torch.where(block[:, None], wrong, index == last)
    return best_s, best_violation


def _interior_point_start(A: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """A free-set guess {s > w} from ``_IPM_ITERATIONS`` Mehrotra predictor-corrector steps on
    the LCP w = A s + q, s, w > 0, s∘w → 0 (infeasible start; one Cholesky factorisation of the
    positive definite A + diag(w/s) per row and step, two pairs of triangular solves with it). A
    row whose step fails (a non-finite or non-positive iterate) keeps its previous iterate."""
    size = q.abs().amax(1, keepdim=True)
    size = torch.where(size > 0, size, torch.ones_like(size))
    s = size.expand_as(q).clone()
    w = (s @ A + q).clamp_min(0) + size * A.diagonal().mean()
    for _ in range(_IPM_ITERATIONS):
        residual = s @ A + q - w
        mu = (s * w).mean(1, keepdim=True)
        # cholesky_ex(check_errors=False) and triangular solves: no host read on a GPU
        lower = torch.linalg.cholesky_ex(A + torch.diag_embed(w / s), check_errors=False).L
        ds, dw = _newton_direction(A, lower, residual, -w - residual)  # affine scaling (predictor)
        step = torch.minimum(_step_to_boundary(s, ds), _step_to_boundary(w, dw))
        mu_affine = ((s + step * ds) * (w + step * dw)).mean(1, keepdim=True)
        sigma = (mu_affine / mu).clamp(0, 1) ** 3
        ds, dw = _newton_direction(A, lower, residual, (sigma * mu - s * w - ds * dw) / s - residual)  # corrector
        step = _STEP_FRACTION * torch.minimum(_step_to_boundary(s, ds), _step_to_boundary(w, dw))
        s_next, w_next = s + step * ds, w + step * dw
        ok = torch.isfinite(s_next).all(1, keepdim=True) & torch.isfinite(w_next).all(1, keepdim=True) \
            & (s_next > 0).all(1, keepdim=True) & (w_next > 0).all(1, keepdim=True)
        s, w = torch.where(ok, s_next, s), torch.where(ok, w_next, w)
    return s > w


def _newton_direction(A, lower, residual, rhs):
    """(ds, dw) of the Newton system A ds − dw = −residual, W ds + S dw = S·(rhs + residual), i.e.
    (A + S⁻¹W) ds = rhs with L Lᵀ = A + S⁻¹W, dw = A ds + residual."""
    y = torch.linalg.solve_triangular(lower, rhs.unsqueeze(-1), upper=False)
    ds = torch.linalg.solve_triangular(lower.mT, y, upper=True).squeeze(-1)
    return ds, ds @ A + residual


def _step_to_boundary(x: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """The largest α ≤ 1 with x + α dx ≥ 0, per row."""
    negative = dx < 0
    ratio = torch.where(negative, -x / torch.where(negative, dx, -1.0), torch.ones_like(x))
    return ratio.amin(1, keepdim=True).clamp_max(1.0)


class DualConeMethod(GramWeighting):
    """Options shared by UPGrad and DualProj: ``norm_eps`` (a trace below it counts as a zero K)
    and ``reg_eps`` (the QP's regularisation), as torchjd's defaults."""

    def __init__(self, *, norm_eps: float = 1e-4, reg_eps: float = 1e-4, impl: str = "auto"):
        self._set_options(norm_eps=_options.real(self.name, "norm_eps", norm_eps, low=0.0, low_open=True),
                         reg_eps=_options.real(self.name, "reg_eps", reg_eps, low=0.0, low_open=True), impl=impl)

    @abc.abstractmethod
    def rows(self, K: torch.Tensor) -> torch.Tensor:
        """The rows u [m, T] whose projections make the update (float64, on K's device)."""

    @abc.abstractmethod
    def combine_rows(self, V: torch.Tensor) -> torch.Tensor:
        """The weights from the projected rows V [m, T]."""

    def solve(self, K: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
        V = dual_cone_projection_weights(K, self.rows(K), norm_eps=self.options["norm_eps"],
                                         reg_eps=self.options["reg_eps"])
        return self.combine_rows(V)

    def compiled_solve(self, K: torch.Tensor) -> torch.Tensor:  # csrc/include/fastmtl/dual_cone_math.h
        V = torch.ops.fastmtl.dual_cone_weights(K, self.rows(K), self.options["norm_eps"], self.options["reg_eps"])
        return self.combine_rows(V)


@register
class UPGrad(DualConeMethod):
    """UPGrad: each task's share 1/T e_i projected onto the dual cone; the projections summed."""

    name = "upgrad"

    def rows(self, K: torch.Tensor) -> torch.Tensor:
        T = K.shape[0]
        return torch.eye(T, dtype=torch.float64, device=K.device) / T

    def combine_rows(self, V: torch.Tensor) -> torch.Tensor:
        return V.sum(0)


@register
class DualProj(DualConeMethod):
    """DualProj: the mean gradient projected onto the dual cone."""

    name = "dualproj"

    def rows(self, K: torch.Tensor) -> torch.Tensor:
        return torch.full((1, K.shape[0]), 1.0 / K.shape[0], dtype=torch.float64, device=K.device)

    def combine_rows(self, V: torch.Tensor) -> torch.Tensor:
        return V[0]
