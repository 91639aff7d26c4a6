"""LibMTL 1.1.5's weightings (Lin & Zhang 2023, "LibMTL: A Python Library for Multi-Task
Learning"), computed by fastmtl, for LibMTL's ``Trainer``:

    from fastmtl.compat.libmtl import PCGrad     # instead of: from LibMTL.weighting import PCGrad
    Trainer(task_dict, weighting=PCGrad, architecture=HPS, ..., weight_args={})

Each class subclasses LibMTL's ``AbsWeighting`` and keeps its interface: the Trainer mixes it
into its model with an architecture (which supplies ``task_num``, ``device``, ``rep_grad``,
``rep``, ``get_share_params`` and ``zero_grad_share_params``, and sets ``epoch`` and
``train_loss_buffer``), calls ``init_param()`` once and ``backward(losses, **weight_args)`` each
batch, which leaves the gradients in ``.grad`` and returns the task weights as a numpy array. The
options are LibMTL's ``weight_args`` (``LibMTL.config.prepare_args``): ``T`` (DWA), ``alpha``
(GradNorm), ``mgda_gn`` (MGDA), ``beta`` (GradVac), ``leak`` (GradDrop), ``calpha`` and
``rescale`` (CAGrad), ``dist`` (RLW); a missing one takes LibMTL's command-line default, a bad
one raises ValueError naming the class and the option.

What fastmtl computes: the gradient methods take the task gradients G [T, P] of the shared
parameters from LibMTL's own ``_get_grads`` (one backward per task, as LibMTL, so task-specific
parameters get LibMTL's gradients), then work in Gram space: K = G Gᵀ by fastmtl, the method's
weights w from K (fastmtl's PCGrad, GradVac, IMTL-G and CAGrad solves, Wolfe's exact
minimum-norm point for MGDA), and w · G by fastmtl's combine, written into the shared
parameters' ``.grad``. The loss weightings (EW, UW, DWA, GLS, RLW) build one loss and run one
backward (UW, GLS and RLW's normal draws through fastmtl's methods). Nash-MTL is not in LibMTL
1.1.5 (use ``fastmtl.methods.create("nash_mtl")`` with MTLOptimizer).

Differences from LibMTL 1.1.5, each one documented on its class:
* The shared gradients are written with ``param.grad = ...`` where LibMTL writes
  ``param.grad.data = ...``: LibMTL's fails under torch >= 2.0, whose ``Module.zero_grad``
  (LibMTL's ``zero_grad_share_params`` for HPS) sets the gradients to None.
* PCGrad and GradVac skip each task's projection onto its own original gradient, as the paper's
  Alg. 1 (j ≠ i); LibMTL's PCGrad does not skip it, which differs only when an earlier projection
  has made g_iᴾᶜ · g_i < 0 (T >= 3, rare). The random task orders are drawn from Python's
  ``random`` exactly as LibMTL draws them, so the same ``random.seed`` gives the same orders.
* MGDA, CAGrad: exact solves where LibMTL stops iterative solvers early (see the classes).
* RLW's ``constrained_Bernoulli`` works (LibMTL 1.1.5 fails: ``random`` is not imported there);
  CAGrad works for any number of tasks (LibMTL 1.1.5's hard-codes 3); GradDrop also works on
  parameter gradients (``rep_grad=False``, LibMTL raises).
* Returned weights: those of the gradients written (for GLS, its true weights ∂GLS/∂L_t).

``import fastmtl.compat.libmtl`` needs LibMTL installed; its package ``__init__`` is not needed
(LibMTL 1.1.5's imports ``torchvision.models.utils``, gone from recent torchvision): when it fails,
``LibMTL/weighting/abstract_weighting.py`` (which only imports torch and numpy) is loaded by
itself and registered as ``LibMTL.weighting.abstract_weighting``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import random
import sys

import numpy as np
import torch

from fastmtl import functional, methods
from fastmtl.methods import _options
from fastmtl.methods.cagrad import min_norm_point

_ABSTRACT = "LibMTL.weighting.abstract_weighting"


def _load_abs_weighting() -> type:
    """LibMTL's AbsWeighting, importing as little of LibMTL as needed (see the module docstring)."""
    if _ABSTRACT in sys.modules:
        return sys.modules[_ABSTRACT].AbsWeighting
    try:
        return importlib.import_module(_ABSTRACT).AbsWeighting
    except ImportError as error:
        failure = error
    try:
        spec = importlib.util.find_spec("LibMTL")  # a top-level name: finds, does not import
    except (ImportError, ValueError):
        spec = None
    path = None
    if spec is not None and spec.submodule_search_locations:
        path = os.path.join(next(iter(spec.submodule_search_locations)), "weighting", "abstract_weighting.py")
    if path is None or not os.path.isfile(path):
        raise ImportError("fastmtl.compat.libmtl needs LibMTL (pip install LibMTL; these classes follow LibMTL "
                          f"1.1.5), which cannot be imported here: {failure}") from failure
    module_spec = importlib.util.spec_from_file_location(_ABSTRACT, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    sys.modules[_ABSTRACT] = module
    return module.AbsWeighting


AbsWeighting = _load_abs_weighting()


def _numpy(weights: torch.Tensor) -> np.ndarray:
    return weights.detach().cpu().numpy()


class _FastWeighting(AbsWeighting):
    """What the classes share: options from ``weight_args``, G from LibMTL's ``_get_grads``,
    w · G written into the shared ``.grad``."""

    @property
    def _name(self) -> str:
        """This module's class name (the Trainer mixes the class into a model class of its own)."""
        return next(c.__name__ for c in type(self).__mro__ if c.__module__ == __name__ and c is not _FastWeighting)

    def _real(self, kwargs: dict, name: str, default: float, **bounds) -> float:
        return _options.real(self._name, name, kwargs.get(name, default), **bounds)

    def _one_of(self, kwargs: dict, name: str, default, choices: tuple):
        return _options.one_of(self._name, name, kwargs.get(name, default), choices)

    def _no_rep_grad(self) -> None:
        if self.rep_grad:
            raise ValueError(f"{self._name} does not support representation gradients (rep_grad=True), "
                             f"as LibMTL's")

    def _grad2vec(self) -> torch.Tensor:
        """The shared parameters' gradients as one vector, as LibMTL's, but on their device
        (LibMTL's builds it on the CPU: a device-to-host copy of every shared gradient per task)."""
        return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                          for p in self.get_share_params()])

    def _task_gradients(self, losses):
        """(per_grads, G): LibMTL's per-task representation gradients (None when rep_grad is
        False) and G [T, P] of the shared parameters (or of the representation)."""
        grads = self._get_grads(losses, mode="backward")
        return (grads[0], grads[1]) if self.rep_grad else (None, grads)

    def _write(self, weights: torch.Tensor, per_grads, G: torch.Tensor) -> None:
        """Σ_t w_t g_t into the shared parameters' .grad (or back through the representation)."""
        if self.rep_grad:
            first = per_grads[0] if isinstance(per_grads, list) else per_grads  # a list for per-task reps
            self._backward_new_grads(weights.to(device=first.device, dtype=first.dtype), per_grads=per_grads)
        else:
            self._reset_grad(functional.combine(G, weights.to(G.device)))

    def _reset_grad(self, new_grads: torch.Tensor) -> None:
        # LibMTL assigns param.grad.data, which fails when zero_grad left the gradient None.
        offset = 0
        for param in self.get_share_params():
            size = param.numel()
            param.grad = new_grads[offset:offset + size].reshape(param.shape).to(param.dtype).clone()
            offset += size

    def _python_orders(self, exclude_self: bool) -> torch.Tensor:
        """LibMTL's task orders: for each task i a fresh list of the tasks (without i for GradVac)
        shuffled by Python's ``random``; as fastmtl's [T, T] order (i itself, skipped by
        fastmtl's solves, fills the last place when excluded)."""
        rows = []
        for i in range(self.task_num):
            tasks = [j for j in range(self.task_num) if not (exclude_self and j == i)]
            random.shuffle(tasks)
            rows.append(tasks + ([i] if exclude_self else []))
        return torch.tensor(rows, dtype=torch.int64)


