"""Four methods of LibMTL's later releases (not on PyPI): DB-MTL and MoCo, which track each task's
gradient across steps (state [T, P], element-wise methods that also read the step's loss values),
and FAMO and STCH, which build one loss from the task losses (loss-side methods).

Every per-step computation stays on the device: step counters are tensors, branches are chosen
with torch.where, nothing is read on the host. NaN policy: a step whose inputs (G, the losses) or
derived quantities are not finite returns NaN (an all-NaN direction, or a NaN loss) and leaves the
state as it was, so that a step a GradScaler skips does not poison the state. State tensors are
never changed in place, so ``state_dict()`` hands out the current tensors and ``load_state_dict``
clones what it is given.
"""

from __future__ import annotations

import torch

from fastmtl import _validate, functional
from fastmtl._numerics import accumulate_dtype
from fastmtl.methods import _options
from fastmtl.methods.base import ElementwiseMethod, LossMethod, register
from fastmtl.methods._state import check_keys, on_device, stacked_losses
from fastmtl.methods.stochastic_weightings import project_onto_simplex

# ----- shared pieces ---------------------------------------------------------------------------


def _parameter_level(method: str, signs, batch, column_offset) -> None:
    """DB-MTL and MoCo follow each column of G from step to step and take norms over whole rows:
    feature-level G (other samples every step) and column shards do not fit (LibMTL refuses
    rep_grad=True for both)."""
    if signs is not None or batch is not None:
        raise ValueError(f"{method} tracks each parameter's gradient across steps: it works on parameter "
                         "gradients, not in feature mode (signs/batch)")
    if isinstance(column_offset, bool) or not isinstance(column_offset, int) or column_offset != 0:
        raise ValueError(f"{method} needs whole rows of G (its task-gradient norms span every column): "
                         f"column_offset must be 0, got {column_offset!r}")


def _decayed(base: float, sigma: float, steps: torch.Tensor) -> torch.Tensor:
    """base / k^sigma for the 1-based step k (a float64 device tensor): LibMTL's step sizes."""
    return base / steps.double() ** sigma


