"""The loss weightings of LibMTL 1.1.5 (Lin & Zhang 2023) that fastmtl had no form of: UW, DWA
and GradNorm (loss-side: each builds one loss, back-propagated once) and IMTL (IMTL-L's loss
scales with IMTL-G's weights: a Gram-space method that also reads the losses).

UW, GradNorm and IMTL learn tensors of their own (``parameters()``), which MTLOptimizer adds to
the wrapped optimizer as a param group: they are created in torch's default dtype (as
``nn.Parameter``s), on the CPU, and moved to the shared parameters' device by MTLOptimizer. Their
gradients go through the step's backward (UW, GradNorm) or are written with the scale of a
GradScaler (IMTL), so a scaler's ``unscale_`` and skipped steps treat them like the model's.
Each is checked against LibMTL 1.1.5 in tests/test_libmtl_weightings.py.
"""

from __future__ import annotations

import torch

from fastmtl.methods import _options
from fastmtl.methods._state import check_keys, stacked_losses
from fastmtl.methods.base import GramWeighting, LossMethod, register
from fastmtl.methods.gram_space import imtl_g_weights


def _stacked(method: str, losses, n_tasks: int | None) -> torch.Tensor:
    """The task losses as one [T] tensor (still differentiable), T checked against ``n_tasks``."""
    stacked = stacked_losses(losses)
    if n_tasks is not None and stacked.numel() != n_tasks:
        raise ValueError(f"{method}: got {stacked.numel()} losses, but the method was built with n_tasks={n_tasks}")
    return stacked


def _learnable(n_tasks: int, value: float) -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.full((n_tasks,), value, dtype=torch.get_default_dtype()))


def _load_values(method: str, key: str, param: torch.Tensor, value) -> None:
    """Copies saved values into ``param`` in place: the optimizer holds this very object."""
    if not isinstance(value, torch.Tensor) or value.shape != param.shape:
        raise ValueError(f"{method}: state_dict[{key!r}] must be a tensor of shape {tuple(param.shape)}, got "
                         f"{getattr(value, 'shape', type(value).__name__)}")
    with torch.no_grad():
        param.copy_(value)


def _clone(value):
    return None if value is None else value.detach().clone()


@register
class UW(LossMethod):
    """Uncertainty weighting (Kendall, Gal & Cipolla 2018, "Multi-Task Learning Using Uncertainty
    to Weigh Losses for Scene Geometry and Semantics"): with s_t = log σ_t² learnt with the model,
        loss = Σ_t L_t / (2 e^{s_t}) + s_t / 2,
    the paper's regression form for every task, as LibMTL's UW (the paper uses L_t / σ_t² for
    classification). s starts at -0.5 as in LibMTL (a weight e^{0.5}/2 ≈ 0.82 per task).
    Scale: the paper's (no normalisation). State: s (saved by ``state_dict``; loading copies the
    values into the same Parameter, so the optimizer keeps training it)."""

    name = "uw"

    def __init__(self, *, n_tasks: int):
        n_tasks = _options.integer(self.name, "n_tasks", n_tasks)
        super().__init__(n_tasks=n_tasks)
        self.log_variances = _learnable(n_tasks, -0.5)

    def parameters(self) -> list[torch.Tensor]:
        return [self.log_variances]

    def loss(self, losses, shared) -> torch.Tensor:
        stacked = _stacked(self.name, losses, self.options["n_tasks"])
        s = self.log_variances
        return (stacked / (2 * s.exp()) + s / 2).sum()

    def state_dict(self) -> dict:
        return {"log_variances": _clone(self.log_variances)}

    def load_state_dict(self, state: dict) -> None:
        check_keys(self.name, state, {"log_variances"})
        _load_values(self.name, "log_variances", self.log_variances, state["log_variances"])