class EW(_FastWeighting):
    """Equal weighting: the gradient of Σ_t L_t (weights 1, as LibMTL's EW)."""

    def backward(self, losses, **kwargs):
        losses.sum().backward()
        return np.ones(self.task_num)


class UW(_FastWeighting):
    """Uncertainty weighting (Kendall, Gal & Cipolla 2018): Σ_t L_t / (2 e^{s_t}) + s_t / 2 with
    s (``loss_scale``, from -0.5) trained with the model; fastmtl's ``uw`` method builds the loss.
    Returns 1 / (2 e^s), as LibMTL."""

    def init_param(self):
        self._uw = methods.create("uw", n_tasks=self.task_num)
        self._uw.move_parameters_(self.device)
        self.loss_scale = self._uw.log_variances  # registered on the model: the Trainer's optimizer trains it

    def backward(self, losses, **kwargs):
        self._uw.loss(losses, None).backward()
        return _numpy(1 / (2 * self.loss_scale.exp()))


class DWA(_FastWeighting):
    """Dynamic Weight Average (Liu, Johns & Davison 2019): w = T softmax(r / T_temp), r_t =
    L̄_t(e-1) / L̄_t(e-2) from the Trainer's per-epoch mean losses (``train_loss_buffer``), 1 for
    the first two epochs; loss Σ_t w_t L_t. ``T`` (default 2.0): the temperature. Weights sum to
    T, as LibMTL."""

    def backward(self, losses, **kwargs):
        temperature = self._real(kwargs, "T", 2.0, low=0.0, low_open=True)
        if self.epoch > 1:
            ratio = torch.as_tensor(self.train_loss_buffer[:, self.epoch - 1] / self.train_loss_buffer[:, self.epoch - 2],
                                    dtype=losses.dtype, device=losses.device)
            weights = self.task_num * torch.softmax(ratio / temperature, dim=-1)
        else:
            weights = torch.ones_like(losses)
        (losses * weights.detach()).sum().backward()
        return _numpy(weights)


