"""Worst-group training: the activation-L1 regularised multi-task loss of Kulkarni et al. 2024
("Multitask Learning Can Improve Worst-Group Outcomes"), JTT's error set and up-weighted
sampler (Liu et al. 2021), online Group DRO (Sagawa et al. 2020), and model selection by
validation worst-group accuracy.

The losses (``ActivationL1``, ``RegularizedMTL``, ``GroupDRO``) run every training step, on GPU
too: they never read a device tensor back to the host. JTT and the selection run between
epochs, where reading results back is fine."""

from __future__ import annotations

import copy
import math

import torch
from torch.utils.data import DataLoader, RandomSampler, SubsetRandomSampler, WeightedRandomSampler

from fastmtl._numerics import accumulate_dtype
from fastmtl.methods import _options


def _activations(h, name: str) -> torch.Tensor:
    if not isinstance(h, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of activations, got {type(h).__name__}")
    if not h.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {h.dtype}")
    if h.numel() == 0:
        raise ValueError(f"{name} is empty: shape {tuple(h.shape)}")
    return h


def _scalar_loss(loss, name: str) -> torch.Tensor:
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"{name} must be a scalar torch.Tensor, got {type(loss).__name__}")
    if loss.numel() != 1 or not loss.is_floating_point():
        raise ValueError(f"{name} must be a floating-point scalar tensor, got shape {tuple(loss.shape)} "
                         f"and dtype {loss.dtype}")
    return loss.reshape(())


def activation_l1(h: torch.Tensor) -> torch.Tensor:
    """The mean |activation| of this batch, h.abs().mean(): the per-batch form of the L1 penalty.
    ``ActivationL1`` is the form of Kulkarni et al.'s code (normaliser fixed at the first batch)."""
    return _activations(h, "h").abs().mean()


class ActivationL1:
    """Kulkarni et al.'s L1 penalty on encoder activations, ‖h‖₁ / n, where n is the number of
    elements of the FIRST batch's ``h`` and stays fixed afterwards, as the official code does.
    At full batches it is the mean |activation|; a smaller last batch (or a shorter text
    batch) is still divided by n, so its penalty is smaller in proportion to its size.

    Half-precision ``h`` is summed and returned in float32: a sum of many float16 values can
    overflow where their mean would not."""

    def __init__(self):
        self.numel: int | None = None  # set by the first call

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        h = _activations(h, "h")
        if self.numel is None:
            self.numel = h.numel()  # from the shape: no host sync
        return h.abs().sum(dtype=accumulate_dtype(h.dtype)) / self.numel

    def state_dict(self) -> dict:
        return {"numel": self.numel}

    def load_state_dict(self, state: dict) -> None:
        numel = state["numel"]
        self.numel = None if numel is None else _options.integer("ActivationL1", "numel", numel)