@register
class DWA(LossMethod):
    """Dynamic Weight Average (Liu, Johns & Davison 2019, "End-to-End Multi-Task Learning with
    Attention", Eq. 7): loss = Σ_t w_t L_t with
        w = T softmax(r / temperature),  r_t = L̄_t(k-1) / L̄_t(k-2),
    L̄_t(k) the mean loss of task t over period k, a period being ``period`` steps: set it to the
    number of batches per epoch for the paper's (and LibMTL's) per-epoch DWA. w = 1 until two
    periods are complete. Scale: weights sum to T, as the paper and LibMTL.

    Differences from LibMTL: its epoch means weight each batch by its size (ours: each step
    alike; the same for equal batches). A step whose loss is not finite returns a non-finite
    loss and its value stays out of its task's period mean (the step still counts towards the
    period's length, which keeps periods aligned with epochs). All on the losses' device, with
    no host synchronisation; state: the running sums and the last two period means."""

    name = "dwa"

    def __init__(self, *, temperature: float = 2.0, period: int = 1):
        super().__init__(temperature=_options.real(self.name, "temperature", temperature, low=0.0, low_open=True),
                         period=_options.integer(self.name, "period", period))
        self._reset()

    def _reset(self) -> None:
        self._steps = 0  # steps in the current period (a host counter: no tensor is read)
        self._completed = 0  # complete periods, counted up to 2
        self._sum: torch.Tensor | None = None  # [T] float64: this period's finite losses
        self._count: torch.Tensor | None = None  # [T] float64: how many were finite
        self._means: torch.Tensor | None = None  # [2, T] float64: periods k-2 and k-1

    def task_weights(self, T: int, device: torch.device) -> torch.Tensor:
        """This step's w [T] (float64): T softmax(r / temperature), or ones before two periods."""
        if self._completed < 2:
            return torch.ones(T, dtype=torch.float64, device=device)
        ratio = (self._means[1] / self._means[0]).to(device)  # e.g. a CPU checkpoint resumed on a GPU
        return T * torch.softmax(ratio / self.options["temperature"], 0)

    def loss(self, losses, shared) -> torch.Tensor:
        stacked = _stacked(self.name, losses, None)
        T = stacked.numel()
        if self._sum is not None and self._sum.numel() != T:
            raise ValueError(f"{self.name}: got {T} losses, the previous steps had {self._sum.numel()}")
        weights = self.task_weights(T, stacked.device)
        total = (weights.to(stacked.dtype) * stacked).sum()
        self._record(stacked.detach().double())
        return total

    def _record(self, values: torch.Tensor) -> None:
        if self._sum is None:
            self._sum, self._count = torch.zeros_like(values), torch.zeros_like(values)
            self._means = torch.zeros((2, values.numel()), dtype=values.dtype, device=values.device)
        finite = torch.isfinite(values)
        self._sum = self._sum.to(values.device) + torch.where(finite, values, torch.zeros_like(values))
        self._count = self._count.to(values.device) + finite
        self._steps += 1
        if self._steps == self.options["period"]:
            self._means = torch.stack([self._means[1].to(values.device), self._sum / self._count])
            self._completed = min(self._completed + 1, 2)
            self._steps = 0
            self._sum, self._count = torch.zeros_like(values), torch.zeros_like(values)

    def state_dict(self) -> dict:
        return {"steps": self._steps, "completed": self._completed, "sum": _clone(self._sum),
                "count": _clone(self._count), "means": _clone(self._means)}

    def load_state_dict(self, state: dict) -> None:
        check_keys(self.name, state, {"steps", "completed", "sum", "count", "means"})
        steps, completed = state["steps"], state["completed"]
        if not (isinstance(steps, int) and 0 <= steps < self.options["period"] and completed in (0, 1, 2)):
            raise ValueError(f"{self.name}: the state_dict's position (steps={steps!r}, completed={completed!r}) does "
                             f"not fit period={self.options['period']}")
        tensors = [state[key] for key in ("sum", "count", "means")]
        if all(t is None for t in tensors):
            self._reset()
            self._steps, self._completed = steps, completed
            return
        T = tensors[0].numel() if isinstance(tensors[0], torch.Tensor) else -1
        shapes = [(T,), (T,), (2, T)]
        if any(not isinstance(t, torch.Tensor) or t.shape != shape for t, shape in zip(tensors, shapes)):
            raise ValueError(f"{self.name}: state_dict sum, count, means must have shapes [T], [T], [2, T], got "
                             f"{[getattr(t, 'shape', t) for t in tensors]}")
        self._steps, self._completed = steps, completed
        self._sum, self._count, self._means = (t.detach().clone().double() for t in tensors)


