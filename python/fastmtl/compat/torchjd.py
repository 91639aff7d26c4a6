"""torchjd 0.18's aggregation API on fastmtl's methods.

    from fastmtl.compat.torchjd import UPGrad          # instead of: from torchjd.aggregation import UPGrad
    from torchjd.autojac import mtl_backward, jac_to_grad
    mtl_backward(losses, features)
    jac_to_grad(shared_params, UPGrad())

Every class here has torchjd's name and constructor signature and IS a torchjd object: it
subclasses the torchjd base that torchjd's class subclasses (``GramianWeightedAggregator``,
``WeightedAggregator``, ``Aggregator``, the Gramian or matrix ``Weighting``, ``Stateful``), so
``isinstance`` checks and ``torchjd.autojac`` accept it. The computation is fastmtl's: each object
owns a ``fastmtl.methods`` method built from the torchjd arguments (``.method``); an aggregator
returns ``method(J)`` (K from fastmtl's Gram op, w from the method's compiled solve, w · J by
``fastmtl.functional.combine``), a Gramian weighting returns ``method.weights(K)``. An aggregator
and its weighting share one method object, so a stateful one keeps one state across calls;
``reset()`` clears it, as torchjd's ``Stateful.reset``. Arguments are attributes that can be set
later, as torchjd's; each value is checked by building the fastmtl method (ValueError/TypeError
naming the method and option) and the state is kept when it still fits.

Mapping (torchjd argument -> fastmtl option):

=================  ==============  =============================================================
torchjd            fastmtl         arguments
=================  ==============  =============================================================
UPGrad, DualProj   upgrad,         pref_vector -> rows diag(p) (UPGrad) / p (DualProj), 1/T by
                   dualproj        default; projector -> its norm_eps, reg_eps (the QP is solved
                                   exactly by fastmtl, not by the projector)
MGDA               mgda            epsilon, max_iters
IMTLG              imtl_g          -
AlignedMTL         aligned_mtl     pref_vector (B · p; given: the torch path), scale_mode
CAGrad             cagrad          c, norm_eps (rescale=0, torchjd's)
ConFIG             config          pref_vector
Constant           constant        weights
Mean, Sum          mean, sum       -
Random             random          - (draws from torch's global generator, as torchjd)
Krum               krum            n_byzantine, n_selected; squared=False (torchjd's plain
                                   distances; fastmtl's default is the paper's squared ones)
TrimmedMean        trimmed_mean    trim_number
PCGrad             pcgrad          reduction="sum", shuffle=True (a random task order per call
                                   from torch's global generator, as torchjd; the draws differ)
GradVac            gradvac         beta, eps; shuffle=True (as PCGrad)
GradDrop           graddrop        leak (None -> 0); f must be the identity (fastmtl's purity is
                                   fixed); U is drawn from fastmtl's Philox stream, not torch.rand
NashMTL            nash_mtl        max_norm (applied at every call, as torchjd, also when the
                                   weights are reused); update_weights_every (kept here);
                                   n_tasks (checked against J); optim_niter (checked, unused:
                                   fastmtl solves K α = 1/α to convergence by Newton steps)
PCD                pcd             tau, beta, eps
FairGrad           fairgrad        alpha; max_iters (None -> 100 Newton steps; torchjd: scipy's
                                   function evaluations)
MoDoWeighting      modo            gamma, rho (input: A = J_1 J_2ᵀ, as torchjd)
SDMGradWeighting   sdmgrad         lr, momentum, n_iter, lambda_, pref_vector (input: A)
CRMOGMWeighting    crmogm          weighting (one of this module's weightings; its method is the
                                   base, its state advances as torchjd's), alpha, initial_weights
ExcessMTL          excess_mtl      robust_step_size, n_warmup_steps
=================  ==============  =============================================================

Conventions that differ from torchjd (docs/compat.md has the details):

* Empty input (no task or no parameter) raises ValueError; torchjd returns zeros.
* Results are never differentiable (fastmtl detaches its input): torchjd's Mean, Sum, Constant,
  Random, ExcessMTL and AlignedMTL build a graph through the combination.
* Weights are computed in float64 and returned in the input's dtype.
* Random orders and draws (PCGrad, GradVac, GradDrop, Random in float32) come from other
  streams: seeded runs are reproducible, but not torchjd's draws.
"""

from __future__ import annotations

from typing import ClassVar

import torch

try:
    from torchjd._mixins import Stateful
    from torchjd._vector_str import pref_vector_to_str_suffix, vector_to_str
    from torchjd.aggregation import (
        Aggregator,
        GramianWeightedAggregator,
        WeightedAggregator,
        Weighting,
    )
    from torchjd.aggregation._weighting_bases import _GramianWeighting, _MatrixWeighting
except ImportError as error:  # pragma: no cover - exercised by tests/test_compat_torchjd.py in a subprocess
    raise ImportError(
        'fastmtl.compat.torchjd needs torchjd 0.18 (an optional dependency): pip install "fastmtl[torchjd]" '
        f"(or pip install torchjd==0.18.0). The import failed with: {error}") from error

