"""The method abstraction: one object per multi-task method, its options checked when it is
built, its state (EMAs, running weights) saved by ``state_dict()``.

Three families, by what the method needs to see:

* ``GramWeighting``: task weights w [T] from the Gram matrix K = G Gᵀ [T, T] (PCGrad, MGDA,
  UPGrad, ...); the update is w · G, one Gram pass and one combine pass over G. MTLOptimizer
  can reuse w for k steps (``every=k``): with w fixed, w · G is the gradient of Σ w_t L_t.
* ``ElementwiseMethod``: works on G coordinate by coordinate (GradDrop).
* ``LossMethod``: builds one loss from the task losses (CosReg, GO4Align); it never sees G, so
  it has no ``aggregate(G)`` form and MTLOptimizer runs one backward of the loss it builds.

Two optional traits cut across the families. ``needs_losses``: a G-method whose weights also
depend on the values of the task losses (IMTL's loss scales, DB-MTL's log losses) gets them from
``take_losses(losses)`` before each call (MTLOptimizer does it; ``fastmtl.aggregate(G, method,
losses=...)`` too). ``parameters()``: learnable tensors of the method (UW's log-variances, IMTL's
loss scales) that train with the model, as in LibMTL: MTLOptimizer adds them to the wrapped
optimizer as a param group of their own; a method's step sets or accumulates their ``.grad``.

Every G-method is called as ``method(G) -> [P]``. The registry maps names to classes.
"""

from __future__ import annotations

import abc
from typing import ClassVar

import torch

from fastmtl import _validate, functional
from fastmtl._numerics import accumulate_dtype
from fastmtl.methods import _options, _state

_REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: makes ``cls`` available by its ``name``."""
    if cls.name in _REGISTRY:
        raise ValueError(f"a method named {cls.name!r} is registered already")
    _REGISTRY[cls.name] = cls
    return cls


def available() -> list[str]:
    """Every method name, in alphabetical order."""
    return sorted(_REGISTRY)


def method_class(name: str) -> type[Method]:
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(available())}")
    return _REGISTRY[name]


def create(method: str | Method, **options) -> Method:
    """A method object from its name and options, or the given object itself (no options then)."""
    if isinstance(method, Method):
        if options:
            raise TypeError(f"options {sorted(options)} go to create(); {method!r} is built already")
        return method
    cls = method_class(method)
    try:
        return cls(**options)
    except TypeError as error:
        if "unexpected keyword" in str(error) or "positional argument" in str(error):
            raise TypeError(f"method {method!r} does not take these options: {error}") from None
        raise


class Method(abc.ABC):
    """Base of every method. Subclasses set ``name`` and ``family`` and keep their validated
    options in ``self.options`` (so ``fresh()`` can build an identical method with new state)."""

    name: ClassVar[str]
    family: ClassVar[str]  # "gram", "elementwise" or "loss"
    needs_losses: ClassVar[bool] = False  # True: take_losses() before each call (see the module docstring)
    # False: needs whole parameter-level rows of G (per-task state of G's size, sums over every
    # parameter): MTLOptimizer refuses it in feature mode and with the sharded reduction.
    feature_level: ClassVar[bool] = True

    def __init__(self, **options):
        self.options = options
        self._losses: torch.Tensor | None = None
        self._grad_scale: torch.Tensor | None = None

    def parameters(self) -> list[torch.Tensor]:
        """The method's learnable tensors (leaf tensors that require grad); none by default."""
        return []

    def move_parameters_(self, device: torch.device) -> None:
        """Moves the learnable tensors to ``device`` in place (the same objects, so an optimizer
        holding them keeps them): MTLOptimizer puts them where the shared parameters are."""
        for p in self.parameters():
            p.data = p.data.to(device)

    def take_losses(self, losses, scale: torch.Tensor | None = None) -> None:
        """The task losses of this step (detached, unscaled), for a method that ``needs_losses``.
        ``scale``: the GradScaler's scale of this step (a device tensor), or None: a method that
        writes its parameters' ``.grad`` itself multiplies by it, as a scaled backward would, so
        that the scaler's ``unscale_`` gives the true gradient (IMTL's loss scales)."""
        if not self.needs_losses:
            raise ValueError(f"{self.name} does not use the task losses")
        stacked = losses if isinstance(losses, torch.Tensor) else _state.stacked_losses(losses)
        if stacked.dim() != 1 or stacked.numel() == 0:
            raise ValueError(f"{self.name}: losses must be one scalar per task, got shape {tuple(stacked.shape)}")
        self._losses = stacked.detach()
        self._grad_scale = scale

    def losses_for(self, T: int) -> torch.Tensor:
        """This step's losses (from ``take_losses``), checked against the T rows of G; each call
        consumes them, so a step never reuses the previous step's losses by mistake."""
        losses, self._losses = self._losses, None
        if losses is None:
            raise ValueError(f"{self.name} needs the task losses of the step: use MTLOptimizer, or "
                             f"fastmtl.aggregate(G, {self.name!r}, losses=[...])")
        if losses.numel() != T:
            raise ValueError(f"{self.name}: got {losses.numel()} losses for the {T} rows of G")
        return losses

    def fresh(self) -> Method:
        """The same method with the same options and a new, empty state."""
        return type(self)(**self.options)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"{self.name} keeps no state, but the state_dict holds {sorted(state)}")

    def __repr__(self) -> str:
        options = ", ".join(f"{key}={value!r}" for key, value in self.options.items())
        return f"{type(self).__name__}({options})"