@register
class GradNorm(LossMethod):
    """GradNorm (Chen, Badrinarayanan, Lee & Rabinovich 2018, "GradNorm: Gradient Normalization
    for Adaptive Loss Balancing in Deep Multitask Networks"). Task weights w = T softmax(z) (sum
    T, as the paper's renormalisation; LibMTL's parametrisation) with learnt logits z. Each step:
        n_t = |∇_W L_t| on the balanced parameters W (``layer``), r_t = (L_t / L_t(0)) / mean,
        L_grad = Σ_t |w_t n_t - mean(w n) r_t^α|  (the target mean(w n) r^α held constant),
    z's gradient is ∂L_grad/∂z, and the loss returned is Σ_t w_t L_t with w held constant, so the
    model trains on the weighted loss (one backward) while z trains on L_grad. The T norms take T
    ``autograd.grad`` calls that only reach W (retaining the graph for the one backward).

    ``layer``: the parameters W (a tensor or a list); by default the last shared parameter with at
    least two dimensions (in ``shared``'s order: the last shared weight matrix, the paper's choice
    of "the last shared layer"), or the last shared parameter if none has two. ``alpha``: the
    restoring force α. ``warmup_steps``: 0 (default) takes L_t(0) from the first step, as the
    paper; k > 0 trains k steps with w = 1 (z untouched) and takes L_t(0) as their mean loss:
    LibMTL's GradNorm with k the batches of its first epoch.

    Differences from LibMTL: LibMTL balances the norms over every shared parameter (pass
    ``layer=`` the shared parameters to do the same) and gives the task heads the gradient of
    Σ_t L_t (ours: of Σ_t w_t L_t, as the paper); it initialises z to ones, we to zeros (the same
    weights and gradients: softmax ignores a common shift). A step whose losses or norms are not
    finite gives a non-finite loss and gradient; L_t(0) comes from the first finite step. The
    gradient of z travels in the returned loss (a term that adds exactly 0 to its value), so a
    GradScaler scales and unscales it like the model's. State: z, L(0), the warm-up sums."""

    name = "gradnorm"

    def __init__(self, *, n_tasks: int, alpha: float = 1.5, layer=None, warmup_steps: int = 0):
        n_tasks = _options.integer(self.name, "n_tasks", n_tasks)
        super().__init__(n_tasks=n_tasks, alpha=_options.real(self.name, "alpha", alpha, low=0.0),
                         layer=_layer_option(self.name, layer),
                         warmup_steps=_options.integer(self.name, "warmup_steps", warmup_steps, low=0))
        self.logits = _learnable(n_tasks, 0.0)
        self._step = 0
        self._initial: torch.Tensor | None = None  # [T] float64: L(0), NaN where not known yet
        self._warmup_sum: torch.Tensor | None = None  # [2, T] float64: sum and count of finite losses

    def parameters(self) -> list[torch.Tensor]:
        return [self.logits]

    def task_weights(self) -> torch.Tensor:
        """The current w = T softmax(z) [T] (detached)."""
        return self.options["n_tasks"] * torch.softmax(self.logits.detach(), 0)

    def balanced_parameters(self, shared) -> list[torch.Tensor]:
        """W: the ``layer`` option, or the default chosen from ``shared`` (see the class docstring)."""
        if self.options["layer"] is not None:
            return list(self.options["layer"])
        shared = list(shared)
        if not shared:
            raise ValueError(f"{self.name}: no shared parameters to balance the gradient norms on; pass layer=")
        matrices = [p for p in shared if p.dim() >= 2]
        return [matrices[-1] if matrices else shared[-1]]

    def loss(self, losses, shared) -> torch.Tensor:
        stacked = _stacked(self.name, losses, self.options["n_tasks"])
        current = stacked.detach().double()
        if self._step < self.options["warmup_steps"]:
            self._warm_up(current)
            self._step += 1
            return stacked.sum()  # w = 1 while L(0) is measured, as LibMTL's first epoch
        W = self.balanced_parameters(shared)
        norms = torch.stack([_norm(torch.autograd.grad(loss.reshape(()), W, retain_graph=True, allow_unused=True),
                                   current.device) for loss in losses])
        known = torch.full_like(current, float("nan")) if self._initial is None else self._initial.to(current.device)
        initial = torch.where(torch.isfinite(known), known, current)
        ratio = current / initial
        target_rate = (ratio / ratio.mean()) ** self.options["alpha"]
        with torch.enable_grad():
            weights = self.options["n_tasks"] * torch.softmax(self.logits, 0)
            weighted_norms = weights.double() * norms
            target = (weighted_norms.mean() * target_rate).detach()
            (logits_grad,) = torch.autograd.grad((weighted_norms - target).abs().sum(), self.logits)
        # Adds exactly 0 to the value; its gradient with respect to z is logits_grad.
        carrier = ((self.logits - self.logits.detach()) * logits_grad).sum()
        total = (weights.detach().to(stacked.dtype) * stacked).sum() + carrier.to(stacked.dtype)
        self._initial = initial
        self._step += 1
        return total

    def _warm_up(self, current: torch.Tensor) -> None:
        finite = torch.isfinite(current)
        step = torch.stack([torch.where(finite, current, torch.zeros_like(current)), finite.to(current.dtype)])
        self._warmup_sum = step if self._warmup_sum is None else self._warmup_sum.to(current.device) + step
        if self._step + 1 == self.options["warmup_steps"]:  # NaN for a task with no finite loss: taken later
            self._initial = self._warmup_sum[0] / self._warmup_sum[1]

    def state_dict(self) -> dict:
        return {"logits": _clone(self.logits), "step": self._step, "initial": _clone(self._initial),
                "warmup_sum": _clone(self._warmup_sum)}

    def load_state_dict(self, state: dict) -> None:
        check_keys(self.name, state, {"logits", "step", "initial", "warmup_sum"})
        T = self.options["n_tasks"]
        initial, warmup_sum, step = state["initial"], state["warmup_sum"], state["step"]
        if not isinstance(step, int) or step < 0:
            raise ValueError(f"{self.name}: state_dict['step'] must be an int >= 0, got {step!r}")
        for key, value, shape in (("initial", initial, (T,)), ("warmup_sum", warmup_sum, (2, T))):
            if value is not None and (not isinstance(value, torch.Tensor) or value.shape != shape):
                raise ValueError(f"{self.name}: state_dict[{key!r}] must be None or a tensor of shape {shape}, got "
                                 f"{getattr(value, 'shape', type(value).__name__)}")
        _load_values(self.name, "logits", self.logits, state["logits"])
        self._step = step
        self._initial = None if initial is None else initial.detach().clone().double()
        self._warmup_sum = None if warmup_sum is None else warmup_sum.detach().clone().double()