class GLS(_FastWeighting):
    """Geometric loss strategy (Chennupati et al. 2019): the gradient of (Π_t L_t)^(1/T), by
    fastmtl's ``gls`` (exp of the mean log loss). Returns its true weights GLS / (T L_t), where
    LibMTL returns L_t / (T Π L)."""

    def backward(self, losses, **kwargs):
        total = methods.create("gls").loss(losses, None)
        total.backward()
        return _numpy(total.detach() / (self.task_num * losses.detach()))


class RLW(_FastWeighting):
    """Random loss weighting (Lin et al. 2022): Σ_t w_t L_t with fresh random weights each step,
    ``dist`` (default "Normal"): softmax of N(0, 1) draws (fastmtl's ``rlw``, float64 draws from
    torch's default generator of the losses' device), softmax of U(0, 1) ("Uniform") or of a
    Dirichlet(1) draw ("Dirichlet"), Bernoulli(1/2) draws not all zero ("Bernoulli": redrawn on
    the host until one is non-zero, as LibMTL), or one task chosen uniformly by Python's
    ``random`` ("constrained_Bernoulli", which fails in LibMTL 1.1.5). Returns the weights."""

    _DISTRIBUTIONS = ("Normal", "Uniform", "Dirichlet", "Bernoulli", "constrained_Bernoulli")

    def backward(self, losses, **kwargs):
        dist = self._one_of(kwargs, "dist", "Normal", self._DISTRIBUTIONS)
        T = self.task_num
        if dist == "Normal":
            return self._normal(methods.create("rlw"), losses)
        if dist == "Uniform":
            weights = torch.softmax(torch.rand(T), dim=-1)
        elif dist == "Dirichlet":
            weights = torch.softmax(torch.distributions.Dirichlet(torch.ones(T)).sample(), dim=-1)
        elif dist == "Bernoulli":
            while True:
                weights = torch.bernoulli(torch.full((T,), 0.5))
                if weights.sum() != 0:
                    break
        else:
            weights = torch.zeros(T)
            weights[random.sample(range(T), k=1)] = 1.0
        weights = weights.to(device=losses.device, dtype=losses.dtype)
        (losses * weights).sum().backward()
        return _numpy(weights)

    @staticmethod
    def _normal(rlw, losses):
        # The weights of the step: recomputed from the loss rlw builds (its gradient in the losses).
        stacked = losses.detach().clone().requires_grad_(True)
        total = rlw.loss(stacked, None)
        (weights,) = torch.autograd.grad(total, stacked)
        (losses * weights).sum().backward()
        return _numpy(weights)


