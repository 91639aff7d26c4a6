"""The remaining aggregators of torchjd 0.18, written from their papers and checked against
torchjd on the same inputs (tests/test_methods_torchjd_peers.py):

* Random (Lin et al. 2021, "Reasonable Effectiveness of Random Weighting", Alg. 2): w =
  softmax(z), z ~ N(0, I_T) drawn at each call from ``generator``. Scale: a convex combination.
* Constant: fixed weights w (``weights``, one per task). Scale: Σ w_i g_i.
* Krum / Multi-Krum (Blanchard et al. 2017, "Machine Learning with Adversaries"): the score of
  g_i is the sum of its distances to its T - f - 2 nearest other gradients; the ``n_selected``
  gradients with the lowest scores are averaged. The paper sums squared distances
  (``squared=True``, the default); torchjd sums plain distances (``squared=False``).
* TrimmedMean (Yin et al. 2018, "Byzantine-Robust Distributed Learning"): coordinate by
  coordinate, the mean of the T - 2k values left once the k largest and k smallest are removed.
* ConFIG (Liu et al. 2024, "ConFIG: Towards Conflict-free Training of PINNs", Eq. 2): the unit
  vector u ∝ pinv([g_1/|g_1|; ...; g_T/|g_T|]) w (w the preference vector, ones by default),
  scaled by Σ_i g_i·u.

Random, Constant, Krum and ConFIG are Gram-space weightings (w from K, then w · G); TrimmedMean
works coordinate by coordinate. Random and Constant do not read K (as ``sum`` and ``mean``:
non-finite entries of G propagate coordinate by coordinate through w · G).
"""

from __future__ import annotations

import torch

from fastmtl import _validate
from fastmtl._numerics import accumulate_dtype
from fastmtl.methods import _options
from fastmtl.methods._state import on_device
from fastmtl.methods.base import ElementwiseMethod, GramWeighting, _impl, register


def _vector_option(method: str, name: str, value) -> tuple[float, ...]:
    """A non-empty 1-D sequence (list, tuple, tensor, numpy array) of finite reals, as a tuple."""
    if isinstance(value, torch.Tensor):
        if value.dim() != 1:
            raise ValueError(f"{method}: {name} must be a 1-D vector, got shape {tuple(value.shape)}")
        value = value.detach().cpu().tolist()
    elif hasattr(value, "tolist") and hasattr(value, "ndim"):  # numpy arrays
        if value.ndim != 1:
            raise ValueError(f"{method}: {name} must be a 1-D vector, got {value.ndim} dimensions")
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or len(value) == 0:
        raise ValueError(f"{method}: {name} must be a non-empty vector of real numbers, got {value!r}")
    return tuple(_options.real(method, f"{name}[{i}]", v) for i, v in enumerate(value))


def _check_length(method: str, name: str, values: tuple[float, ...], T: int) -> None:
    if len(values) != T:
        raise ValueError(f"{method}: {name} has {len(values)} values but G has {T} tasks")