from fastmtl import _validate, functional, methods
from fastmtl.methods._state import on_device
from fastmtl.methods.dual_cone import DualProj as _DualProjMethod
from fastmtl.methods.dual_cone import UPGrad as _UPGradMethod
from fastmtl.methods.gram_space import AlignedMTL as _AlignedMTLMethod
from fastmtl.methods.gram_space import aligned_mtl_weights
from fastmtl.methods.peers_torchjd import _check_length, _vector_option

# ----- fastmtl methods with torchjd's preference vector ---------------------------------------------


def _set_pref(method, pref_vector) -> None:
    # An option of its own (fresh() passes it back to __init__), checked as fastmtl's vectors.
    method.options["pref_vector"] = None if pref_vector is None else _vector_option(method.name, "pref_vector",
                                                                                    pref_vector)
    method._pref_cache = {}


class _PrefUPGrad(_UPGradMethod):
    """UPGrad whose rows are diag(p) (torchjd's pref_vector p; 1/T each when None)."""

    def __init__(self, *, norm_eps: float = 1e-4, reg_eps: float = 1e-4, pref_vector=None, impl: str = "auto"):
        super().__init__(norm_eps=norm_eps, reg_eps=reg_eps, impl=impl)
        _set_pref(self, pref_vector)

    def _pref(self, K: torch.Tensor) -> torch.Tensor | None:
        pref = self.options["pref_vector"]
        if pref is None:
            return None
        _check_length(self.name, "pref_vector", pref, K.shape[0])
        return on_device(self._pref_cache, pref, K.device)  # copied to a device once, not per call

    def rows(self, K: torch.Tensor) -> torch.Tensor:
        pref = self._pref(K)
        return super().rows(K) if pref is None else torch.diag(pref)


class _PrefDualProj(_DualProjMethod):
    """DualProj whose projected row is p (torchjd's pref_vector; 1/T each when None)."""

    def __init__(self, *, norm_eps: float = 1e-4, reg_eps: float = 1e-4, pref_vector=None, impl: str = "auto"):
        super().__init__(norm_eps=norm_eps, reg_eps=reg_eps, impl=impl)
        _set_pref(self, pref_vector)

    _pref = _PrefUPGrad._pref

    def rows(self, K: torch.Tensor) -> torch.Tensor:
        pref = self._pref(K)
        return super().rows(K) if pref is None else pref[None]


class _PrefAlignedMTL(_AlignedMTLMethod):
    """Aligned-MTL's B · p (torchjd's pref_vector p): the compiled op computes B · (1/T) only, so a
    given p runs the torch path (gram_space.aligned_mtl_weights)."""

    def __init__(self, *, scale_mode: str = "min", pref_vector=None, impl: str = "auto"):
        super().__init__(scale_mode=scale_mode, impl=impl)
        _set_pref(self, pref_vector)

    _pref = _PrefUPGrad._pref

    def solve(self, K: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
        return aligned_mtl_weights(K, self.options["scale_mode"], self._pref(K))

    def compiled_solve(self, K: torch.Tensor) -> torch.Tensor | None:
        return super().compiled_solve(K) if self.options["pref_vector"] is None else None


# ----- the option machinery ---------------------------------------------------------------------


class _Option:
    """A torchjd constructor argument kept as an attribute: setting it rebuilds the fastmtl method
    (which checks the value), keeping the state when it still loads."""

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, obj, owner=None):
        return self if obj is None else obj._values[self.name]

    def __set__(self, obj, value):
        obj._set_option(self.name, value)


class _Delegated:
    """An aggregator's argument that lives on its weighting (torchjd's aggregators do the same)."""

    def __init__(self, holder: str = "gramian_weighting"):
        self.holder = holder

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, obj, owner=None):
        return self if obj is None else getattr(getattr(obj, self.holder), self.name)

    def __set__(self, obj, value):
        setattr(getattr(obj, self.holder), self.name, value)


class _Bridge:
    """Owns ``method``, the fastmtl method built by ``_build(values)`` from the torchjd arguments."""

    # torchjd's tests and helpers read these on classes with optional dependencies; fastmtl needs none.
    _REQUIRED_DEPS: ClassVar[list[str]] = []
    _INSTALL_HINT = ""

    def _start(self, **values) -> None:
        self._values = values
        self._method = self._build(values)

    def _build(self, values: dict):
        """The fastmtl method for these torchjd arguments: every bridge class defines its own."""
        raise TypeError(f"{type(self).__name__} does not define _build (a bridge class must)")

    def _set_option(self, name: str, value) -> None:
        values = {**self._values, name: value}
        method = self._build(values)  # raises on a bad value, leaving everything as it was
        old = self._method
        if type(old) is type(method):
            try:
                method.load_state_dict(old.state_dict())
            except (ValueError, TypeError, KeyError):  # the state does not fit the new options
                pass
        self._values, self._method = values, method

    @property
    def method(self):
        """The fastmtl method that computes this object's result."""
        return self._method

    def reset(self) -> None:
        """Clears the state (torchjd's ``Stateful.reset``): the next call starts as the first."""
        self._method = self._method.fresh()

    # nn.Module's state_dict carries the fastmtl method's state (GradVac's targets, PCD's EMA, ...)
    # as this module's extra state, where torchjd registers buffers of its own layout.
    def get_extra_state(self):
        return {"method": self._method.name, "state": self._method.state_dict()}

    def set_extra_state(self, state) -> None:
        if not isinstance(state, dict) or state.get("method") != self._method.name:
            raise ValueError(f"{type(self).__name__}: the saved state is for "
                             f"{state.get('method') if isinstance(state, dict) else state!r}, this object computes "
                             f"{self._method.name!r}")
        self._method.load_state_dict(state["state"])

    def __repr__(self) -> str:
        arguments = ", ".join(f"{name}={value!r}" for name, value in self._values.items())
        return f"{type(self).__name__}({arguments})"