class GradNorm(_FastWeighting):
    """GradNorm (Chen, Badrinarayanan, Lee & Rabinovich 2018), LibMTL's form: w = T softmax(z)
    with logits z (``loss_scale``, from ones) trained with the model. The first epoch trains on
    Σ_t L_t; later, with n_t = |g_t| over all the shared parameters (from fastmtl's K = G Gᵀ),
    r_t = (L_t / L̄_t(epoch 0)) / mean, z gets the gradient of Σ_t |w_t n_t - mean(w n) r_t^α|
    (the target held constant) and the shared parameters Σ_t w_t g_t; the task heads keep the
    gradient of Σ_t L_t (LibMTL's per-task backward). ``alpha`` (default 1.5). Returns w."""

    def init_param(self):
        self.loss_scale = torch.nn.Parameter(torch.ones(self.task_num, device=self.device))

    def backward(self, losses, **kwargs):
        alpha = self._real(kwargs, "alpha", 1.5, low=0.0)
        if self.epoch < 1:
            losses.sum().backward()
            return np.ones(self.task_num)
        weights = self.task_num * torch.softmax(self.loss_scale, dim=-1)
        per_grads, G = self._task_gradients(losses)
        norms = functional.gram_for_weights(G).diagonal().clamp_min(0).sqrt().to(weights.device)
        weighted = weights * norms.to(weights.dtype)
        initial = torch.as_tensor(self.train_loss_buffer[:, 0], dtype=torch.float64, device=weights.device)
        ratio = losses.detach().to(torch.float64) / initial
        target = (weighted.mean() * (ratio / ratio.mean()) ** alpha).detach().to(weighted.dtype)
        (weighted - target).abs().sum().backward()
        weights = weights.detach()
        self._write(weights, per_grads, G)
        return _numpy(weights)


class MGDA(_FastWeighting):
    """MGDA (Désidéri 2012; Sener & Koltun 2018): the minimum-norm point of the convex hull of the
    normalised task gradients g_t / n_t, ``mgda_gn`` (default "none") choosing n_t: 1 ("none"),
    |g_t| ("l2"), L_t ("loss") or L_t |g_t| ("loss+"). Solved exactly on fastmtl's K by Wolfe's
    minimum-norm-point algorithm (``fastmtl.methods.cagrad.min_norm_point``), where LibMTL runs
    Frank-Wolfe to a step below 1e-5 (and clips a two-task solution to [0.001, 0.999]). The shared
    parameters get Σ_t sol_t g_t / n_t (with ``rep_grad``: Σ_t sol_t of the unnormalised
    representation gradients, as LibMTL). Returns sol (sums to 1), as LibMTL."""

    _NORMALISATIONS = ("none", "l2", "loss", "loss+")

    def backward(self, losses, **kwargs):
        normalisation = self._one_of(kwargs, "mgda_gn", "none", self._NORMALISATIONS)
        per_grads, G = self._task_gradients(losses)
        K = functional.gram_for_weights(G).double()
        loss_values = losses.detach().to(device=K.device, dtype=K.dtype)
        norms = K.diagonal().clamp_min(0).sqrt()
        scale = {"none": torch.ones_like(norms), "l2": norms, "loss": loss_values,
                 "loss+": loss_values * norms}[normalisation]
        solution = min_norm_point(K / (scale[:, None] * scale[None, :]), 2 * self.task_num + 10)[0]
        self._write(solution if self.rep_grad else solution / scale, per_grads, G)
        return _numpy(solution)


class IMTL(_FastWeighting):
    """IMTL (Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang 2021), LibMTL's hybrid: the losses
    become e^{s_t} L_t - s_t with s (``loss_scale``, from 0) trained with the model (its gradient
    and the heads' come from LibMTL's per-task backward), then the shared parameters get
    Σ_t α_t g̃_t, g̃_t the gradients of the scaled losses and α fastmtl's IMTL-G weights (sum 1)
    of their Gram matrix: the pseudo-inverse form, equal to LibMTL's inverse when the g̃_t are
    independent. Returns α."""

    def init_param(self):
        self.loss_scale = torch.nn.Parameter(torch.zeros(self.task_num, device=self.device))

    def backward(self, losses, **kwargs):
        scaled = self.loss_scale.exp() * losses - self.loss_scale
        per_grads, G = self._task_gradients(scaled)
        alpha = methods.create("imtl_g").weights(functional.gram_for_weights(G))
        self._write(alpha, per_grads, G)
        return _numpy(alpha)


