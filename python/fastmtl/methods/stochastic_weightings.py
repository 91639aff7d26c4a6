"""Stateful weightings from the stochastic multi-objective literature (torchjd 0.18's MoDo, SDMGrad,
CR-MOGM and ExcessMTL), written from their papers and checked against torchjd on the same inputs
(tests/test_stochastic_weightings.py). Each keeps task weights across steps; a step whose input is
not finite returns NaN and leaves the whole state as it was (chosen by torch.where on a device
flag: no host synchronisation per step).

* MoDo (Chen, Fernando, Ying, Chen 2024, JMLR, "Three-Way Trade-Off in Multi-Objective Learning:
  Optimization, Generalization and Conflict-Avoidance", Eq. 2.9a): projected gradient descent of
  the weights, λ ← Π_Δ(λ - γ (A λ + ρ λ)), from λ = 1/T; the weights are λ.
* SDMGrad (Xiao, Ban, Ji 2023, NeurIPS, "Direction-oriented Multi-objective Learning: Simple and
  Provable Stochastic Algorithms", Alg. 1): ``n_iter`` projected SGD steps with momentum on
  w ↦ ½|Gᵀ(w + λ w̃)|², A normalised first; the weights are (w + λ w̃) / (1 + λ).
* CR-MOGM (Zhou, Zhang, Jiang, Li, Yang 2022, NeurIPS, "On the Convergence of Stochastic
  Multi-Objective Gradient Manipulation and Beyond", Alg. 2): an exponential moving average of
  another Gram-space weighting's weights, λ_k = α λ_{k-1} + (1 - α) λ̂_k.
* ExcessMTL (He, Zhou, Li, Wang, Ma, Zhao 2024, ICML, "Robust Multi-Task Learning with Excess
  Risks", Eq. 6-9): exponentiated-gradient weights driven by each task's excess-risk estimate
  Σ_p g_p² / √(Σ_steps g_p²), which needs G itself (an element-wise method here).

The simplex projection Π_Δ is Duchi et al. 2008's sort-based rule, with no data-dependent loop.
"""

from __future__ import annotations

import torch

from fastmtl import _validate, functional
from fastmtl._numerics import accumulate_dtype
from fastmtl.methods import _options
from fastmtl.methods._state import check_keys, on_device
from fastmtl.methods.base import (
    ElementwiseMethod,
    GramWeighting,
    _impl,
    create,
    method_class,
    register,
)
from fastmtl.methods.peers_torchjd import _check_length, _vector_option


def project_onto_simplex(y: torch.Tensor) -> torch.Tensor:
    """The Euclidean projection of y [T] onto {x >= 0, Σx = 1} (Duchi et al. 2008, Fig. 1):
    with s = y sorted descending, ρ the largest j with s_j > (Σ_{i<=j} s_i - 1) / j, and
    θ = (Σ_{i<=ρ} s_i - 1) / ρ, the projection is max(y - θ, 0). j = 1 always qualifies, so ρ
    exists; ρ and θ are picked with tensor ops (a max and a gather), never read on the host.
    y is first shifted by its maximum (Π(y - c1) = Π(y)): the sums then hold the simplex's scale
    next to y's spread, so a y far larger than 1 (e.g. MoDo's step on a huge K) still projects
    to a point of the simplex (a vertex) instead of losing the 1 to cancellation."""
    T = y.shape[0]
    y = y - y.max()
    s = torch.sort(y, descending=True).values
    shifted = torch.cumsum(s, dim=0) - 1
    j = torch.arange(1, T + 1, dtype=y.dtype, device=y.device)
    qualifies = s * j > shifted  # s_j > (cs_j - 1) / j, without the division
    rho = torch.where(qualifies, torch.arange(T, device=y.device), 0).max()  # the last qualifying index
    theta = shifted.gather(0, rho.reshape(1)) / (rho + 1).to(y.dtype)
    return (y - theta).clamp_min(0)


_ROOT_EPS = torch.tensor(1e-7, dtype=torch.float64).sqrt()  # ExcessMTL's √1e-7, h = hypot(√S, √1e-7)


