"""UPGrad and DualProj (Quinton & Rey 2024, "Jacobian Descent for Multi-Objective
Optimization"): project onto the dual cone of the task gradients, so the update conflicts with
no task.

Both reduce to the quadratic program of the paper's Proposition 1, for a weight vector u:
    min_v  vᵀ A v   subject to  v ≥ u,     A = K / trace(K) + reg·I
(the normalisation and regularisation of torchjd's default projector). We solve it on the
device, batched over the u's, with no host round-trip: projected Gauss-Seidel sweeps on the
equivalent linear complementarity problem (s = v - u ≥ 0, A s + A u ≥ 0, complementary),
then an exact solve of the equality system on the free set the sweeps identified ("polish"),
twice. With the right free set the polished answer is the exact QP solution: against quadprog
(torchjd) on random cases with T up to 16, 5 sweeps per round already agreed to 5e-16; 8 are run.

Scale: as torchjd (pref vector = mean, 1/T per task).
"""

import torch

from fastmtl.methods import _options
from fastmtl.methods.base import GramWeighting, register


def dual_cone_projection_weights(K: torch.Tensor, U: torch.Tensor, *, norm_eps: float, reg_eps: float,
                                 sweeps: int = 8) -> torch.Tensor:
    """For each row u of U [m, T]: the v with π(Jᵀu) = Jᵀv, i.e. argmin vᵀAv s.t. v ≥ u."""
    K = K.double()
    U = U.double()
    T = K.shape[0]
    trace = K.diagonal().sum()
    normalised = torch.where(trace < norm_eps, torch.zeros_like(K), K / torch.where(trace < norm_eps, 1.0, trace))
    A = normalised + reg_eps * torch.eye(T, dtype=K.dtype, device=K.device)
    q = U @ A  # the LCP's constant term, A u per row (A is symmetric)
    s = torch.zeros_like(U)
    diagonal = A.diagonal()
    for _ in range(2):
        for _ in range(sweeps):  # projected Gauss-Seidel: exact minimisation along each coordinate
            for k in range(T):
                residual = q[:, k] + s @ A[:, k]
                s[:, k] = (s[:, k] - residual / diagonal[k]).clamp_min(0)
        s = _polish(A, q, s)
    return U + s


def _polish(A: torch.Tensor, q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Solve A_FF s_F = -q_F on each row's free set F = {s > 0} (s = 0 elsewhere), batched with
    fixed shapes: bound coordinates get identity rows."""
    free = s > 0  # [m, T]
    both = free[:, :, None] & free[:, None, :]
    eye = torch.eye(A.shape[0], dtype=A.dtype, device=A.device).expand_as(both)
    system = torch.where(both, A.expand_as(both), eye)
    rhs = torch.where(free, -q, torch.zeros_like(q))
    return torch.linalg.solve_ex(system, rhs, check_errors=False).result.clamp_min(0)  # no info sync


class DualConeMethod(GramWeighting):
    """Options shared by UPGrad and DualProj: ``norm_eps`` (a trace below it counts as a zero K)
    and ``reg_eps`` (the QP's regularisation), as torchjd's defaults."""

    def __init__(self, *, norm_eps: float = 1e-4, reg_eps: float = 1e-4, impl: str = "auto"):
        self._set_options(norm_eps=_options.real(self.name, "norm_eps", norm_eps, low=0.0, low_open=True),
                         reg_eps=_options.real(self.name, "reg_eps", reg_eps, low=0.0, low_open=True), impl=impl)

    def projected(self, K: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
        return dual_cone_projection_weights(K, U, norm_eps=self.options["norm_eps"], reg_eps=self.options["reg_eps"])


@register
class UPGrad(DualConeMethod):
    """UPGrad: each task's share 1/T e_i projected onto the dual cone; the projections summed."""

    name = "upgrad"

    def solve(self, K: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
        T = K.shape[0]
        return self.projected(K, torch.eye(T, dtype=torch.float64, device=K.device) / T).sum(0)


@register
class DualProj(DualConeMethod):
    """DualProj: the mean gradient projected onto the dual cone."""

    name = "dualproj"

    def solve(self, K: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
        T = K.shape[0]
        return self.projected(K, torch.full((1, T), 1.0 / T, dtype=torch.float64, device=K.device))[0]