@register
class RandomWeighting(GramWeighting):
    """w = softmax(z), z ~ N(0, I) of K's dtype (float64) drawn from ``generator`` (or the device's
    default generator) at each call; w does not depend on K."""

    name = "random"
    needs_gram = False

    def __init__(self, *, generator: torch.Generator | None = None, impl: str = "auto"):
        self._set_options(generator=_options.generator(self.name, generator), impl=impl)

    def solve(self, K: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
        generator = _validate.generator_for(self.options["generator"], K.device)
        z = torch.randn(K.shape[0], dtype=K.dtype, device=K.device, generator=generator)
        return torch.softmax(z, dim=0)

    def weights(self, K: torch.Tensor) -> torch.Tensor:
        # w does not depend on K: no NaN policy on K (the update propagates NaN per coordinate).
        return self.solve(K.double(), None)


@register
class Constant(GramWeighting):
    """w = ``weights`` (one real number per task; G must have that many rows)."""

    name = "constant"
    needs_gram = False

    def __init__(self, *, weights, impl: str = "auto"):
        self._set_options(weights=_vector_option(self.name, "weights", weights), impl=impl)
        self._constants: dict = {}

    def solve(self, K: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
        _check_length(self.name, "weights", self.options["weights"], K.shape[0])
        return on_device(self._constants, self.options["weights"], K.device).to(K.dtype)  # copied once per device

    def weights(self, K: torch.Tensor) -> torch.Tensor:
        return self.solve(K.double(), None)  # as sum/mean: no NaN policy on K


@register
class Krum(GramWeighting):
    """Scores from the pairwise distances |g_i - g_j|² = K_ii + K_jj - 2 K_ij (clamped at 0); the
    ``n_selected`` lowest scores get weight 1/n_selected each (ties: the lower task index first).
    Needs T >= n_byzantine + 3 (at least one neighbour) and T >= n_selected, as torchjd."""

    name = "krum"

    def __init__(self, *, n_byzantine: int, n_selected: int = 1, squared: bool = True, impl: str = "auto"):
        self._set_options(n_byzantine=_options.integer(self.name, "n_byzantine", n_byzantine, low=0),
                          n_selected=_options.integer(self.name, "n_selected", n_selected, low=1),
                          squared=_options.flag(self.name, "squared", squared), impl=impl)

    def solve(self, K: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
        T, f, m = K.shape[0], self.options["n_byzantine"], self.options["n_selected"]
        if T < f + 3:
            raise ValueError(f"{self.name}: needs at least n_byzantine + 3 = {f + 3} tasks, G has {T}")
        if T < m:
            raise ValueError(f"{self.name}: n_selected = {m} is more than the {T} tasks of G")
        norms_sq = K.diagonal()
        distances = (norms_sq[:, None] + norms_sq[None, :] - 2 * K).clamp_min(0)  # d_ii = 0 exactly
        if not self.options["squared"]:
            distances = distances.sqrt()
        # Row i sorted: its first entry is d_ii = 0 (the smallest possible), the next T - f - 2
        # are its nearest other gradients.
        nearest = distances.sort(dim=1).values[:, 1:T - f - 1]
        scores = nearest.sum(dim=1)
        selected = torch.argsort(scores, stable=True)[:m]
        return torch.zeros(T, dtype=K.dtype, device=K.device).index_fill(0, selected, 1.0 / m)


@register
class ConFIG(GramWeighting):
    """In Gram space: with D = diag(|g_i|) (1/|g_i| read as 0 for a zero gradient, torchjd's
    nan_to_num) and K_u = D⁻¹ K D⁻¹, the pseudo-inverse direction is Gᵀc with c = D⁻¹ pinv(K_u) w
    (pinv(U) = Uᵀ pinv(U Uᵀ)); its norm is √(cᵀKc), so d = (1ᵀKc / max(cᵀKc, 1e-24)) Gᵀc (torchjd's
    normalisation floor of 1e-12 on the norm). pinv(K_u) from torch.linalg.pinv(hermitian=True),
    whose error check synchronises with the host once per weight update on a GPU (no error-free
    form in torch). Gram space squares the condition number: gradients whose unit vectors are
    nearly dependent (smallest singular value below ~1e-7 of the largest) are cut by the rank
    threshold where torchjd's SVD of the unit rows would still keep them.

    The rank threshold follows the precision K was accumulated in (``gram(G)`` records it, as
    PCD): eigenvalues of K_u below 8 T eps of that dtype are rounding noise. float32 gradients
    give a float32-accumulated K whose noise eigenvalues are ~1e-7 relative, far above a float64
    threshold: pinv would then divide by noise (torchjd's unchanged unit tests on rank-deficient
    float32 Jacobians, run through fastmtl.compat.torchjd, found updates of 1e30)."""

    name = "config"

    def __init__(self, *, pref_vector=None, impl: str = "auto"):
        if pref_vector is not None:
            pref_vector = _vector_option(self.name, "pref_vector", pref_vector)
        self._set_options(pref_vector=pref_vector, impl=impl)
        self._pinv_rtol = _PINV_RTOL
        self._constants: dict = {}

    def weights(self, K: torch.Tensor) -> torch.Tensor:
        self._pinv_rtol = 8 * torch.finfo(self.precision_dtype(K)).eps
        return super().weights(K)

    def solve(self, K: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
        T = K.shape[0]
        pref = self.options["pref_vector"]
        if pref is None:
            w = torch.ones(T, dtype=K.dtype, device=K.device)
        else:
            _check_length(self.name, "pref_vector", pref, T)
            w = on_device(self._constants, pref, K.device).to(K.dtype)  # copied once per device
        norms = K.diagonal().clamp_min(0).sqrt()
        inverse = torch.where(norms > 0, 1 / torch.where(norms > 0, norms, 1.0), torch.zeros_like(norms))
        K_unit = K * torch.outer(inverse, inverse)
        a = torch.linalg.pinv(K_unit, hermitian=True, rtol=self._pinv_rtol * T) @ w
        c = inverse * a
        length_times_norm = (K @ c).sum()  # Σ_i g_i · (Gᵀc)
        norm_sq = a @ K_unit @ a  # |Gᵀc|² = |Uᵀa|², free of G's scale
        return c * (length_times_norm / norm_sq.clamp_min(1e-24))


# Relative eigenvalue threshold of pinv(K_u), per task: K_u's rounding errors are O(T u |K_u|), so
# eigenvalues below 8 T eps |K_u| are noise (exactly dependent gradients give such eigenvalues).
_PINV_RTOL = 8 * torch.finfo(torch.float64).eps


@register
class TrimmedMean(ElementwiseMethod):
    """Coordinate by coordinate: sort the T values, drop the ``trim_number`` largest and smallest,
    average the rest (in G's accumulation dtype). Needs T >= 2 trim_number + 1, as torchjd.
    ``signs`` and ``batch`` (feature mode) do not change it; with no randomness, a column shard's
    result is those columns of the whole result whatever ``column_offset``. A column holding a
    NaN or an infinity gives NaN (a trimmed one too: non-finite input never becomes finite)."""

    name = "trimmed_mean"

    def __init__(self, *, trim_number: int, impl: str = "auto"):
        super().__init__(trim_number=_options.integer(self.name, "trim_number", trim_number, low=0),
                         impl=_impl(self.name, impl))

    def __call__(
        self, G: torch.Tensor, *, signs: torch.Tensor | None = None, batch: int | None = None, column_offset: int = 0
    ) -> torch.Tensor:
        G = _validate.task_matrix(G)
        T, k = G.shape[0], self.options["trim_number"]
        if T < 2 * k + 1:
            raise ValueError(f"{self.name}: trim_number = {k} needs at least {2 * k + 1} tasks, G has {T}")
        kept = G if k == 0 else G.sort(dim=0).values[k:T - k]
        mean = kept.sum(dim=0, dtype=accumulate_dtype(G.dtype)) / (T - 2 * k)
        mean = torch.where(torch.isfinite(G).all(dim=0), mean, torch.full_like(mean, float("nan")))
        return mean.to(G.dtype)