def _uniform(T: int, like: torch.Tensor) -> torch.Tensor:
    return torch.full((T,), 1.0 / T, dtype=torch.float64, device=like.device)


def _previous(state: torch.Tensor | None, T: int, like: torch.Tensor) -> torch.Tensor:
    """The stored weights on ``like``'s device (e.g. resumed on a GPU), or the uniform start on the
    first step and whenever T changed (start over, as GradVac)."""
    if state is None or state.shape != (T,):
        return _uniform(T, like)
    return state.to(device=like.device, dtype=torch.float64)


def _load_vector(method: str, state: dict, key: str) -> torch.Tensor | None:
    value = state[key]
    if value is None:
        return None
    if not isinstance(value, torch.Tensor) or value.dim() != 1 or value.shape[0] == 0:
        raise ValueError(f"{method}: state_dict[{key!r}] must be a non-empty [T] tensor or None, got "
                         f"{getattr(value, 'shape', value)!r}")
    return value.detach().clone()


def _kept_on_nan(out: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """The new weights of a simplex_descent_weights output [w | weights], or the previous ones when
    the op made every output NaN (a non-finite K: a finite K keeps every value finite, as each
    step is a projection onto the simplex)."""
    return torch.where(out[0].isnan(), previous, out[:previous.shape[0]])


@register
class MoDo(GramWeighting):
    """MoDo's weight step, λ ← Π_Δ(λ - γ (A λ + ρ λ)) from λ_0 = 1/T (``gamma`` > 0, ``rho`` >= 0);
    the weights are the new λ, so they sum to 1 (same scale as torchjd's MoDoWeighting).

    A: the paper uses A = J_1 J_2ᵀ, the product of two independent mini-batches' Jacobians (an
    unbiased estimate of the Gram matrix, not symmetric in general). MTLOptimizer and
    ``method(G)`` pass the one batch's K = G Gᵀ (biased: it over-weights the noise); for the
    paper's form call ``method.weights(A)`` with A = J_1 J_2ᵀ (any square [T, T], not necessarily
    symmetric) and combine the weights yourself. λ depends on A's scale (γ is a step size on A):
    the update is not scale-linear, and under a GradScaler MTLOptimizer divides the scale out of
    K first (``scale_linear = False``). The state is λ [T] (float64)."""

    name = "modo"
    scale_linear = False

    def __init__(self, *, gamma: float = 0.1, rho: float = 0.1, impl: str = "auto"):
        self._set_options(gamma=_options.real(self.name, "gamma", gamma, low=0.0, low_open=True),
                          rho=_options.real(self.name, "rho", rho, low=0.0), impl=impl)
        self.lam: torch.Tensor | None = None

    def solve(self, K: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
        previous = _previous(self.lam, K.shape[0], K)
        step = K @ previous + self.options["rho"] * previous
        lam = project_onto_simplex(previous - self.options["gamma"] * step)
        self.lam = torch.where(finite, lam, previous)
        return lam

    def compiled_solve(self, K: torch.Tensor) -> torch.Tensor:  # csrc/include/fastmtl/simplex_descent_math.h
        previous = _previous(self.lam, K.shape[0], K)
        out = torch.ops.fastmtl.simplex_descent_weights(K, previous, previous, self.options["gamma"], 0.0,
                                                        self.options["rho"], 0.0, 1, False)
        self.lam = _kept_on_nan(out, previous)
        return out[K.shape[0]:]

    def state_dict(self) -> dict:
        return {"lambda": self.lam}

    def load_state_dict(self, state: dict) -> None:
        check_keys(self.name, state, {"lambda"})
        self.lam = _load_vector(self.name, state, "lambda")


@register
class SDMGrad(GramWeighting):
    """SDMGrad's inner solve: with w̃ = ``pref_vector`` (1/T each by default), Â = A / (m² + 1e-8)
    where m is the mean of √max(A_ii, 0) (the official code's scale normalisation, paper §6.1),
    and v = 0, ``n_iter`` steps of v ← μ v + Â (w + λ w̃), w ← Π_Δ(w - lr v) from the stored w
    (1/T at first); the weights are (w + λ w̃) / (1 + λ), λ = ``lambda_`` (torchjd's name; 0.3 as
    the official experiments and torchjd). Σ weights = 1 when Σ w̃ = 1 (same scale as torchjd).

    A: the paper's A = J_1 J_2ᵀ from two independent mini-batches (not symmetric in general):
    pass it to ``method.weights(A)``; MTLOptimizer and ``method(G)`` use the batch's K = G Gᵀ.
    The normalisation makes the weights independent of A's scale up to the 1e-8; so that a
    GradScaler's scale does not meet that 1e-8, ``scale_linear`` is False (MTLOptimizer divides
    the scale out of K). The state is w [T] (float64)."""

    name = "sdmgrad"
    scale_linear = False

    def __init__(self, *, lr: float = 10.0, momentum: float = 0.5, n_iter: int = 20, lambda_: float = 0.3,
                 pref_vector=None, impl: str = "auto"):
        momentum = _options.real(self.name, "momentum", momentum, low=0.0)
        if momentum >= 1:
            raise ValueError(f"{self.name}: momentum must be < 1, got {momentum!r}")
        if pref_vector is not None:
            pref_vector = _vector_option(self.name, "pref_vector", pref_vector)
        self._set_options(lr=_options.real(self.name, "lr", lr, low=0.0, low_open=True), momentum=momentum,
                          n_iter=_options.integer(self.name, "n_iter", n_iter),
                          lambda_=_options.real(self.name, "lambda_", lambda_, low=0.0),
                          pref_vector=pref_vector, impl=impl)
        self.w: torch.Tensor | None = None
        self._constants: dict = {}

    def _preference(self, K: torch.Tensor) -> torch.Tensor:
        T, pref = K.shape[0], self.options["pref_vector"]
        if pref is None:
            return _uniform(T, K)
        _check_length(self.name, "pref_vector", pref, T)
        return on_device(self._constants, pref, K.device)

    def solve(self, K: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
        lr, mu, lam = self.options["lr"], self.options["momentum"], self.options["lambda_"]
        target = self._preference(K)
        previous = _previous(self.w, K.shape[0], K)
        m = K.diagonal().clamp_min(0).sqrt().mean()
        A = K / (m * m + 1e-8)
        w, velocity = previous, torch.zeros_like(previous)
        for _ in range(self.options["n_iter"]):
            velocity = mu * velocity + A @ (w + lam * target)
            w = project_onto_simplex(w - lr * velocity)
        self.w = torch.where(finite, w, previous)
        return (w + lam * target) / (1 + lam)

    def compiled_solve(self, K: torch.Tensor) -> torch.Tensor:  # csrc/include/fastmtl/simplex_descent_math.h
        previous = _previous(self.w, K.shape[0], K)
        out = torch.ops.fastmtl.simplex_descent_weights(
            K, previous, self._preference(K), self.options["lr"], self.options["momentum"], 0.0,
            self.options["lambda_"], self.options["n_iter"], True)
        self.w = _kept_on_nan(out, previous)
        return out[K.shape[0]:]

    def state_dict(self) -> dict:
        return {"w": self.w}

    def load_state_dict(self, state: dict) -> None:
        check_keys(self.name, state, {"w"})
        self.w = _load_vector(self.name, state, "w")


@register
class CRMOGM(GramWeighting):
    """CR-MOGM's smoothing of another Gram-space weighting ``base`` (a method name, e.g. "mgda",
    "upgrad"; built with ``base_options``, whose ``impl`` defaults to this method's): with λ̂_k the
    base's weights at step k, λ_k = α λ_{k-1} + (1 - α) λ̂_k, ``alpha`` in [0, 1] (0.9, as torchjd;
    the paper's Corollary 1 lets α_k → 1 with the learning rate: build a new method to change it).
    λ_0 = ``initial_weights`` (one per task) when given, else λ̂_1 (the first output is then the
    base's). Scale: the base's (an average of its weights). The base's ``weights()`` runs, so its
    compiled op runs where it has one. A step where K or λ̂ is not finite returns NaN and leaves λ
    as it was (the base applies its own NaN policy to its state). The state is λ, whether it has
    started, and the base's state. Unlike torchjd (which raises), a change of T starts over."""

    name = "crmogm"

    def __init__(self, *, base: str, base_options: dict | None = None, alpha: float = 0.9,
                 initial_weights=None, impl: str = "auto"):
        if not isinstance(base, str):
            raise TypeError(f"{self.name}: base must be the name of a Gram-space method (e.g. 'upgrad'), got "
                            f"{type(base).__name__} (a method object would share its state)")
        try:
            base_class = method_class(base)
        except ValueError as error:
            raise ValueError(f"{self.name}: base: {error}") from None
        if not issubclass(base_class, GramWeighting):  # a wrong name (a value), hence ValueError
            raise ValueError(  # noqa: TRY004
                f"{self.name}: base {base!r} is not a Gram-space weighting (it is a "
                f"{base_class.family} method); CR-MOGM averages task weights")
        if base_options is None:
            base_options = {}
        if not isinstance(base_options, dict):
            raise TypeError(f"{self.name}: base_options must be a dict of the base's options, got "
                            f"{type(base_options).__name__}")
        if initial_weights is not None:
            initial_weights = _vector_option(self.name, "initial_weights", initial_weights)
        self._set_options(base=base, base_options=dict(base_options),
                          alpha=_options.real(self.name, "alpha", alpha, low=0.0, high=1.0),
                          initial_weights=initial_weights, impl=impl)
        if base_class.needs_losses:
            raise ValueError(f"{self.name}: base {base!r} reads the task losses; CR-MOGM averages weights of K alone")
        try:
            self.base = create(base, **{"impl": self.impl, **base_options})
        except (TypeError, ValueError) as error:
            raise type(error)(f"{self.name}: base_options for {base!r}: {error}") from None
        if self.base.parameters():
            raise ValueError(f"{self.name}: base {base!r} learns tensors of its own, which CR-MOGM would not train")
        self.needs_gram = self.base.needs_gram  # e.g. a base "mean" never reads K
        self.scale_linear = self.base.scale_linear
        self.lam: torch.Tensor | None = None
        self.started: torch.Tensor | None = None
        self._constants: dict = {}

    def _smooth(self, estimate: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
        T = estimate.shape[0]
        if self.lam is None or self.lam.shape != (T,):  # first step, or T changed: start over
            lam = torch.zeros(T, dtype=torch.float64, device=estimate.device)
            started = torch.zeros((), dtype=torch.bool, device=estimate.device)
        else:
            lam = self.lam.to(device=estimate.device, dtype=torch.float64)
            started = self.started.to(device=estimate.device)
        initial = self.options["initial_weights"]
        if initial is None:
            start = estimate
        else:
            _check_length(self.name, "initial_weights", initial, T)
            start = on_device(self._constants, initial, estimate.device)
        alpha = self.options["alpha"]
        smoothed = alpha * torch.where(started, lam, start) + (1 - alpha) * estimate
        finite = finite & torch.isfinite(estimate).all()
        self.lam = torch.where(finite, smoothed, lam)
        self.started = started | finite
        return torch.where(finite, smoothed, torch.full_like(smoothed, float("nan")))

    def gram(self, G: torch.Tensor) -> torch.Tensor:
        return self.base.gram(G)  # the base's (e.g. PCD records G's accumulation dtype there)

    def weights(self, K: torch.Tensor) -> torch.Tensor:
        self.check_gram(K)
        K = K.detach()
        # Only a K the base reads can poison the step: sum/mean/random/constant ignore theirs.
        finite = torch.isfinite(K).all() if self.needs_gram else torch.ones((), dtype=torch.bool, device=K.device)
        return self._smooth(self.base.weights(K).double(), finite)

    def solve(self, K: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:  # the torch path of weights()
        return self._smooth(self.base.solve(K, finite).double(), finite)

    def state_dict(self) -> dict:
        return {"base": self.options["base"], "lambda": self.lam, "started": self.started,
                "base_state": self.base.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        check_keys(self.name, state, {"base", "lambda", "started", "base_state"})
        if state["base"] != self.options["base"]:
            raise ValueError(f"{self.name}: the state_dict is for base {state['base']!r}, this method smooths "
                             f"{self.options['base']!r}")
        lam = _load_vector(self.name, state, "lambda")
        started = state["started"]
        if (lam is None) != (started is None) or (
                started is not None and (not isinstance(started, torch.Tensor) or started.shape != ()
                                         or started.dtype != torch.bool)):
            raise ValueError(f"{self.name}: state_dict['started'] must be a 0-d bool tensor alongside 'lambda' "
                             f"(both None before the first step), got {started!r}")
        self.base.load_state_dict(state["base_state"])
        self.lam, self.started = lam, None if started is None else started.clone()


@register
class ExcessMTL(ElementwiseMethod):
    """ExcessMTL: each task's excess risk is estimated by a second-order expansion with an
    AdaGrad-style diagonal Hessian (Eq. 6-7), Ê_t = Σ_p g_tp² / h_tp with h = √(S + 1e-7) and
    S = Σ_{steps} g² (this step included); the weights then take one exponentiated-gradient step
    (Eq. 9), w ← softmax(log w + η Ê_t / (b_t + 1e-7)), η = ``robust_step_size``, from w = 1/T
    (the paper's simplex start, as torchjd; the official code starts from ones). The baseline b
    (scale processing, §3.2): the mean Ê over the first ``n_warmup_steps`` steps, during which the
    weights stay uniform (Appendix C.1); with no warm-up, the first step's Ê, which that step uses
    undivided (the official code and torchjd). The update is Σ_t w_t g_t (weights sum to 1, same
    scale as torchjd's ExcessMTL).

    State: R = √S [T, P] (kept as a root and advanced by hypot, so float32 gradients whose squares
    overflow still give finite estimates; G's accumulation dtype: float32 for float32/half input),
    the weights, the baseline and the warm-up sum [T] (float64) and the step count (a 0-d tensor:
    the warm-up/baseline branches are chosen by torch.where, so a skipped non-finite step leaves
    the count too unchanged and nothing is read on the host). A new shape of G starts over.

    Needs whole rows of G: Ê sums over every column, so a column shard (``column_offset`` given,
    MTLOptimizer's sharded reduction) raises, as does feature mode (``signs``/``batch``: its
    columns are samples, whose curvature history means nothing). Under a GradScaler MTLOptimizer
    gives it the unscaled gradients (``scale_linear = False``)."""

    name = "excess_mtl"
    feature_level = False  # Ê sums over the parameters; feature gradients are per sample
    scale_linear = False  # Ê and its history follow G's scale: a GradScaler's must not enter them
    _KEYS = ("root", "weights", "baseline", "warmup_sum", "count")

    def __init__(self, *, robust_step_size: float = 1.0, n_warmup_steps: int = 0, impl: str = "auto"):
        super().__init__(
            robust_step_size=_options.real(self.name, "robust_step_size", robust_step_size, low=0.0, low_open=True),
            n_warmup_steps=_options.integer(self.name, "n_warmup_steps", n_warmup_steps, low=0),
            impl=_impl(self.name, impl))
        self.root: torch.Tensor | None = None  # √S [T, P]
        self.task_weights: torch.Tensor | None = None
        self.baseline: torch.Tensor | None = None
        self.warmup_sum: torch.Tensor | None = None
        self.count: torch.Tensor | None = None

    def _state_for(self, G: torch.Tensor):
        T, P = G.shape
        dtype = accumulate_dtype(G.dtype)
        if self.root is None or self.root.shape != (T, P):
            vector = torch.zeros(T, dtype=torch.float64, device=G.device)
            return (torch.zeros(T, P, dtype=dtype, device=G.device), _uniform(T, G), vector, vector,
                    torch.zeros((), dtype=torch.int64, device=G.device))
        on = {"device": G.device}
        return (self.root.to(dtype=dtype, **on), self.task_weights.to(**on), self.baseline.to(**on),
                self.warmup_sum.to(**on), self.count.to(**on))

    def __call__(self, G: torch.Tensor, *, signs: torch.Tensor | None = None, batch: int | None = None,
                 column_offset: int | None = None) -> torch.Tensor:
        G = _validate.task_matrix(G)
        if column_offset is not None:
            raise ValueError(f"{self.name}: its excess risks sum over every column of G, so a column shard "
                             f"(column_offset={column_offset!r}) would give this shard's weights, not the whole "
                             "G's: use it without a sharded reduction")
        if signs is not None or batch is not None:
            raise ValueError(f"{self.name}: feature mode is not supported (its curvature state S belongs to "
                             "parameters; a feature-level G's columns are samples)")
        root, weights, baseline, warmup_sum, count = self._state_for(G)
        n_warmup, eta = self.options["n_warmup_steps"], self.options["robust_step_size"]
        finite = torch.isfinite(G).all()

        g = G.to(root.dtype)
        new_root = torch.hypot(root, g)
        h = torch.hypot(new_root, _ROOT_EPS.to(root.dtype))  # √(S + 1e-7); a CPU 0-d tensor: a scalar
        excess = (g * (g / h)).sum(dim=1, dtype=torch.float64)  # g²/h = g (g/h): no g² to overflow

        in_warmup = count < n_warmup
        first = count == n_warmup  # the first step after the warm-up: it sets the baseline
        if n_warmup > 0:
            new_baseline = torch.where(first, warmup_sum / n_warmup, baseline)  # the warm-up steps' mean
            ratio = excess / (new_baseline + 1e-7)
        else:
            new_baseline = torch.where(first, excess, baseline)
            ratio = torch.where(first, excess, excess / (new_baseline + 1e-7))
        stepped = torch.softmax(torch.log(weights) + eta * ratio, dim=0)
        new_weights = torch.where(in_warmup, weights, stepped)
        new_warmup_sum = torch.where(in_warmup, warmup_sum + excess, warmup_sum)

        self.root = torch.where(finite, new_root, root)
        self.task_weights = torch.where(finite, new_weights, weights)
        self.baseline = torch.where(finite, new_baseline, baseline)
        self.warmup_sum = torch.where(finite, new_warmup_sum, warmup_sum)
        self.count = count + finite.to(count.dtype)

        direction = functional.combine(G, new_weights, impl=self.options["impl"])
        return torch.where(finite, direction, torch.full_like(direction, float("nan")))

    def state_dict(self) -> dict:
        return {"root": self.root, "weights": self.task_weights, "baseline": self.baseline,
                "warmup_sum": self.warmup_sum, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        check_keys(self.name, state, set(self._KEYS))
        values = [state[key] for key in self._KEYS]
        if all(value is None for value in values):
            self.root = self.task_weights = self.baseline = self.warmup_sum = self.count = None
            return
        if not all(isinstance(value, torch.Tensor) for value in values):
            raise ValueError(f"{self.name}: state_dict entries must be all tensors or all None")
        root, weights, baseline, warmup_sum, count = values
        T = weights.shape[0] if weights.dim() == 1 else -1
        if (root.dim() != 2 or root.shape[0] != T or baseline.shape != (T,) or warmup_sum.shape != (T,)
                or count.shape != () or count.dtype != torch.int64):
            raise ValueError(f"{self.name}: inconsistent state_dict shapes: root {tuple(root.shape)}, weights "
                             f"{tuple(weights.shape)}, baseline {tuple(baseline.shape)}, warmup_sum "
                             f"{tuple(warmup_sum.shape)}, count {tuple(count.shape)} {count.dtype} (expected "
                             "[T, P], [T], [T], [T] and a 0-d int64)")
        self.root, self.task_weights, self.baseline, self.warmup_sum, self.count = (v.detach().clone() for v in values)