def _layer_option(method: str, layer):
    """``layer``: None, a tensor or an iterable of tensors that require grad, kept as a tuple."""
    if layer is None:
        return None
    tensors = (layer,) if isinstance(layer, torch.Tensor) else tuple(layer) if hasattr(layer, "__iter__") else None
    if not tensors or any(not isinstance(t, torch.Tensor) or not t.requires_grad for t in tensors):
        raise TypeError(f"{method}: layer must be a parameter or a non-empty list of parameters that require grad, "
                        f"got {type(layer).__name__}")
    return tensors


def _norm(grads, device: torch.device) -> torch.Tensor:
    """|(g_1, ..., g_k)| in float64; an unused parameter (None) counts as zeros."""
    parts = [torch.linalg.vector_norm(g.double()).to(device) for g in grads if g is not None]
    if not parts:
        return torch.zeros((), dtype=torch.float64, device=device)
    return torch.linalg.vector_norm(torch.stack(parts))


@register
class IMTL(GramWeighting):
    """IMTL (Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang 2021, "Towards Impartial Multi-task
    Learning"), the hybrid of IMTL-L and IMTL-G, as LibMTL's IMTL. IMTL-L learns loss scales s:
    each task's loss becomes e^{s_t} L_t - s_t, whose gradient with respect to the shared
    parameters is e^{s_t} g_t and with respect to s_t is e^{s_t} L_t - 1. IMTL-G then weights the
    scaled gradients: with D = diag(e^s) their Gram matrix is D K D, α = IMTL-G(D K D) (sum 1,
    fastmtl's ``imtl_g``: its compiled op on the extension's path), and the update is
    Σ_t α_t e^{s_t} g_t, i.e. the weights w = α ⊙ e^s on G. Each step adds e^{s} L - 1 to s.grad
    (what LibMTL's per-task backward leaves there), times the GradScaler's scale under one (as a
    scaled backward would), so the wrapped optimizer trains s with the model.

    The losses come from ``take_losses`` (MTLOptimizer passes them; ``fastmtl.aggregate(G, "imtl",
    n_tasks=T, losses=...)``). s starts at 0 (LibMTL's). Scale: α sums to 1 (LibMTL's). NaN policy:
    a non-finite K, loss or s gives all-NaN weights and adds nothing to s.grad (zeros when it had
    none), with no host synchronisation. Difference from LibMTL: the task heads get the gradient
    of Σ_t L_t (MTLOptimizer's rule) where LibMTL's get that of Σ_t (e^{s_t} L_t - s_t). State: s."""

    name = "imtl"
    needs_losses = True

    def __init__(self, *, n_tasks: int, impl: str = "auto"):
        n_tasks = _options.integer(self.name, "n_tasks", n_tasks)
        self._set_options(n_tasks=n_tasks, impl=impl)
        self.loss_scales = _learnable(n_tasks, 0.0)

    def parameters(self) -> list[torch.Tensor]:
        return [self.loss_scales]

    def solve(self, K: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
        return imtl_g_weights(K)  # on the scaled Gram matrix D K D: see weights()

    def compiled_solve(self, K: torch.Tensor) -> torch.Tensor:  # csrc/include/fastmtl/imtl_g_math.h
        return torch.ops.fastmtl.imtl_g_weights(K)

    def weights(self, K: torch.Tensor) -> torch.Tensor:
        """w = α ⊙ e^s [T] (float64), α the IMTL-G weights of D K D; adds to s.grad (see above)."""
        self.check_gram(K)
        T = K.shape[0]
        if T != self.options["n_tasks"]:
            raise ValueError(f"{self.name}: G has {T} tasks, but the method was built with n_tasks={self.options['n_tasks']}")
        losses = self.losses_for(T).to(device=K.device, dtype=torch.float64)
        scale = self._grad_scale  # set with the losses by take_losses
        s = self.loss_scales
        D = s.detach().to(device=K.device, dtype=torch.float64).exp()
        scaled = D[:, None] * K.detach().double() * D[None, :]
        alpha = super().weights(scaled)  # all-NaN when the scaled K is not finite
        finite = torch.isfinite(scaled).all() & torch.isfinite(losses).all()
        w = torch.where(finite, alpha * D, torch.full_like(D, float("nan")))
        increment = torch.where(finite, D * losses - 1, torch.zeros_like(D))
        if scale is not None:
            increment = increment * scale.to(increment.dtype)
        increment = increment.to(device=s.device, dtype=s.dtype)
        s.grad = increment if s.grad is None else s.grad + increment
        return w

    def state_dict(self) -> dict:
        return {"loss_scales": _clone(self.loss_scales)}

    def load_state_dict(self, state: dict) -> None:
        check_keys(self.name, state, {"loss_scales"})
        _load_values(self.name, "loss_scales", self.loss_scales, state["loss_scales"])