def _nan_unless(finite: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """1 where ``finite``, else NaN: multiplying the loss by it makes both its value and its
    gradient NaN on a bad step (torch.where would back-propagate zeros, which a GradScaler would
    not skip and momentum would still apply)."""
    return torch.where(finite, torch.ones((), dtype=like.dtype, device=like.device),
                       torch.full((), float("nan"), dtype=like.dtype, device=like.device))


def _moved(state: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if state is None else state.to(device)  # e.g. a CPU checkpoint resumed on a GPU


def _tensor(method: str, state: dict, key: str, shape: tuple | None = None) -> torch.Tensor:
    value = state[key]
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{method}: state_dict[{key!r}] must be a tensor, got {type(value).__name__}")
    if shape is not None and tuple(value.shape) != shape:
        raise ValueError(f"{method}: state_dict[{key!r}] has shape {tuple(value.shape)}, expected {shape}")
    return value.detach().clone()


# ----- DB-MTL -----------------------------------------------------------------------------------


@register
class DBMTL(ElementwiseMethod):
    """DB-MTL (Lin, Jiang, Ye, Zhang, Chen, Chen, Liu, Tsang, Kwok, 2023, "Dual-Balancing for
    Multi-Task Learning"). Loss balancing: each task's loss is log-transformed, so its gradient
    is h_t = ∇log(L_t + eps) = g_t / (L_t + eps) (read from G and the step's losses: one backward
    per task, as for the plain losses). Gradient balancing: an EMA of h_t, with LibMTL's step
    size β_k = beta / k^beta_sigma at the k-th step and a zero start (no bias correction):
        ĝ_t ← h_t + β_k (ĝ_t - h_t) = β_k ĝ_t + (1 - β_k) h_t,
    then every ĝ_t is rescaled to the largest EMA norm and the results are summed:
        d = Σ_t (max_s |ĝ_s| / (|ĝ_t| + eps)) ĝ_t.
    Scale: LibMTL's DB_MTL exactly (a sum over tasks, each term of norm max_s |ĝ_s|; with the zero
    start the first step's d is (1 - β_1) times the balanced log-gradients). Defaults are LibMTL's
    (DB_beta = 0.9, DB_beta_sigma = 0, the 1e-8 in both places). Differences: a step whose G or
    losses are not finite, or has some L_t + eps <= 0 (log undefined), returns NaN and keeps the
    state (LibMTL's EMA would take the NaN); the heads get the plain gradient of Σ L_t
    (MTLOptimizer's convention; LibMTL back-propagates the log losses into them). State: the step
    count and the EMA [T, P] (in G's accumulation dtype); it starts over when G's shape changes.
    Needs the step's losses (``needs_losses``) and whole parameter-level rows of G."""

    name = "db_mtl"
    needs_losses = True
    feature_level = False  # whole parameter-level rows of G
    scale_linear = False  # state across steps: a GradScaler's changing scale must not enter it

    def __init__(self, *, beta: float = 0.9, beta_sigma: float = 0.0, eps: float = 1e-8):
        super().__init__(beta=_options.real(self.name, "beta", beta, low=0.0, high=1.0),
                         beta_sigma=_options.real(self.name, "beta_sigma", beta_sigma, low=0.0),
                         eps=_options.real(self.name, "eps", eps, low=0.0, low_open=True))
        self.steps: torch.Tensor | None = None  # int64, 0-d: finite steps taken
        self.ema: torch.Tensor | None = None  # [T, P]

    def __call__(self, G: torch.Tensor, *, signs=None, batch=None, column_offset: int = 0) -> torch.Tensor:
        G = _validate.task_matrix(G)
        _parameter_level(self.name, signs, batch, column_offset)
        losses = self.losses_for(G.shape[0]).to(device=G.device, dtype=torch.float64)
        acc, eps = accumulate_dtype(G.dtype), self.options["eps"]
        steps, ema = _moved(self.steps, G.device), _moved(self.ema, G.device)
        if ema is None or ema.shape != G.shape:  # first step, or G changed: start over
            steps = torch.zeros((), dtype=torch.int64, device=G.device)
            ema = torch.zeros(G.shape, dtype=acc, device=G.device)
        ema = ema.to(acc)
        shifted = losses + eps
        usable = torch.isfinite(losses).all() & (shifted > 0).all()
        log_gradients = G.to(acc) * (1.0 / torch.where(shifted > 0, shifted, 1.0)).to(acc)[:, None]
        beta_k = _decayed(self.options["beta"], self.options["beta_sigma"], steps + 1).to(acc)
        new_ema = log_gradients + beta_k * (ema - log_gradients)  # LibMTL's form of the EMA step
        K = functional.gram_for_weights(new_ema).double()  # the norms, in float64 where float32 overflows
        finite = usable & torch.isfinite(K).all()
        norms = K.diagonal().clamp_min(0).sqrt()
        alpha = norms.max() / (norms + eps)
        direction = functional.combine(new_ema, torch.where(finite, alpha, torch.zeros_like(alpha))).to(G.dtype)
        self.ema = torch.where(finite, new_ema, ema)
        self.steps = steps + finite.long()
        return torch.where(finite, direction, torch.full_like(direction, float("nan")))

    def state_dict(self) -> dict:
        return {} if self.ema is None else {"steps": self.steps, "ema": self.ema}

    def load_state_dict(self, state: dict) -> None:
        check_keys(self.name, state, {"steps", "ema"}, empty_ok=True)
        if not state:
            self.steps = self.ema = None
            return
        steps, ema = _tensor(self.name, state, "steps", ()), _tensor(self.name, state, "ema")
        if ema.dim() != 2:
            raise ValueError(f"{self.name}: state_dict['ema'] must be [T, P], got shape {tuple(ema.shape)}")
        self.steps, self.ema = steps.long(), ema


# ----- MoCo -------------------------------------------------------------------------------------

_LAMBDA_MAPS = ("projection", "softmax")


@register
class MoCo(ElementwiseMethod):
    """MoCo (Fernando, Shen, Liu, Chaudhury, Murugesan, Chen, 2023, "Mitigating Gradient Bias in
    Multi-objective Learning: A Provably Convergent Approach"). Per step k, with LibMTL's
    normalisation of each task gradient to its loss value, ĝ_t = L_t g_t / (|g_t| + 1e-8):
        y ← y - β_k (y - ĝ)                          (tracking, y [T, P], zero start)
        λ ← Π(λ - γ_k (y yᵀ + ρ I) λ)                (λ [T], start 1/T)
        d = yᵀ λ,
    β_k = beta / k^beta_sigma, γ_k = gamma / k^gamma_sigma. Π (``lambda_map``): "projection", the
    Euclidean projection on the simplex of the paper's Algorithm 1 (sort-based, no host sync), or
    "softmax", LibMTL's map. Defaults are LibMTL's (MoCo_beta 0.5, MoCo_beta_sigma 0.5,
    MoCo_gamma 0.1, MoCo_gamma_sigma 0.5, MoCo_rho 0). Scale: λ sums to 1, so |d| is of the order
    of the losses (LibMTL's scale). Differences: a non-finite step returns NaN and keeps y, λ and
    the step count (LibMTL's would take the NaN). State: step count, y [T, P] (G's accumulation
    dtype), λ (float64); it starts over when G's shape changes. Needs the step's losses
    (``needs_losses``) and whole parameter-level rows of G."""

    name = "moco"
    needs_losses = True
    feature_level = False  # whole parameter-level rows of G
    scale_linear = False  # state across steps: a GradScaler's changing scale must not enter it

    def __init__(self, *, beta: float = 0.5, beta_sigma: float = 0.5, gamma: float = 0.1, gamma_sigma: float = 0.5,
                 rho: float = 0.0, lambda_map: str = "projection", eps: float = 1e-8):
        super().__init__(beta=_options.real(self.name, "beta", beta, low=0.0, high=1.0),
                         beta_sigma=_options.real(self.name, "beta_sigma", beta_sigma, low=0.0),
                         gamma=_options.real(self.name, "gamma", gamma, low=0.0),
                         gamma_sigma=_options.real(self.name, "gamma_sigma", gamma_sigma, low=0.0),
                         rho=_options.real(self.name, "rho", rho, low=0.0),
                         lambda_map=_options.one_of(self.name, "lambda_map", lambda_map, _LAMBDA_MAPS),
                         eps=_options.real(self.name, "eps", eps, low=0.0, low_open=True))
        self.steps: torch.Tensor | None = None
        self.y: torch.Tensor | None = None
        self.lambd: torch.Tensor | None = None

    def __call__(self, G: torch.Tensor, *, signs=None, batch=None, column_offset: int = 0) -> torch.Tensor:
        G = _validate.task_matrix(G)
        _parameter_level(self.name, signs, batch, column_offset)
        T = G.shape[0]
        losses = self.losses_for(T).to(device=G.device, dtype=torch.float64)
        acc, o = accumulate_dtype(G.dtype), self.options
        steps, y, lambd = (_moved(s, G.device) for s in (self.steps, self.y, self.lambd))
        if y is None or y.shape != G.shape:
            steps = torch.zeros((), dtype=torch.int64, device=G.device)
            y = torch.zeros(G.shape, dtype=acc, device=G.device)
            lambd = torch.full((T,), 1.0 / T, dtype=torch.float64, device=G.device)
        y, lambd = y.to(acc), lambd.double()
        K_G = functional.gram_for_weights(G).double()
        norms = K_G.diagonal().clamp_min(0).sqrt()
        normalised = G.to(acc) * (losses / (norms + o["eps"])).to(acc)[:, None]
        k = steps + 1
        new_y = y - _decayed(o["beta"], o["beta_sigma"], k).to(acc) * (y - normalised)
        K = functional.gram_for_weights(new_y).double()
        finite = torch.isfinite(losses).all() & torch.isfinite(K_G).all() & torch.isfinite(K).all()
        K = torch.where(finite, K, torch.eye(T, dtype=K.dtype, device=K.device))  # no NaN into the sort
        step = lambd - _decayed(o["gamma"], o["gamma_sigma"], k) * ((K + o["rho"] * torch.eye(T, dtype=K.dtype,
                                                                                              device=K.device)) @ lambd)
        new_lambd = project_onto_simplex(step) if o["lambda_map"] == "projection" else torch.softmax(step, 0)
        direction = functional.combine(new_y, new_lambd).to(G.dtype)
        self.y = torch.where(finite, new_y, y)
        self.lambd = torch.where(finite, new_lambd, lambd)
        self.steps = steps + finite.long()
        return torch.where(finite, direction, torch.full_like(direction, float("nan")))

    def state_dict(self) -> dict:
        return {} if self.y is None else {"steps": self.steps, "y": self.y, "lambd": self.lambd}

    def load_state_dict(self, state: dict) -> None:
        check_keys(self.name, state, {"steps", "y", "lambd"}, empty_ok=True)
        if not state:
            self.steps = self.y = self.lambd = None
            return
        y = _tensor(self.name, state, "y")
        if y.dim() != 2:
            raise ValueError(f"{self.name}: state_dict['y'] must be [T, P], got shape {tuple(y.shape)}")
        steps, lambd = _tensor(self.name, state, "steps", ()), _tensor(self.name, state, "lambd", (y.shape[0],))
        self.steps, self.y, self.lambd = steps.long(), y, lambd.double()


# ----- FAMO -------------------------------------------------------------------------------------

_ADAM_BETAS, _ADAM_EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults, as LibMTL's w_opt
_FAMO_KEYS = {"xi": "T", "m": "T", "v": "T", "adam_steps": (), "prev_log_d": "T", "has_prev": ()}  # shapes


@register
class FAMO(LossMethod):
    """FAMO (Liu, Liang, Chen, Stone, Liu, 2023, "FAMO: Fast Adaptive Multitask Optimization").
    Task weights z = softmax(ξ) (logits ξ [T], zero start) and the loss, with D_t = L_t - m_t + eps
    (m: ``min_losses``, eps = 1e-8):
        loss = Σ_t z_t log D_t / c,   c = Σ_t z_t / D_t (detached),
    whose gradient Σ_t (z_t / (c D_t)) ∇L_t has weights summing to 1 (LibMTL's scale). ξ learns
    from the decrease of the log losses, δ = log D(before) - log D(after): its gradient is
    J_softmax(ξ)ᵀ δ = z ⊙ δ - z (zᵀ δ), applied by the method's own Adam (lr ``gamma`` = 0.025,
    L2 ``weight_decay`` = 0.001 added to the gradient, betas (0.9, 0.999), eps 1e-8: torch.optim.Adam
    as LibMTL's FAMO_w_lr / FAMO_w_gamma), kept in the state, not in the model's optimizer.
    One-backward form: the paper and LibMTL's trainer measure "after" with an extra forward pass
    on the same batch after the model's update; here "after" is the next step's losses (the next
    batch), so at each step ξ is first updated from (previous losses, these losses) and the loss
    is built with the new z — the same order of updates as LibMTL, without the extra forward; the
    first step uses z uniform. A non-finite step (or some D_t <= 0) gives a NaN loss and leaves
    ξ, the Adam moments and the previous losses as they were. State: ξ, Adam's m, v and step
    count, the previous log D and whether it exists (float64, on the losses' device)."""

    name = "famo"

    def __init__(self, *, n_tasks: int, gamma: float = 0.025, weight_decay: float = 0.001, min_losses=0.0,
                 eps: float = 1e-8):
        n_tasks = _options.integer(self.name, "n_tasks", n_tasks)
        super().__init__(n_tasks=n_tasks, gamma=_options.real(self.name, "gamma", gamma, low=0.0, low_open=True),
                         weight_decay=_options.real(self.name, "weight_decay", weight_decay, low=0.0),
                         min_losses=self._min_losses(min_losses, n_tasks),
                         eps=_options.real(self.name, "eps", eps, low=0.0, low_open=True))
        self._state: dict | None = None
        self._minima: dict = {}  # device -> min_losses as a tensor, copied from the host once

    def _minimum(self, device):
        """min_losses on ``device``: a Python number as it is, per-task values copied once."""
        value = self.options["min_losses"]
        if not isinstance(value, tuple):
            return value
        return on_device(self._minima, value, device)

    @classmethod
    def _min_losses(cls, value, n_tasks: int):
        """One real number for every task, or one per task (a tuple of floats is kept)."""
        if isinstance(value, torch.Tensor):
            value = value.tolist()  # read once, when the method is built
        if isinstance(value, (list, tuple)):
            if len(value) != n_tasks:
                raise ValueError(f"{cls.name}: min_losses must be one number or {n_tasks} (n_tasks), got {len(value)}")
            return tuple(_options.real(cls.name, "min_losses", v) for v in value)
        return _options.real(cls.name, "min_losses", value)

    def loss(self, losses, shared) -> torch.Tensor:
        stacked = stacked_losses(losses)
        T = self.options["n_tasks"]
        if stacked.shape != (T,):
            raise ValueError(f"{self.name}: expected {T} losses (n_tasks), got {stacked.numel()}")
        device = stacked.device
        minimum = self._minimum(device)
        s = self._current_state(T, device)
        log_d = (stacked.detach().double() - minimum + self.options["eps"]).log()  # NaN for D < 0
        finite = torch.isfinite(log_d).all()
        update = finite & s["has_prev"]
        xi, m, v, t = self._adam_step(s, torch.where(update, s["prev_log_d"] - log_d, torch.zeros_like(log_d)))
        xi, m, v, t = (torch.where(update, new, old) for new, old in
                       zip((xi, m, v, t), (s["xi"], s["m"], s["v"], s["adam_steps"])))
        self._state = {"xi": xi, "m": m, "v": v, "adam_steps": t,
                      "prev_log_d": torch.where(finite, log_d, s["prev_log_d"]), "has_prev": s["has_prev"] | finite}
        z = torch.softmax(xi, 0)
        d = stacked - (minimum.to(stacked.dtype) if isinstance(minimum, torch.Tensor) else minimum) + self.options["eps"]
        d64 = stacked.detach().double() - minimum + self.options["eps"]
        c = (z / torch.where(finite, d64, 1.0)).sum()  # detached, float64
        total = ((z / c).to(stacked.dtype) * d.log()).sum()
        return total * _nan_unless(finite, total)

    def _current_state(self, T: int, device) -> dict:
        if self._state is None:
            zeros = torch.zeros(T, dtype=torch.float64, device=device)
            return {"xi": zeros, "m": zeros, "v": zeros, "adam_steps": torch.zeros((), dtype=torch.float64, device=device),
                    "prev_log_d": zeros, "has_prev": torch.zeros((), dtype=torch.bool, device=device)}
        return {key: value.to(device) for key, value in self._state.items()}

    def _adam_step(self, s: dict, delta: torch.Tensor):
        """One step of Adam with L2 weight decay on ξ, whose gradient is J_softmax(ξ)ᵀ δ."""
        z = torch.softmax(s["xi"], 0)
        grad = z * delta - z * (z @ delta) + self.options["weight_decay"] * s["xi"]
        (b1, b2), t = _ADAM_BETAS, s["adam_steps"] + 1
        m = b1 * s["m"] + (1 - b1) * grad
        v = b2 * s["v"] + (1 - b2) * grad * grad
        m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        return s["xi"] - self.options["gamma"] * m_hat / (v_hat.sqrt() + _ADAM_EPS), m, v, t

    def task_weights(self) -> torch.Tensor:
        """The current z = softmax(ξ) (uniform before the first step)."""
        if self._state is None:
            return torch.full((self.options["n_tasks"],), 1.0 / self.options["n_tasks"], dtype=torch.float64)
        return torch.softmax(self._state["xi"], 0)

    def state_dict(self) -> dict:
        return {} if self._state is None else dict(self._state)

    def load_state_dict(self, state: dict) -> None:
        check_keys(self.name, state, set(_FAMO_KEYS), empty_ok=True)
        if not state:
            self._state = None
            return
        T = self.options["n_tasks"]
        loaded = {key: _tensor(self.name, state, key, (T,) if shape == "T" else shape)
                  for key, shape in _FAMO_KEYS.items()}
        self._state = {key: value.bool() if key == "has_prev" else value.double() for key, value in loaded.items()}


# ----- STCH -------------------------------------------------------------------------------------


@register
class STCH(LossMethod):
    """STCH (Lin, Zhang, Liu, Zhang, Zhang, Kwong, 2024, "Smooth Tchebycheff Scalarization for
    Multi-Objective Optimization"), in LibMTL's form for multi-task learning. With
    l_t = log(L_t / n_t + 1e-20) (n: the nadir vector),
        loss = T · mu · log Σ_t exp(l_t / mu),
    whose gradient T Σ_t softmax(l / mu)_t ∇l_t has weights summing to T (LibMTL's scale: the same
    as its warmup loss). Warmup: the first ``warmup_steps`` steps back-propagate
    Σ_t log(L_t + 1e-20), and n is the mean of the losses of the last ``nadir_steps`` of them
    (default: all). LibMTL counts epochs: its nadir is the mean over epoch ``STCH_warmup_epoch``
    (default 4) after that many epochs of warmup, i.e. warmup_steps = (E + 1) · S and nadir_steps
    = S for S steps per epoch. warmup_steps = 0: n = 1, STCH from the first step. The value differs
    from LibMTL's by a detached constant (LibMTL subtracts max_t l_t inside the log-sum-exp and
    so returns T·mu·LSE(l/mu) - T·max_t l_t): same gradient; here the log-sum-exp is torch's
    stable one. Defaults: mu = 1 (STCH_mu). A non-finite loss (or L_t + 1e-20 <= 0) gives a NaN loss
    and leaves the state as it was. State: the count of (finite) steps and the sum of the losses
    of the nadir window (float64, on the losses' device)."""

    name = "stch"
    _LOG_EPS = 1e-20

    def __init__(self, *, warmup_steps: int, nadir_steps: int | None = None, mu: float = 1.0):
        warmup_steps = _options.integer(self.name, "warmup_steps", warmup_steps, low=0)
        if nadir_steps is None:
            nadir_steps = warmup_steps
        else:
            nadir_steps = _options.integer(self.name, "nadir_steps", nadir_steps, low=1)
            if nadir_steps > warmup_steps:
                raise ValueError(f"{self.name}: nadir_steps must be <= warmup_steps = {warmup_steps}, got {nadir_steps}")
        super().__init__(warmup_steps=warmup_steps, nadir_steps=nadir_steps,
                         mu=_options.real(self.name, "mu", mu, low=0.0, low_open=True))
        self.steps: torch.Tensor | None = None
        self.loss_sum: torch.Tensor | None = None

    def loss(self, losses, shared) -> torch.Tensor:
        stacked = stacked_losses(losses)
        T, device = stacked.shape[0], stacked.device
        W, N, mu = self.options["warmup_steps"], self.options["nadir_steps"], self.options["mu"]
        if self.loss_sum is not None and self.loss_sum.shape != (T,):
            raise ValueError(f"{self.name}: the state is for {self.loss_sum.shape[0]} tasks, got {T} losses")
        steps = torch.zeros((), dtype=torch.int64, device=device) if self.steps is None else self.steps.to(device)
        loss_sum = torch.zeros(T, dtype=torch.float64, device=device) if self.loss_sum is None else self.loss_sum.to(device)
        warming = steps < W
        ready = ~warming if N > 0 else torch.zeros_like(warming)  # N = 0 only when W = 0: n = 1
        nadir = torch.where(ready, loss_sum / max(N, 1), torch.ones_like(loss_sum)).to(stacked.dtype)
        warmup_loss = (stacked + self._LOG_EPS).log().sum()
        logs = (stacked / nadir + self._LOG_EPS).log()
        stch_loss = T * mu * torch.logsumexp(logs / mu, 0)
        total = torch.where(warming, warmup_loss, stch_loss)
        values = stacked.detach().double()
        finite = torch.isfinite(values).all() & torch.isfinite(total.detach())
        in_window = warming & (steps >= W - N) & finite
        self.loss_sum = torch.where(in_window, loss_sum + values, loss_sum)
        self.steps = steps + finite.long()
        return total * _nan_unless(finite, total)

    def nadir(self) -> torch.Tensor | None:
        """The nadir vector n once the warmup is over (ones for warmup_steps = 0), else None.
        Reads the step count on the host: for inspection, not for the training loop."""
        if self.options["warmup_steps"] == 0:
            return None if self.loss_sum is None else torch.ones_like(self.loss_sum)
        if self.steps is None or int(self.steps) < self.options["warmup_steps"]:
            return None
        return self.loss_sum / self.options["nadir_steps"]

    def state_dict(self) -> dict:
        if self.steps is None:
            return {}
        return {"steps": self.steps, "loss_sum": self.loss_sum, "warmup_steps": self.options["warmup_steps"],
                "nadir_steps": self.options["nadir_steps"]}

    def load_state_dict(self, state: dict) -> None:
        check_keys(self.name, state, {"steps", "loss_sum", "warmup_steps", "nadir_steps"}, empty_ok=True)
        if not state:
            self.steps = self.loss_sum = None
            return
        saved = (state["warmup_steps"], state["nadir_steps"])
        if saved != (self.options["warmup_steps"], self.options["nadir_steps"]):
            raise ValueError(f"{self.name}: the state_dict is for warmup_steps={saved[0]}, nadir_steps={saved[1]}; this "
                             f"method has warmup_steps={self.options['warmup_steps']}, "
                             f"nadir_steps={self.options['nadir_steps']}")
        loss_sum = _tensor(self.name, state, "loss_sum")
        if loss_sum.dim() != 1:
            raise ValueError(f"{self.name}: state_dict['loss_sum'] must be [T], got shape {tuple(loss_sum.shape)}")
        self.steps, self.loss_sum = _tensor(self.name, state, "steps", ()).long(), loss_sum.double()