def _impl(method: str, impl) -> str:
    return _options.one_of(method, "impl", impl, _validate.IMPLS)


class GramWeighting(Method):
    """A method whose update is w · G with w = ``weights(K)``.

    Subclasses implement ``solve(K, finite) -> w`` on a float64 K that is always finite (a
    non-finite K is replaced by the identity so that no solver raises), and must leave their
    state unchanged when ``finite`` (a 0-d bool tensor) is False, without reading it on the
    host. The documented NaN policy follows: non-finite G gives all-NaN weights, hence an
    all-NaN update, and the state of a stateful method survives the step (e.g. one that a
    GradScaler skips)."""

    family = "gram"
    needs_gram: ClassVar[bool] = True  # False when w depends on T alone (sum, mean)
    scale_linear: ClassVar[bool] = True  # False when w · G does not scale with G (Nash-MTL)

    def __init__(self, *, impl: str = "auto"):  # a method with no options of its own
        self._set_options(impl=impl)

    def _set_options(self, *, impl: str = "auto", **options) -> None:
        """Subclasses with options call this with their checked values (plus ``impl``)."""
        Method.__init__(self, impl=_impl(self.name, impl), **options)

    @property
    def impl(self) -> str:
        return self.options["impl"]

    @abc.abstractmethod
    def solve(self, K: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
        """The weights w [T] from a finite float64 K (see the class docstring): the torch path."""

    def compiled_solve(self, K: torch.Tensor) -> torch.Tensor | None:
        """The weights from the method's compiled op (csrc/include/fastmtl/<method>_math.h) on a
        float64 K, or None when it has none. The op applies the NaN policy itself (all-NaN for
        a non-finite K), so this path adds no masking ops: one launch per solve on a GPU."""
        return None

    def check_gram(self, K) -> None:
        if not isinstance(K, torch.Tensor) or K.dim() != 2 or K.shape[0] != K.shape[1] or K.shape[0] == 0:
            raise ValueError(f"{self.name}: K must be a non-empty square [T, T] tensor, got {getattr(K, 'shape', K)!r}")

    def weights(self, K: torch.Tensor) -> torch.Tensor:
        """Task weights w [T] (float64) from the Gram matrix K [T, T]."""
        self.check_gram(K)
        K = K.detach().double()
        if functional.use_extension(self.impl, K):
            w = self.compiled_solve(K)
            if w is not None:
                return w
        finite = torch.isfinite(K).all()
        identity = torch.eye(K.shape[0], dtype=K.dtype, device=K.device)
        w = self.solve(torch.where(finite, K, identity), finite)
        return torch.where(finite, w, torch.full_like(w, float("nan")))

    def gram(self, G: torch.Tensor) -> torch.Tensor:
        """K for these weights (float64 where float32 would overflow); a placeholder of the
        right shape when the weights ignore it."""
        self._gram_dtype = accumulate_dtype(G.dtype)  # for precision_dtype()
        if self.needs_gram:
            return functional.gram_for_weights(G, impl=self.impl)
        return torch.zeros((G.shape[0], G.shape[0]), dtype=self._gram_dtype, device=G.device)

    def precision_dtype(self, K: torch.Tensor) -> torch.dtype:
        """The floating dtype whose rounding K carries, for a solve's tolerances (PCD, ConFIG):
        G's accumulation dtype when ``gram(G)`` made this K (K may be float64 then, rescued from
        an overflow or on CUDA), else K's own (a direct ``weights(K)`` call). Read once per K."""
        made, self._gram_dtype = getattr(self, "_gram_dtype", None), None
        dtype = made if K.dtype == torch.float64 and made is not None else K.dtype
        return dtype if dtype.is_floating_point else torch.float64

    def __call__(self, G: torch.Tensor) -> torch.Tensor:
        G = _validate.task_matrix(G)
        return functional.combine(G, self.weights(self.gram(G)), impl=self.impl)


class ElementwiseMethod(Method):
    """A method that combines G coordinate by coordinate. ``signs`` and ``batch`` describe a
    feature-level G (the activation and the batch size), set by MTLOptimizer's feature mode."""

    family = "elementwise"
    # False: the method's state or output does not follow G's scale (MoCo's loss-normalised rows,
    # ExcessMTL's and DB-MTL's running statistics): under a GradScaler, MTLOptimizer calls it on
    # G / scale and multiplies the result by the scale, so it sees the true gradients.
    scale_linear: ClassVar[bool] = True

    @abc.abstractmethod
    def __call__(
        self, G: torch.Tensor, *, signs: torch.Tensor | None = None, batch: int | None = None, column_offset: int = 0
    ) -> torch.Tensor:
        """The combined gradient [P] of G [T, P]. ``column_offset``: G holds columns
        [column_offset, column_offset + P) of a G split by columns across processes; the result
        is those columns of the unsharded result (a method's randomness is indexed by column)."""


class LossMethod(Method):
    """A method that builds one loss from the task losses: ``loss(losses, shared) -> scalar``."""

    family = "loss"

    @abc.abstractmethod
    def loss(self, losses, shared) -> torch.Tensor:
        """The one loss to back-propagate, from the task losses and the shared parameters."""

    def __call__(self, G: torch.Tensor) -> torch.Tensor:
        raise TypeError(f"{self.name} works on the task losses, not on their gradients: it has no aggregate(G) "
                        f"form; use it through MTLOptimizer (one backward of the loss it builds)")
