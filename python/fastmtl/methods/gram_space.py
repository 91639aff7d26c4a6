"""Gram-space methods that pick a common direction by a small problem on K, solved on K's device
with no host round-trip: by one compiled op (csrc/include/fastmtl/*_math.h) on the extension's
path, by torch ops (the reference, impl="torch") otherwise.

* MGDA (Désidéri 2012; Sener & Koltun 2018, Alg. 2): the minimum-norm point of the convex hull
  of the task gradients, by Frank-Wolfe on K. Scale: a convex combination (weights sum to 1),
  as in the paper and torchjd.
* Aligned-MTL (Senushkin et al. 2023): the eigen-decomposition of K rescales the principal
  components of the task gradients to a common size. Scale: torchjd's.
* IMTL-G (Liu et al. 2021, "Towards Impartial Multi-task Learning"; the pseudo-inverse form of
  Quinton & Rey 2024 / torchjd for dependent gradients): the combination whose projections on
  every unit task gradient are equal. Scale: weights sum to 1.

With the compiled extension, every solve is one op (one kernel launch on a GPU, no host
round-trip); the maths is written once in csrc/include/fastmtl/*_math.h for the CPU and CUDA
kernels. IMTL-G and Aligned-MTL decompose K there by Householder tridiagonalisation and the
implicit shifted QR algorithm (eigen_math.h: absolute eigenvalue errors O(T u ||K||), so the rank
cuts below see what LAPACK sees; ~9 T³ flops; the whole op on one CPU thread, median: ~2 µs at
T = 4, ~12 µs at T = 16, ~0.26 ms at T = 64, against ~30-60 µs and ~0.23-0.39 ms for the
reference through LAPACK). The functions below are the reference (impl="torch"): there,
IMTL-G's pinv and Aligned-MTL's eigh have no error-free ("_ex") form in torch, so on a GPU their
LAPACK-style info check synchronises with the host once per weight update.
"""

import torch

from fastmtl.methods import _options
from fastmtl.methods.base import GramWeighting, register