def _gram_method(name: str, **options):
    return methods.create(name, **options)


def _no_grad_weights(method, K: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    with torch.no_grad():
        return method.weights(K).to(dtype)


class _GramianBridge(_Bridge, _GramianWeighting):
    """A Gramian weighting: w = ``method.weights(K)`` (float64), in K's dtype."""

    def forward(self, gramian: torch.Tensor, /) -> torch.Tensor:
        return _no_grad_weights(self._method, gramian, gramian.dtype)

    def _crmogm_gram(self, stat: torch.Tensor) -> torch.Tensor:
        return stat


class _JacobianFreeBridge(_Bridge, _MatrixWeighting):
    """A matrix weighting whose weights do not read the matrix (Mean, Sum, Constant, Random)."""

    def forward(self, matrix: torch.Tensor, /) -> torch.Tensor:
        return _no_grad_weights(self._method, self._crmogm_gram(matrix), matrix.dtype)

    def _crmogm_gram(self, stat: torch.Tensor) -> torch.Tensor:
        return self._method.gram(_validate.task_matrix(stat))  # a [T, T] placeholder: never read


class _SquareBridge(_Bridge, _MatrixWeighting):
    """A matrix weighting on a square A (MoDo, SDMGrad: A = J_1 J_2ᵀ, not necessarily symmetric)."""

    forward = _GramianBridge.forward
    _crmogm_gram = _GramianBridge._crmogm_gram


def _hooked(module: torch.nn.Module) -> bool:
    """Whether calling ``module`` would run hooks (its own or its submodules', or global ones):
    torchjd's documented way to watch the weights is a forward hook on the aggregator's weighting,
    so then the aggregator calls it instead of fusing the weighting into its own computation."""
    from torch.nn.modules import module as torch_module

    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


class _GramianAggregator(GramianWeightedAggregator):
    """torchjd's GramianWeightedAggregator whose result is ``method(J)`` (fastmtl's Gram, weights
    and combine), ``method`` shared with ``gramian_weighting``."""

    _REQUIRED_DEPS: ClassVar[list[str]] = []
    _INSTALL_HINT = ""

    @property
    def method(self):
        return self.gramian_weighting.method

    def forward(self, matrix: torch.Tensor, /) -> torch.Tensor:
        with torch.no_grad():
            if not _hooked(self.gramian_weighting):
                return self.method(matrix)  # the fused path: Gram, weights, combine
            G = _validate.task_matrix(matrix)  # through the weighting module, so its hooks run
            weights = self.gramian_weighting(self.method.gram(G))
            return functional.combine(G, weights, impl=self.method.impl)

    def reset(self) -> None:
        self.gramian_weighting.reset()

    def __repr__(self) -> str:
        return repr(self.gramian_weighting).replace(type(self.gramian_weighting).__name__, type(self).__name__, 1)


class _WeightedAggregator(WeightedAggregator):
    """torchjd's WeightedAggregator whose result is ``method(J)``, ``method`` shared with ``weighting``."""

    _REQUIRED_DEPS: ClassVar[list[str]] = []
    _INSTALL_HINT = ""

    @property
    def method(self):
        return self.weighting.method

    def forward(self, matrix: torch.Tensor, /) -> torch.Tensor:
        with torch.no_grad():
            if not _hooked(self.weighting):
                return self.method(matrix)
            G = _validate.task_matrix(matrix)  # through the weighting module, so its hooks run
            return functional.combine(G, self.weighting(G), impl=getattr(self.method, "impl", "auto"))

    def reset(self) -> None:
        self.weighting.reset()

    def __repr__(self) -> str:
        return repr(self.weighting).replace(type(self.weighting).__name__, type(self).__name__, 1)


class _DirectAggregator(_Bridge, Aggregator):
    """An aggregator with no weighting (ConFIG, GradDrop, TrimmedMean): ``method(J)``."""

    def forward(self, matrix: torch.Tensor, /) -> torch.Tensor:
        with torch.no_grad():
            return self._method(matrix)


def _projector_eps(projector) -> tuple[float, float]:
    if projector is None:
        return 1e-4, 1e-4  # torchjd's default QuadprogProjector()
    try:
        return float(projector.norm_eps), float(projector.reg_eps)
    except AttributeError:
        raise TypeError(f"projector must be None or a torchjd DualConeProjector with norm_eps and reg_eps (fastmtl "
                        f"solves the dual-cone QP itself, with these two), got {projector!r}") from None


def _default_projector():
    from torchjd.linalg import QuadprogProjector

    try:
        return QuadprogProjector()
    except ImportError:  # quadprog absent: fastmtl does not need it
        return None


# ----- UPGrad, DualProj ----------------------------------------------------------------------------


class _DualConeWeighting(_GramianBridge):
    _METHOD: type
    pref_vector = _Option()

    def __init__(self, pref_vector: torch.Tensor | None = None, projector=None) -> None:
        super().__init__()
        self._start(pref_vector=pref_vector, projector=projector)

    def _build(self, values):
        norm_eps, reg_eps = _projector_eps(values["projector"])
        return self._METHOD(norm_eps=norm_eps, reg_eps=reg_eps, pref_vector=values["pref_vector"])

    @property
    def projector(self):
        return self._values["projector"] if self._values["projector"] is not None else _default_projector()

    @projector.setter
    def projector(self, value) -> None:
        self._set_option("projector", value)

    @property
    def weighting(self):
        """torchjd's structure: the weighting of the preference vector (Mean by default)."""
        return MeanWeighting() if self.pref_vector is None else ConstantWeighting(self.pref_vector)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(pref_vector={self.pref_vector!r}, projector={self.projector!r})"


class UPGradWeighting(_DualConeWeighting):
    """torchjd's UPGradWeighting on fastmtl's ``upgrad`` (exact dual-cone projections)."""

    _METHOD = _PrefUPGrad


class DualProjWeighting(_DualConeWeighting):
    """torchjd's DualProjWeighting on fastmtl's ``dualproj``."""

    _METHOD = _PrefDualProj


class _DualConeAggregator(_GramianAggregator):
    _WEIGHTING: type
    pref_vector = _Delegated()
    projector = _Delegated()

    def __init__(self, pref_vector: torch.Tensor | None = None, projector=None) -> None:
        super().__init__(self._WEIGHTING(pref_vector=pref_vector, projector=projector))

    def __str__(self) -> str:
        return f"{type(self).__name__}{pref_vector_to_str_suffix(self.pref_vector)}"


class UPGrad(_DualConeAggregator):
    """torchjd's UPGrad (Quinton & Rey 2024) computed by fastmtl's ``upgrad``."""

    _WEIGHTING = UPGradWeighting


class DualProj(_DualConeAggregator):
    """torchjd's DualProj computed by fastmtl's ``dualproj``."""

    _WEIGHTING = DualProjWeighting


# ----- MGDA, IMTL-G, Aligned-MTL, CAGrad, Krum, PCGrad, FairGrad -----------------------------------------


class MGDAWeighting(_GramianBridge):
    """torchjd's MGDAWeighting on fastmtl's ``mgda`` (Frank-Wolfe, the same steps)."""

    epsilon = _Option()
    max_iters = _Option()

    def __init__(self, epsilon: float = 0.001, max_iters: int = 100) -> None:
        super().__init__()
        self._start(epsilon=epsilon, max_iters=max_iters)

    def _build(self, values):
        return _gram_method("mgda", **values)


class MGDA(_GramianAggregator):
    """torchjd's MGDA computed by fastmtl's ``mgda``."""

    epsilon = _Delegated()
    max_iters = _Delegated()

    def __init__(self, epsilon: float = 0.001, max_iters: int = 100) -> None:
        super().__init__(MGDAWeighting(epsilon=epsilon, max_iters=max_iters))


class IMTLGWeighting(_GramianBridge):
    """torchjd's IMTLGWeighting on fastmtl's ``imtl_g``."""

    def __init__(self) -> None:
        super().__init__()
        self._start()

    def _build(self, values):
        return _gram_method("imtl_g")


class IMTLG(_GramianAggregator):
    """torchjd's IMTLG computed by fastmtl's ``imtl_g``."""

    def __init__(self) -> None:
        super().__init__(IMTLGWeighting())


class AlignedMTLWeighting(_GramianBridge):
    """torchjd's AlignedMTLWeighting on fastmtl's ``aligned_mtl``."""

    pref_vector = _Option()
    scale_mode = _Option()

    def __init__(self, pref_vector: torch.Tensor | None = None, scale_mode: str = "min") -> None:
        super().__init__()
        self._start(pref_vector=pref_vector, scale_mode=scale_mode)

    def _build(self, values):
        return _PrefAlignedMTL(**values)

    @property
    def weighting(self):
        return MeanWeighting() if self.pref_vector is None else ConstantWeighting(self.pref_vector)


class AlignedMTL(_GramianAggregator):
    """torchjd's AlignedMTL computed by fastmtl's ``aligned_mtl``."""

    pref_vector = _Delegated()
    scale_mode = _Delegated()

    def __init__(self, pref_vector: torch.Tensor | None = None, scale_mode: str = "min") -> None:
        super().__init__(AlignedMTLWeighting(pref_vector=pref_vector, scale_mode=scale_mode))

    def __str__(self) -> str:
        return f"AlignedMTL{pref_vector_to_str_suffix(self.pref_vector)}"


class CAGradWeighting(_GramianBridge):
    """torchjd's CAGradWeighting on fastmtl's ``cagrad`` (exact solve; no cvxpy needed)."""

    c = _Option()
    norm_eps = _Option()

    def __init__(self, c: float, norm_eps: float = 0.0001) -> None:
        super().__init__()
        self._start(c=c, norm_eps=norm_eps)

    def _build(self, values):
        return _gram_method("cagrad", c=values["c"], norm_eps=values["norm_eps"], rescale=0)


class CAGrad(_GramianAggregator):
    """torchjd's CAGrad computed by fastmtl's ``cagrad``."""

    c = _Delegated()
    norm_eps = _Delegated()

    def __init__(self, c: float, norm_eps: float = 0.0001) -> None:
        super().__init__(CAGradWeighting(c=c, norm_eps=norm_eps))

    def __str__(self) -> str:
        return f"CAGrad{str(self.c).removesuffix('.0')}"


class KrumWeighting(_GramianBridge):
    """torchjd's KrumWeighting on fastmtl's ``krum`` with squared=False (torchjd's plain distances)."""

    n_byzantine = _Option()
    n_selected = _Option()

    def __init__(self, n_byzantine: int, n_selected: int = 1) -> None:
        super().__init__()
        self._start(n_byzantine=n_byzantine, n_selected=n_selected)

    def _build(self, values):
        return _gram_method("krum", **values, squared=False)


class Krum(_GramianAggregator):
    """torchjd's Krum computed by fastmtl's ``krum`` (squared=False)."""

    n_byzantine = _Delegated()
    n_selected = _Delegated()

    def __init__(self, n_byzantine: int, n_selected: int = 1) -> None:
        super().__init__(KrumWeighting(n_byzantine=n_byzantine, n_selected=n_selected))

    def __str__(self) -> str:
        return f"Krum{self.n_byzantine}-{self.n_selected}"


class PCGradWeighting(_GramianBridge):
    """torchjd's PCGradWeighting on fastmtl's ``pcgrad`` (sum of the projected gradients, a random
    order per task from torch's global generator: torchjd's convention, other draws)."""

    def __init__(self) -> None:
        super().__init__()
        self._start()

    def _build(self, values):
        return _gram_method("pcgrad", reduction="sum", shuffle=True)


class PCGrad(_GramianAggregator):
    """torchjd's PCGrad computed by fastmtl's ``pcgrad``."""

    def __init__(self) -> None:
        super().__init__(PCGradWeighting())


class FairGradWeighting(_GramianBridge):
    """torchjd's FairGradWeighting on fastmtl's ``fairgrad`` (Newton steps; max_iters None -> 100)."""

    alpha = _Option()
    max_iters = _Option()

    def __init__(self, alpha: float, max_iters: int | None = None) -> None:
        super().__init__()
        self._start(alpha=alpha, max_iters=max_iters)

    def _build(self, values):
        max_iters = 100 if values["max_iters"] is None else values["max_iters"]
        return _gram_method("fairgrad", alpha=values["alpha"], max_iters=max_iters)

    def __str__(self) -> str:
        return f"{self.alpha}-{type(self).__name__}"


class FairGrad(_GramianAggregator):
    """torchjd's FairGrad computed by fastmtl's ``fairgrad``."""

    alpha = _Delegated()
    max_iters = _Delegated()

    def __init__(self, alpha: float, max_iters: int | None = None) -> None:
        super().__init__(FairGradWeighting(alpha=alpha, max_iters=max_iters))

    def __str__(self) -> str:
        return f"{self.alpha}-FairGrad"


# ----- stateful Gramian weightings: GradVac, PCD --------------------------------------------------------


class GradVacWeighting(_GramianBridge, Stateful):
    """torchjd's GradVacWeighting on fastmtl's ``gradvac`` (state: the EMA of the cosines)."""

    beta = _Option()
    eps = _Option()

    def __init__(self, beta: float = 0.5, eps: float = 1e-08) -> None:
        super().__init__()
        self._start(beta=beta, eps=eps)

    def _build(self, values):
        return _gram_method("gradvac", **values, shuffle=True)


class GradVac(_GramianAggregator, Stateful):
    """torchjd's GradVac computed by fastmtl's ``gradvac``."""

    beta = _Delegated()
    eps = _Delegated()

    def __init__(self, beta: float = 0.5, eps: float = 1e-08) -> None:
        super().__init__(GradVacWeighting(beta=beta, eps=eps))


class PCDWeighting(_GramianBridge, Stateful):
    """torchjd's PCDWeighting on fastmtl's ``pcd`` (state: the EMA of the squared norms)."""

    tau = _Option()
    beta = _Option()
    eps = _Option()

    def __init__(self, tau: float | torch.Tensor = 0.02, beta: float = 0.999, eps: float = 1e-08) -> None:
        super().__init__()
        self._start(tau=tau, beta=beta, eps=eps)

    def _build(self, values):
        return _gram_method("pcd", **values)


class PCD(_GramianAggregator, Stateful):
    """torchjd's PCD computed by fastmtl's ``pcd``."""

    tau = _Delegated()
    beta = _Delegated()
    eps = _Delegated()

    def __init__(self, tau: float | torch.Tensor = 0.02, beta: float = 0.999, eps: float = 1e-08) -> None:
        super().__init__(PCDWeighting(tau=tau, beta=beta, eps=eps))


# ----- weightings that ignore the matrix: Mean, Sum, Constant, Random ----------------------------------


class MeanWeighting(_JacobianFreeBridge):
    """torchjd's MeanWeighting: fastmtl's ``mean`` (1/T each)."""

    def __init__(self) -> None:
        super().__init__()
        self._start()

    def _build(self, values):
        return _gram_method("mean")


class SumWeighting(_JacobianFreeBridge):
    """torchjd's SumWeighting: fastmtl's ``sum`` (ones)."""

    def __init__(self) -> None:
        super().__init__()
        self._start()

    def _build(self, values):
        return _gram_method("sum")


class RandomWeighting(_JacobianFreeBridge):
    """torchjd's RandomWeighting: fastmtl's ``random`` (softmax of N(0, I), float64 draws from torch's
    global generator; torchjd draws in the matrix's dtype, so float64 input gives the same draws)."""

    def __init__(self) -> None:
        super().__init__()
        self._start()

    def _build(self, values):
        return _gram_method("random")


class ConstantWeighting(_JacobianFreeBridge):
    """torchjd's ConstantWeighting: fastmtl's ``constant``."""

    weights = _Option()

    def __init__(self, weights: torch.Tensor) -> None:
        super().__init__()
        self._start(weights=weights)

    def _build(self, values):
        return _gram_method("constant", weights=values["weights"])


class Mean(_WeightedAggregator):
    """torchjd's Mean computed by fastmtl's ``mean``."""

    def __init__(self) -> None:
        super().__init__(MeanWeighting())


class Sum(_WeightedAggregator):
    """torchjd's Sum computed by fastmtl's ``sum``."""

    def __init__(self) -> None:
        super().__init__(SumWeighting())


class Random(_WeightedAggregator):
    """torchjd's Random computed by fastmtl's ``random``."""

    def __init__(self) -> None:
        super().__init__(RandomWeighting())


class Constant(_WeightedAggregator):
    """torchjd's Constant computed by fastmtl's ``constant``."""

    weights = _Delegated("weighting")

    def __init__(self, weights: torch.Tensor) -> None:
        super().__init__(ConstantWeighting(weights=weights))

    def __str__(self) -> str:
        return f"Constant([{vector_to_str(self.weights)}])"


# ----- weightings of A = J_1 J_2ᵀ: MoDo, SDMGrad; CR-MOGM ----------------------------------------------


class MoDoWeighting(_SquareBridge, Stateful):
    """torchjd's MoDoWeighting on fastmtl's ``modo``: weights from A (e.g. J_1 J_2ᵀ), state λ."""

    gamma = _Option()
    rho = _Option()

    def __init__(self, gamma: float = 0.1, rho: float = 0.1) -> None:
        super().__init__()
        self._start(gamma=gamma, rho=rho)

    def _build(self, values):
        return _gram_method("modo", **values)


class SDMGradWeighting(_SquareBridge, Stateful):
    """torchjd's SDMGradWeighting on fastmtl's ``sdmgrad``: weights from A, state w."""

    lr = _Option()
    momentum = _Option()
    n_iter = _Option()
    lambda_ = _Option()
    pref_vector = _Option()

    def __init__(self, lr: float = 10.0, momentum: float = 0.5, n_iter: int = 20, lambda_: float = 0.3,
                 pref_vector: torch.Tensor | None = None) -> None:
        super().__init__()
        self._start(lr=lr, momentum=momentum, n_iter=n_iter, lambda_=lambda_, pref_vector=pref_vector)

    def _build(self, values):
        return _gram_method("sdmgrad", **values)


class CRMOGMWeighting(_Bridge, Weighting, Stateful):
    """torchjd's CRMOGMWeighting on fastmtl's ``crmogm``: λ_k = α λ_{k-1} + (1 - α) λ̂_k with λ̂_k from
    ``weighting``, one of this module's weightings (whose method is the base; calling this advances
    that weighting's state, as torchjd). ``reset()`` also resets the wrapped weighting."""

    alpha = _Option()
    initial_weights = _Option()

    def __init__(self, weighting, alpha: float = 0.9, initial_weights: torch.Tensor | None = None) -> None:
        if not hasattr(weighting, "_crmogm_gram"):
            raise TypeError(f"CRMOGMWeighting: weighting must be a Gram-space weighting of fastmtl.compat.torchjd "
                            f"(UPGradWeighting(), MGDAWeighting(), MeanWeighting(), ...), got {weighting!r}")
        super().__init__()
        self.weighting = weighting
        self._start(alpha=alpha, initial_weights=initial_weights)

    def _build(self, values):
        return _gram_method("crmogm", base=self.weighting.method.name, **values)

    def forward(self, stat: torch.Tensor, /) -> torch.Tensor:
        # The wrapped weighting's current method is the base: its state is the one that advances.
        base = self.weighting.method
        self._method.base, self._method.needs_gram = base, base.needs_gram
        K = self.weighting._crmogm_gram(stat)
        previous = self._method.lam
        if previous is not None and previous.shape[0] != K.shape[0]:  # fastmtl would start over
            raise ValueError(f"CRMOGMWeighting: the number of objectives changed from {previous.shape[0]} to "
                             f"{K.shape[0]}; call reset() first (torchjd's rule)")
        return _no_grad_weights(self._method, K, stat.dtype)

    def reset(self) -> None:
        self.weighting.reset()
        super().reset()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(weighting={self.weighting!r}, alpha={self.alpha!r}, "
                f"initial_weights={self.initial_weights!r})")


# ----- Nash-MTL ------------------------------------------------------------------------------------------


class _NashMTLWeighting(_Bridge, _MatrixWeighting, Stateful):
    """torchjd's (private) Nash-MTL weighting on fastmtl's ``nash_mtl``: α solves K α = 1/α, new
    every ``update_weights_every`` calls (the first included) and reused in between; at every call
    α is scaled down so that |α · J| <= ``max_norm`` (0: no cap), as torchjd."""

    n_tasks = _Option()
    max_norm = _Option()
    update_weights_every = _Option()
    optim_niter = _Option()

    def __init__(self, n_tasks: int, max_norm: float = 1.0, update_weights_every: int = 1,
                 optim_niter: int = 20) -> None:
        super().__init__()
        self._start(n_tasks=n_tasks, max_norm=max_norm, update_weights_every=update_weights_every,
                    optim_niter=optim_niter)
        self._step = 0
        self._alpha: torch.Tensor | None = None

    def _build(self, values):
        for name in ("n_tasks", "update_weights_every", "optim_niter"):
            methods._options.integer("nash_mtl", name, values[name], low=1)
        methods._options.real("nash_mtl", "max_norm", values["max_norm"], low=0.0)
        return _gram_method("nash_mtl", max_norm=0.0)  # the cap is applied below, at every call

    def forward(self, matrix: torch.Tensor, /) -> torch.Tensor:
        G = _validate.task_matrix(matrix)
        if G.shape[0] != self.n_tasks:
            raise ValueError(f"nash_mtl: n_tasks = {self.n_tasks} but the matrix has {G.shape[0]} rows")
        K = self._method.gram(G)
        if self._step % self.update_weights_every == 0 or self._alpha is None:
            self._alpha = self._method.weights(K)
        self._step += 1
        alpha = self._alpha
        if self.max_norm > 0:
            norm = (alpha @ K.double() @ alpha).clamp_min(0).sqrt()  # |α · J|
            alpha = torch.where(norm > self.max_norm, alpha * (self.max_norm / norm.clamp_min(1e-300)), alpha)
        return alpha.to(matrix.dtype)

    def reset(self) -> None:
        self._step, self._alpha = 0, None


class NashMTL(WeightedAggregator, Stateful):
    """torchjd's NashMTL computed by fastmtl's ``nash_mtl`` (K α = 1/α solved exactly)."""

    _REQUIRED_DEPS: ClassVar[list[str]] = []
    _INSTALL_HINT = ""
    n_tasks = _Delegated("weighting")
    max_norm = _Delegated("weighting")
    update_weights_every = _Delegated("weighting")
    optim_niter = _Delegated("weighting")

    def __init__(self, n_tasks: int, max_norm: float = 1.0, update_weights_every: int = 1,
                 optim_niter: int = 20) -> None:
        super().__init__(_NashMTLWeighting(n_tasks=n_tasks, max_norm=max_norm,
                                           update_weights_every=update_weights_every, optim_niter=optim_niter))

    def forward(self, matrix: torch.Tensor, /) -> torch.Tensor:
        with torch.no_grad():
            G = _validate.task_matrix(matrix)
            return functional.combine(G, self.weighting(G))

    def reset(self) -> None:
        self.weighting.reset()

    __repr__ = _WeightedAggregator.__repr__


# ----- ExcessMTL ---------------------------------------------------------------------------------------


class ExcessMTLWeighting(_Bridge, _MatrixWeighting, Stateful):
    """torchjd's ExcessMTLWeighting on fastmtl's ``excess_mtl`` (an element-wise method: it runs on J
    and its task weights after the step are returned)."""

    robust_step_size = _Option()
    n_warmup_steps = _Option()

    def __init__(self, robust_step_size: float = 1.0, n_warmup_steps: int = 0) -> None:
        super().__init__()
        self._start(robust_step_size=robust_step_size, n_warmup_steps=n_warmup_steps)

    def _build(self, values):
        return _gram_method("excess_mtl", **values)

    def forward(self, matrix: torch.Tensor, /) -> torch.Tensor:
        with torch.no_grad():
            direction = self._method(matrix)
            w = self._method.task_weights  # the state after the step (unchanged by a non-finite J)
            return torch.where(direction.isnan().any(), torch.full_like(w, float("nan")), w).to(matrix.dtype)


class ExcessMTL(_WeightedAggregator, Stateful):
    """torchjd's ExcessMTL computed by fastmtl's ``excess_mtl``."""

    robust_step_size = _Delegated("weighting")
    n_warmup_steps = _Delegated("weighting")

    def __init__(self, robust_step_size: float = 1.0, n_warmup_steps: int = 0) -> None:
        super().__init__(ExcessMTLWeighting(robust_step_size=robust_step_size, n_warmup_steps=n_warmup_steps))


# ----- aggregators without a weighting: ConFIG, GradDrop, TrimmedMean ----------------------------------------


class ConFIG(_DirectAggregator):
    """torchjd's ConFIG computed by fastmtl's ``config``."""

    pref_vector = _Option()

    def __init__(self, pref_vector: torch.Tensor | None = None) -> None:
        super().__init__()
        self._start(pref_vector=pref_vector)

    def _build(self, values):
        return _gram_method("config", pref_vector=values["pref_vector"])

    @property
    def weighting(self):
        return SumWeighting() if self.pref_vector is None else ConstantWeighting(self.pref_vector)

    def __str__(self) -> str:
        return f"ConFIG{pref_vector_to_str_suffix(self.pref_vector)}"


try:  # torchjd's default f, so that repr() is torchjd's
    from torchjd.aggregation._graddrop import _identity
except ImportError:  # pragma: no cover - another torchjd layout
    def _identity(P: torch.Tensor) -> torch.Tensor:
        return P


def _is_identity(f) -> bool:
    return f is _identity


class GradDrop(_DirectAggregator):
    """torchjd's GradDrop computed by fastmtl's ``graddrop``: ``leak`` (None -> no leak) maps
    directly; ``f`` must be the identity (fastmtl's purity is the paper's, with no transform). The
    uniforms come from fastmtl's Philox stream seeded from torch's global generator."""

    f = _Option()
    leak = _Option()

    def __init__(self, f=_identity, leak: torch.Tensor | None = None) -> None:
        super().__init__()
        self._start(f=f, leak=leak)

    def _build(self, values):
        if not _is_identity(values["f"]):
            raise ValueError(f"graddrop: f must be the identity in fastmtl (its purity is the paper's, with no "
                             f"transform), got {values['f']!r}")
        leak = values["leak"]
        if isinstance(leak, torch.Tensor) and leak.dim() != 1:
            raise ValueError(f"graddrop: leak must be a 1-dimensional tensor, got shape {tuple(leak.shape)}")
        return _gram_method("graddrop", leak=0.0 if leak is None else leak)

    def __str__(self) -> str:
        return "GradDrop" if self.leak is None else f"GradDrop([{vector_to_str(self.leak)}])"


class TrimmedMean(_DirectAggregator):
    """torchjd's TrimmedMean computed by fastmtl's ``trimmed_mean``."""

    trim_number = _Option()

    def __init__(self, trim_number: int) -> None:
        super().__init__()
        self._start(trim_number=trim_number)

    def _build(self, values):
        return _gram_method("trimmed_mean", **values)

    def __str__(self) -> str:
        return f"TM{self.trim_number}"


# torchjd.aggregation name -> the class here (scripts/torchjd_compat_plugin.py substitutes them).
TORCHJD_REPLACEMENTS: dict[str, type] = {
    cls.__name__: cls for cls in (
        AlignedMTL, AlignedMTLWeighting, CAGrad, CAGradWeighting, ConFIG, Constant, ConstantWeighting,
        CRMOGMWeighting, DualProj, DualProjWeighting, ExcessMTL, ExcessMTLWeighting, FairGrad, FairGradWeighting,
        GradDrop, GradVac, GradVacWeighting, IMTLG, IMTLGWeighting, Krum, KrumWeighting, Mean, MeanWeighting,
        MGDA, MGDAWeighting, MoDoWeighting, NashMTL, _NashMTLWeighting, PCD, PCDWeighting, PCGrad,
        PCGradWeighting, Random, RandomWeighting, SDMGradWeighting, Sum, SumWeighting, TrimmedMean, UPGrad,
        UPGradWeighting)
}

__all__ = [  # noqa: RUF022 (alphabetical, as torchjd's, ignoring case)
    "Aggregator", "AlignedMTL", "AlignedMTLWeighting", "CAGrad", "CAGradWeighting", "ConFIG", "Constant",
    "ConstantWeighting", "CRMOGMWeighting", "DualProj", "DualProjWeighting", "ExcessMTL", "ExcessMTLWeighting",
    "FairGrad", "FairGradWeighting", "GradDrop", "GradVac", "GradVacWeighting", "GramianWeightedAggregator", "IMTLG",
    "IMTLGWeighting", "Krum", "KrumWeighting", "Mean", "MeanWeighting", "MGDA", "MGDAWeighting", "MoDoWeighting",
    "NashMTL", "PCD", "PCDWeighting", "PCGrad", "PCGradWeighting", "Random", "RandomWeighting", "SDMGradWeighting",
    "Sum", "SumWeighting", "TrimmedMean", "UPGrad", "UPGradWeighting", "WeightedAggregator", "Weighting",
]