class PCGrad(_FastWeighting):
    """PCGrad (Yu, Kumar, Gupta, Levine, Hausman & Finn 2020): each g_iᴾᶜ meets the original g_j
    in a random order (Python's ``random.shuffle`` of the task list per task, as LibMTL) and
    g_iᴾᶜ -= (g_iᴾᶜ·g_j / |g_j|²) g_j when the product is negative; the shared parameters get
    Σ_i g_iᴾᶜ (the sum, as LibMTL 1.1.5), computed in Gram space by fastmtl. Own-gradient
    projections are skipped (see the module docstring). ``rep_grad`` unsupported, as LibMTL.
    Returns w with Σ_i g_iᴾᶜ = w · G (LibMTL's ``batch_weight``)."""

    def backward(self, losses, **kwargs):
        self._no_rep_grad()
        _, G = self._task_gradients(losses)
        K = functional.gram_for_weights(G)
        weights = functional.pcgrad_weights(K, self._python_orders(exclude_self=False).to(K.device))
        self._write(weights, None, G)
        return _numpy(weights)


class GradVac(_FastWeighting):
    """GradVac (Wang, Tsvetkov, Firat & Cao 2021), LibMTL's form: like PCGrad (j ≠ i, Python's
    order), with a target cosine ρ̂_ij per pair (``rho_T``, from 0): when ρ_ij = cos(g_iᴾᶜ, g_j)
    < ρ̂_ij, g_iᴾᶜ += |g_iᴾᶜ| (ρ̂ √(1-ρ²) - ρ √(1-ρ̂²)) / (|g_j| √(1-ρ̂²)) g_j and then
    ρ̂_ij ← (1-β) ρ̂_ij + β ρ_ij. As LibMTL the EMA moves only on such a correction (the paper, and
    fastmtl's ``gradvac`` method, move it at every pair). ``beta`` (default 0.5). Sum of the
    corrected gradients, in Gram space (float64 state). Returns w (LibMTL's ``batch_weight``)."""

    def backward(self, losses, **kwargs):
        beta = self._real(kwargs, "beta", 0.5, low=0.0, high=1.0)
        self._no_rep_grad()
        _, G = self._task_gradients(losses)
        K = functional.gram_for_weights(G).double()
        T = self.task_num
        targets = getattr(self, "rho_T", None)
        if not isinstance(targets, torch.Tensor) or targets.shape != (T, T):
            targets = torch.zeros(T, T, dtype=torch.float64, device=K.device)
        order = self._python_orders(exclude_self=True).to(K.device)
        weights, self.rho_T = gradvac_libmtl_step(K, targets.to(device=K.device, dtype=torch.float64), order, beta)
        self._write(weights, None, G)
        return _numpy(weights)