@register
class MGDA(GramWeighting):
    """Frank-Wolfe on min_a aᵀ K a over the simplex, from the uniform point; stops updating once
    a step's gamma falls below ``epsilon`` (on a GPU by a mask, with no host sync; on the CPU the
    loop also ends there, with the same result)."""

    name = "mgda"

    def __init__(self, *, max_iters: int = 100, epsilon: float = 1e-3, impl: str = "auto"):
        self._set_options(max_iters=_options.integer(self.name, "max_iters", max_iters),
                         epsilon=_options.real(self.name, "epsilon", epsilon, low=0.0, low_open=True), impl=impl)

    def solve(self, K: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
        return mgda_weights(K, self.options["max_iters"], self.options["epsilon"])

    def compiled_solve(self, K: torch.Tensor) -> torch.Tensor:  # csrc/include/fastmtl/mgda_math.h
        return torch.ops.fastmtl.mgda_weights(K, self.options["max_iters"], self.options["epsilon"])


def mgda_weights(K: torch.Tensor, max_iters: int, epsilon: float) -> torch.Tensor:
    T = K.shape[0]
    alpha = torch.full((T,), 1.0 / T, dtype=K.dtype, device=K.device)
    done = torch.zeros((), dtype=torch.bool, device=K.device)
    on_host = K.device.type == "cpu"
    for _ in range(max_iters):
        K_alpha = K @ alpha
        t = K_alpha.argmin()
        vertex = torch.nn.functional.one_hot(t, T).to(K.dtype)
        a = vertex @ K_alpha  # alpha^T K e_t (products, not K_alpha[t]: a 0-d index syncs on CUDA)
        b = alpha @ K_alpha  # alpha^T K alpha
        c = K.diagonal() @ vertex  # e_t^T K e_t
        # Exact line search on the segment [alpha, e_t], clipped to [0, 1].
        interior = (b - a) / torch.where(b + c - 2 * a > 0, b + c - 2 * a, torch.ones_like(a))
        gamma = torch.where(c <= a, torch.ones_like(a), torch.where(b <= a, torch.zeros_like(a), interior))
        gamma = torch.where(done, torch.zeros_like(gamma), gamma)
        alpha = (1 - gamma) * alpha + gamma * vertex
        done = done | (gamma < epsilon)
        if on_host and bool(done):  # reading a CPU tensor costs no device sync: stop early there
            break
    return alpha


@register
class IMTLG(GramWeighting):
    """w ∝ pinv(K) diag(K)^½, normalised to sum 1 (all zero when the sum vanishes)."""

    name = "imtl_g"

    def solve(self, K: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
        return imtl_g_weights(K)

    def compiled_solve(self, K: torch.Tensor) -> torch.Tensor:  # csrc/include/fastmtl/imtl_g_math.h
        return torch.ops.fastmtl.imtl_g_weights(K)


def imtl_g_weights(K: torch.Tensor) -> torch.Tensor:
    # The weights do not change with a common scale of K; solving on K / trace(K) keeps the
    # test "the sum vanishes" meaningful for gradients of any size.
    trace = K.diagonal().sum()
    K = K / torch.where(trace > 0, trace, 1.0)
    v = torch.linalg.pinv(K) @ K.diagonal().clamp_min(0).sqrt()
    total = v.sum()
    return torch.where(total.abs() < 1e-12, torch.zeros_like(v), v / torch.where(total.abs() < 1e-12, 1.0, total))


@register
class AlignedMTL(GramWeighting):
    """Aligned-MTL (Senushkin et al. 2023): align the task gradients' principal components.
    With K = V Λ Vᵀ on its rank r (eigenvalues above T·eps·max), B = sqrt(s) V Λ^-½ Vᵀ with s the
    smallest ("min"), median ("median") or mean ("rmse") retained eigenvalue; weights B·(1/T).
    Rank 0 gives the plain mean. The reference (impl="torch") masks instead of slicing to keep
    shapes fixed; its eigh still syncs on a GPU, the op does not.
    Scale: torchjd's (pref vector = mean)."""

    name = "aligned_mtl"

    def __init__(self, *, scale_mode: str = "min", impl: str = "auto"):
        self._set_options(scale_mode=_options.one_of(self.name, "scale_mode", scale_mode, ("min", "median", "rmse")),
                         impl=impl)

    def solve(self, K: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
        return aligned_mtl_weights(K, self.options["scale_mode"])

    def compiled_solve(self, K: torch.Tensor) -> torch.Tensor:  # csrc/include/fastmtl/aligned_mtl_math.h
        return torch.ops.fastmtl.aligned_mtl_weights(K, self.options["scale_mode"])


def aligned_mtl_weights(K: torch.Tensor, scale_mode: str, pref: torch.Tensor | None = None) -> torch.Tensor:
    """B · pref, pref the preference vector (1/T per task by default, the method's; a [T] float64
    tensor on K's device otherwise: torchjd's ``pref_vector``, used by fastmtl.compat.torchjd)."""
    T = K.shape[0]
    eigenvalues, V = torch.linalg.eigh(K)
    tolerance = eigenvalues.max() * T * torch.finfo(K.dtype).eps
    kept = eigenvalues > tolerance
    safe = torch.where(kept, eigenvalues, torch.ones_like(eigenvalues))
    inv_sqrt = torch.where(kept, safe.rsqrt(), torch.zeros_like(eigenvalues))
    if scale_mode == "min":
        scale = torch.where(kept, eigenvalues, torch.full_like(eigenvalues, float("inf"))).min()
    elif scale_mode == "median":  # torch.median's lower median, over the kept eigenvalues
        scale = torch.where(kept, eigenvalues, torch.full_like(eigenvalues, float("nan"))).nanmedian()
    else:
        scale = (eigenvalues * kept).sum() / kept.sum().clamp_min(1)
    B = scale.clamp_min(0).sqrt() * (V * inv_sqrt) @ V.T
    identity = torch.eye(T, dtype=K.dtype, device=K.device)
    B = torch.where(kept.any(), B, identity)
    if pref is None:
        pref = torch.full((T,), 1.0 / T, dtype=K.dtype, device=K.device)
    return B @ pref