class RegularizedMTL:
    """Regularised multi-task loss of Kulkarni et al. 2024, for one backward pass:

        L = w_erm·end_loss + w_mt·aux_loss + w_reg·(L1(h_end) + L1(h_aux)),

    where ``end_loss`` is the end-task loss (e.g. cross-entropy), ``aux_loss`` the auxiliary
    pre-training objective computed on the end-task inputs (e.g. masked language / image
    modelling), ``h_end`` / ``h_aux`` the encoder's last-layer output (all tokens or patches,
    before the head) in the end-task and the auxiliary forward passes, and L1 the fixed-normaliser
    mean |activation| (``ActivationL1``), one per forward pass, each with its own normaliser.

    The paper's best settings: civilcomments-small w_erm = 1, w_mt = 1, w_reg = e⁻¹ (the
    defaults); Waterbirds w_erm = 1, w_mt = e⁻¹, w_reg = e⁻¹. Special cases: w_reg = 0 is plain
    MT; ``aux_loss=None`` (no auxiliary forward) is ERM+L1; both is ERM.

    Rules for the optional arguments: ``h_end`` is required when w_reg > 0; ``h_aux`` comes with
    ``aux_loss`` (required with it when w_reg > 0, an error without it). With w_mt = 0 the
    auxiliary loss term is left out (0·inf would be NaN) but the L1 on ``h_aux`` still counts.
    ``last_terms`` holds the detached terms of the last call, for logging."""

    def __init__(self, w_erm: float = 1.0, w_mt: float = 1.0, w_reg: float = math.exp(-1)):
        self.w_erm = _options.real("RegularizedMTL", "w_erm", w_erm, low=0.0)
        self.w_mt = _options.real("RegularizedMTL", "w_mt", w_mt, low=0.0)
        self.w_reg = _options.real("RegularizedMTL", "w_reg", w_reg, low=0.0)
        if self.w_erm == 0 and self.w_mt == 0 and self.w_reg == 0:
            raise ValueError("RegularizedMTL: w_erm, w_mt and w_reg are all 0, so the loss would be 0")
        self.l1_end, self.l1_aux = ActivationL1(), ActivationL1()
        self.last_terms: dict = {}

    def __call__(self, end_loss: torch.Tensor, aux_loss: torch.Tensor | None = None,
                 h_end: torch.Tensor | None = None, h_aux: torch.Tensor | None = None) -> torch.Tensor:
        end_loss = _scalar_loss(end_loss, "end_loss")
        if aux_loss is not None:
            aux_loss = _scalar_loss(aux_loss, "aux_loss")
        if h_aux is not None and aux_loss is None:
            raise ValueError("RegularizedMTL: h_aux was given without aux_loss; pass the auxiliary loss of that forward")
        if self.w_reg > 0:
            if h_end is None:
                raise ValueError("RegularizedMTL: h_end (the end-task activations) is required when w_reg > 0")
            if aux_loss is not None and h_aux is None:
                raise ValueError("RegularizedMTL: h_aux (the auxiliary activations) is required with aux_loss "
                                 "when w_reg > 0")

        terms = {"end": end_loss}
        total = self.w_erm * end_loss
        if aux_loss is not None:
            terms["aux"] = aux_loss
            if self.w_mt > 0:
                total = total + self.w_mt * aux_loss
        if self.w_reg > 0:
            terms["l1_end"] = self.l1_end(h_end)
            penalty = terms["l1_end"]
            if h_aux is not None:
                terms["l1_aux"] = self.l1_aux(h_aux)
                penalty = penalty + terms["l1_aux"]
            total = total + self.w_reg * penalty
        self.last_terms = {name: value.detach() for name, value in terms.items()}
        return total

    def state_dict(self) -> dict:
        return {"w_erm": self.w_erm, "w_mt": self.w_mt, "w_reg": self.w_reg,
                "l1_end": self.l1_end.state_dict(), "l1_aux": self.l1_aux.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        restored = RegularizedMTL(state["w_erm"], state["w_mt"], state["w_reg"])  # validates the weights
        self.w_erm, self.w_mt, self.w_reg = restored.w_erm, restored.w_mt, restored.w_reg
        self.l1_end.load_state_dict(state["l1_end"])
        self.l1_aux.load_state_dict(state["l1_aux"])


# ----------------------------------------------------------------------------------------- JTT

_RANDOM_SAMPLERS = (RandomSampler, SubsetRandomSampler, WeightedRandomSampler)


def _predicted_labels(output: torch.Tensor) -> torch.Tensor:
    """Logits [B, C] with C >= 2: the argmax class; one logit per sample ([B] or [B, 1]): 1 where
    the logit is > 0 (binary classification with BCE-with-logits)."""
    if not isinstance(output, torch.Tensor):
        raise TypeError(f"jtt_error_set: the model must return a logits tensor, got {type(output).__name__}; "
                        f"pass predict= to extract predictions")
    if output.dim() == 1 or (output.dim() == 2 and output.shape[1] == 1):
        return (output.reshape(-1) > 0).long()
    if output.dim() == 2:
        return output.argmax(dim=1)
    raise ValueError(f"jtt_error_set: expected logits of shape [B, C] or [B], got {tuple(output.shape)}; "
                     f"pass predict= to extract predictions")


def jtt_error_set(model: torch.nn.Module, loader, *, device=None, predict=None) -> torch.Tensor:
    """JTT step 2: one pass over the training set with no updates, returning a CPU BoolTensor [N],
    True where the model misclassifies example i (i in the loader's order).

    ``loader`` yields ``(x, y)`` or ``(x, y, ...)`` batches in a FIXED order; aligning the result
    with dataset indices is the caller's job (a ``DataLoader`` with a random sampler, e.g.
    ``shuffle=True``, is refused). ``x`` and ``y`` are moved to ``device`` when it is given.
    Predictions are ``predict(model, x)`` (labels [B]) when ``predict`` is given, else taken from
    ``model(x)``: the argmax of [B, C] logits, or ``logit > 0`` for one logit per sample. The
    model runs in eval mode under ``torch.no_grad()``; every submodule's mode is restored after."""
    if isinstance(loader, DataLoader):
        samplers = (loader.sampler, getattr(loader.batch_sampler, "sampler", None))
        if any(isinstance(s, _RANDOM_SAMPLERS) for s in samplers):
            raise ValueError("jtt_error_set: the DataLoader draws in a random order (shuffle=True or a random "
                             "sampler), so errors could not be matched to examples; use shuffle=False")
    if predict is not None and not callable(predict):
        raise TypeError(f"jtt_error_set: predict must be a callable (model, x) -> labels, got {type(predict).__name__}")
    modes = [(module, module.training) for module in model.modules()]
    errors = []
    try:
        model.eval()
        with torch.no_grad():
            for batch in loader:
                if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                    raise ValueError("jtt_error_set: each batch must be (x, y) or (x, y, ...)")
                x, y = batch[0], batch[1]
                if device is not None:
                    x, y = x.to(device), y.to(device)
                labels = predict(model, x) if predict is not None else _predicted_labels(model(x))
                if labels.numel() != y.numel():
                    raise ValueError(f"jtt_error_set: {labels.numel()} predictions for {y.numel()} labels in a batch")
                errors.append(labels.reshape(-1) != y.reshape(-1))
    finally:
        for module, training in modes:  # per module: a frozen (eval) submodule stays so
            module.train(training)
    if not errors:
        raise ValueError("jtt_error_set: the loader yielded no batches")
    return torch.cat([e.cpu() for e in errors])


def jtt_weights(errors: torch.Tensor, lambda_up: float = 20.0) -> torch.Tensor:
    """JTT sampling weights, float32 [N]: 1 + (λ_up − 1)·error, i.e. λ_up for the error set and 1
    elsewhere. λ_up >= 1 (λ_up = 1 is plain ERM); the paper's repo uses 20 (Waterbirds) and 6
    (civilcomments-small)."""
    lambda_up = _options.real("jtt_weights", "lambda_up", lambda_up, low=1.0)
    if not isinstance(errors, torch.Tensor) or errors.dtype != torch.bool:
        raise TypeError(f"jtt_weights: errors must be a bool tensor (from jtt_error_set), got "
                        f"{getattr(errors, 'dtype', type(errors).__name__)}")
    if errors.dim() != 1 or errors.numel() == 0:
        raise ValueError(f"jtt_weights: errors must be a non-empty 1-D tensor [N], got shape {tuple(errors.shape)}")
    return 1.0 + (lambda_up - 1.0) * errors.float()


def jtt_sampler(weights: torch.Tensor, num_samples: int | None = None,
                generator: torch.Generator | None = None) -> WeightedRandomSampler:
    """A ``WeightedRandomSampler`` drawing ``num_samples`` (default N) indices with replacement,
    example i with probability weights[i] / Σ weights: JTT step 4's up-sampled retraining set."""
    if not isinstance(weights, torch.Tensor) or not weights.is_floating_point():
        raise TypeError(f"jtt_sampler: weights must be a floating-point tensor, got "
                        f"{getattr(weights, 'dtype', type(weights).__name__)}")
    if weights.dim() != 1 or weights.numel() == 0:
        raise ValueError(f"jtt_sampler: weights must be a non-empty 1-D tensor [N], got shape {tuple(weights.shape)}")
    weights = weights.detach().cpu()  # the sampler draws on the CPU; built once, not per step
    if not (torch.isfinite(weights).all() and (weights >= 0).all() and (weights > 0).any()):
        raise ValueError("jtt_sampler: weights must be finite, >= 0 and not all 0")
    num_samples = len(weights) if num_samples is None else _options.integer("jtt_sampler", "num_samples", num_samples)
    generator = _options.generator("jtt_sampler", generator)
    return WeightedRandomSampler(weights, num_samples, replacement=True, generator=generator)


# ----------------------------------------------------------------------------------- Group DRO

class GroupDRO:
    """Online Group DRO (Sagawa et al. 2020). Per step, from per-sample losses and group ids:
    ℓ_g = mean loss of group g's samples in the batch (0 for a group absent from the batch),
    q_g ← q_g·exp(η ℓ_g), q ← q / Σ q, and the loss is Σ_g q_g ℓ_g with q detached (the updated
    q, as in Sagawa's code). An absent group's factor is exp(0) = 1, so its q changes only
    through the renormalisation. q starts uniform and is kept in float64.

    Group ids must lie in [0, n_groups). On the CPU that is checked; on a GPU it is not (that
    would read the ids back every step): a sample with an out-of-range id then belongs to no
    group and is ignored. A step whose group losses are not all finite (e.g. an AMP overflow
    that GradScaler skips) leaves q as it was, so one bad step does not poison q."""

    def __init__(self, n_groups: int, step_size: float = 0.1):
        self.n_groups = _options.integer("GroupDRO", "n_groups", n_groups)
        self.step_size = _options.real("GroupDRO", "step_size", step_size, low=0.0)
        self.q = torch.full((self.n_groups,), 1.0 / self.n_groups, dtype=torch.float64)

    def group_losses(self, per_sample_losses: torch.Tensor, groups: torch.Tensor):
        """(ℓ [G] differentiable, present [G] bool) for this batch; absent groups get ℓ_g = 0."""
        losses = per_sample_losses
        if not isinstance(losses, torch.Tensor) or not losses.is_floating_point() or losses.dim() != 1:
            raise TypeError("GroupDRO: per_sample_losses must be a 1-D floating-point tensor [B] "
                            "(e.g. cross_entropy(..., reduction='none'))")
        if not isinstance(groups, torch.Tensor) or groups.dtype != torch.int64:
            raise TypeError(f"GroupDRO: groups must be an int64 tensor [B], got "
                            f"{getattr(groups, 'dtype', type(groups).__name__)}")
        if groups.shape != losses.shape or losses.numel() == 0:
            raise ValueError(f"GroupDRO: per_sample_losses and groups must have the same non-empty shape [B], "
                             f"got {tuple(losses.shape)} and {tuple(groups.shape)}")
        if groups.device != losses.device:
            raise ValueError(f"GroupDRO: groups is on {groups.device} but per_sample_losses is on {losses.device}")
        if groups.device.type == "cpu" and ((groups < 0).any() or (groups >= self.n_groups).any()):
            raise ValueError(f"GroupDRO: group ids must lie in [0, {self.n_groups}), got "
                             f"min {int(groups.min())} and max {int(groups.max())}")
        # A [G, B] membership matrix instead of index_add_/bincount: no host sync (CUDA bincount
        # reads the max back), deterministic sums, and out-of-range ids simply match no row.
        ids = torch.arange(self.n_groups, device=groups.device)
        member = (groups[None, :] == ids[:, None]).to(accumulate_dtype(losses.dtype))
        counts = member.sum(1)
        sums = member @ losses.to(member.dtype)
        return (sums / counts.clamp_min(1)).to(losses.dtype), counts > 0

    def __call__(self, per_sample_losses: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        group_loss, _ = self.group_losses(per_sample_losses, groups)
        values = group_loss.detach().double()
        finite = torch.isfinite(values).all()  # a device tensor: selected below, never read (no sync)
        q = self.q.to(values.device)
        # q·exp(ηℓ) renormalised, in log space: the same value, but no overflow of exp(ηℓ).
        # Absent groups have ℓ_g = 0, so their factor is 1 as in the definition. A non-finite
        # step makes ``updated`` NaN; it is discarded by the where, never read.
        updated = torch.softmax(q.log() + self.step_size * values, dim=0)
        self.q = torch.where(finite, updated, q)
        return (self.q.to(group_loss.dtype) * group_loss).sum()

    def state_dict(self) -> dict:
        return {"q": self.q.clone(), "n_groups": self.n_groups, "step_size": self.step_size}

    def load_state_dict(self, state: dict) -> None:
        n_groups = _options.integer("GroupDRO", "n_groups", state["n_groups"])
        q = state["q"]
        if not isinstance(q, torch.Tensor) or q.shape != (n_groups,):
            raise ValueError(f"GroupDRO: state q must be a tensor of shape [{n_groups}], got {getattr(q, 'shape', q)}")
        self.n_groups = n_groups
        self.step_size = _options.real("GroupDRO", "step_size", state["step_size"], low=0.0)
        self.q = q.detach().double().clone()


# ------------------------------------------------------------------------------ model selection

class WorstGroupSelection:
    """Model selection by validation worst-group accuracy (WGA), as Kulkarni et al. select the
    epoch: ``update(step, wga, model)`` keeps a deep copy of the model's state_dict whenever
    ``wga`` beats the best so far (strictly: on ties the earlier one stays) and returns whether
    it did. ``best_state``, ``best_wga`` and ``best_step`` are None before the first update."""

    def __init__(self):
        self.best_state: dict | None = None
        self.best_wga: float | None = None
        self.best_step: int | None = None

    def update(self, step: int, wga, model) -> bool:
        step = _options.integer("WorstGroupSelection", "step", step, low=0)
        if isinstance(wga, torch.Tensor):
            if wga.numel() != 1:
                raise ValueError(f"WorstGroupSelection: wga must be a number or a 0-d tensor, "
                                 f"got shape {tuple(wga.shape)}")
            wga = wga.item()  # selection runs at evaluation time, not in the training step
        wga = _options.real("WorstGroupSelection", "wga", wga)
        if not hasattr(model, "state_dict"):
            raise TypeError(f"WorstGroupSelection: model must have a state_dict(), got {type(model).__name__}")
        if self.best_wga is not None and wga <= self.best_wga:
            return False
        self.best_state = copy.deepcopy(model.state_dict())
        self.best_wga, self.best_step = wga, step
        return True

    def load_best(self, model) -> None:
        """Load the best state into ``model``."""
        if self.best_state is None:
            raise ValueError("WorstGroupSelection: no state kept yet; call update() first")
        model.load_state_dict(self.best_state)