def gradvac_libmtl_step(K: torch.Tensor, targets: torch.Tensor, order: torch.Tensor,
                        beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of LibMTL's GradVac in Gram space: the weights w (Σ_i g_iᴾᶜ = w · G) and the new
    targets. Row i of ``order`` lists the tasks that task i meets (an entry i is skipped); the
    tasks advance together, one partner per step (task i's step only reads and writes row i)."""
    T = K.shape[0]
    targets = targets.clone()
    rows = torch.arange(T, device=K.device)
    C = torch.eye(T, dtype=K.dtype, device=K.device)  # row i: the coefficients of g_iᴾᶜ over the g_k
    CK = K.clone()  # row i: g_iᴾᶜ · g_k for every k
    norm = K.diagonal().clamp_min(0).sqrt()
    for step in range(order.shape[1]):
        j = order[:, step]
        norm_i = (CK * C).sum(1).clamp_min(0).sqrt()
        denominator = norm_i * norm[j]
        positive = denominator > 0
        cosine = CK[rows, j] / torch.where(positive, denominator, 1.0)
        target = targets[rows, j]
        root_target = (1 - target * target).clamp_min(0).sqrt()
        correct = (j != rows) & positive & (root_target > 0) & (cosine < target)
        root_cosine = (1 - cosine * cosine).clamp_min(0).sqrt()
        w = norm_i * (target * root_cosine - cosine * root_target) / torch.where(correct, norm[j] * root_target, 1.0)
        w = torch.where(correct, w, torch.zeros_like(w))
        C[rows, j] += w
        CK += w[:, None] * K[j]
        targets[rows, j] = torch.where(correct, (1 - beta) * target + beta * cosine, target)
    return C.sum(0), targets


class CAGrad(_FastWeighting):
    """CAGrad (Liu, Liu, Jin, Stone & Liu 2021): with g0 the mean gradient and c = ``calpha``
    (default 0.5), w on the simplex minimising g_wᵀg0 + c|g0| |g_w|, update
    (g0 + c|g0| g_w / |g_w|) / r with r = 1 + c² (``rescale`` 1, the default), 1 + c (2) or 1 (0).
    fastmtl's exact ``cagrad`` solve, where LibMTL runs SciPy's SLSQP (to its 1e-6 default
    tolerance, with 1e-8 terms added under the root and to c|g0|) for exactly 3 tasks. fastmtl
    gives 0 when |g_w| < 1e-4 (relative; Pareto-stationary), where LibMTL divides by |g_w| + 1e-8.
    ``rep_grad`` unsupported, as LibMTL. Returns the weights of the update on G (LibMTL returns
    the simplex point w)."""

    def backward(self, losses, **kwargs):
        calpha = self._real(kwargs, "calpha", 0.5, low=0.0)
        rescale = self._one_of(kwargs, "rescale", 1, (0, 1, 2))
        self._no_rep_grad()
        _, G = self._task_gradients(losses)
        weights = methods.create("cagrad", c=calpha, rescale=rescale).weights(functional.gram_for_weights(G))
        self._write(weights, None, G)
        return _numpy(weights)


class GradDrop(_FastWeighting):
    """GradDrop (Chen, Ngiam, Huang, Luong, Kretzschmar, Chai & Anguelov 2020), by fastmtl's
    ``graddrop``: with ``rep_grad`` (LibMTL's form) on the representation's per-sample gradients,
    purity from their sign-corrected (sign of the representation) batch sums, the kept gradients
    summed over the tasks and back-propagated through the representation; without ``rep_grad``
    on the shared parameters' G (LibMTL raises). ``leak`` (default 0.0). The uniforms come from
    fastmtl's Philox stream seeded from torch's default generator (LibMTL: ``torch.rand_like``),
    so the masks differ from LibMTL's for the same seed. Distinct per-task representations (a
    dict ``rep`` of different tensors: multi_input, or MMoE-like architectures) are not supported;
    HPS's (the same tensor for every task) are. Returns None, as LibMTL."""

    def backward(self, losses, **kwargs):
        leak = self._real(kwargs, "leak", 0.0, low=0.0, high=1.0)
        if not self.rep_grad:
            _, G = self._task_gradients(losses)
            self._reset_grad(functional.graddrop(G, leak=leak))
            return
        rep = self.rep
        per_grads = self._compute_grad(losses, "backward", rep_grad=True)  # [T, B, ...], or one per task
        if isinstance(rep, dict):
            # HPS keeps the one shared representation once per task: the tasks' backward passes
            # through it add up, so one backward of the sum is the same. Distinct per-task
            # representations would need per-task outputs, which fastmtl's graddrop does not give.
            reps = list(rep.values())
            if any(r is not reps[0] for r in reps):
                raise ValueError("GradDrop: per-task representations (a dict rep of distinct tensors) are not "
                                 "supported; use one shared representation or rep_grad=False")
            rep, per_grads = reps[0], torch.stack(list(per_grads))
        T, batch = per_grads.shape[0], per_grads.shape[1]
        G = per_grads.reshape(T, -1)
        signs = rep.detach().sign().reshape(-1).to(device=G.device, dtype=G.dtype)
        combined = functional.graddrop(G, leak=leak, signs=signs, batch=batch)
        rep.backward(combined.view(rep.shape).to(rep.dtype))
        return


__all__ = [
    "DWA",
    "EW",
    "GLS",
    "IMTL",
    "MGDA",
    "RLW",
    "UW",
    "AbsWeighting",
    "CAGrad",
    "GradDrop",
    "GradNorm",
    "GradVac",
    "PCGrad",
]
