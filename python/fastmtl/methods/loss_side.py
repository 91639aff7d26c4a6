"""Loss-side methods: each builds one loss from the task losses, back-propagated once.
CosReg adds a differentiable penalty to the summed loss; GO4Align, RLW and GLS weight or
combine the task losses."""

from __future__ import annotations

import torch

from fastmtl.losses.cosreg import cosreg_penalty
from fastmtl.losses.go4align import GO4Align
from fastmtl.methods import _options
from fastmtl.methods.base import LossMethod, register


@register
class CosReg(LossMethod):
    """Σ_t L_t + weight · mean over task pairs of cos(∇L_i, ∇L_j)² (double backward)."""

    name = "cosreg"

    def __init__(self, *, weight: float = 1.0, eps: float = 1e-8):
        super().__init__(weight=_options.real(self.name, "weight", weight, low=0.0),
                         eps=_options.real(self.name, "eps", eps, low=0.0, low_open=True))

    def loss(self, losses, shared) -> torch.Tensor:
        return sum(loss.reshape(()) for loss in losses) + cosreg_penalty(losses, shared, **self.options)


@register
class GO4AlignMethod(LossMethod):
    """Σ_m ω_m L_m with GO4Align's weights; T is read from the first step. State: ζ."""

    name = "go4align"

    def __init__(self, *, n_groups: int = 2, beta: float = 1e-4):
        super().__init__(n_groups=_options.integer(self.name, "n_groups", n_groups),
                         beta=_options.real(self.name, "beta", beta, low=0.0))
        self.weighter: GO4Align | None = None

    def loss(self, losses, shared) -> torch.Tensor:
        if self.weighter is None:
            self.weighter = GO4Align(len(losses), **self.options)
        return self.weighter.loss(losses)

    def state_dict(self) -> dict:
        return {} if self.weighter is None else {"n_tasks": self.weighter.n_tasks, **self.weighter.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state and (state["n_groups"], state["beta"]) != (self.options["n_groups"], self.options["beta"]):
            raise ValueError(f"go4align: the state_dict is for n_groups={state['n_groups']}, beta={state['beta']}; "
                             f"this method has n_groups={self.options['n_groups']}, beta={self.options['beta']}")
        self.weighter = None
        if state:
            self.weighter = GO4Align(state["n_tasks"], **self.options)
            self.weighter.load_state_dict(state)


@register
class RLW(LossMethod):
    """Random loss weighting (Lin et al. 2022, "Reasonable Effectiveness of Random Weighting"):
    Σ_t w_t L_t with w = softmax(z), z ~ N(0, I_T) drawn afresh each step, in float64, from
    ``generator`` on its device (None: the default generator of the losses' device, so a GPU
    step copies nothing from the host). Scale: weights sum to 1, as LibMTL's RLW."""

    name = "rlw"

    def __init__(self, *, generator: torch.Generator | None = None):
        super().__init__(generator=_options.generator(self.name, generator))

    def loss(self, losses, shared) -> torch.Tensor:
        stacked = torch.stack([loss.reshape(()) for loss in losses])
        generator = self.options["generator"]
        draws = torch.randn(len(losses), generator=generator, dtype=torch.float64,
                            device=stacked.device if generator is None else generator.device)
        weights = torch.softmax(draws, 0).to(device=stacked.device, dtype=stacked.dtype)
        return (weights * stacked).sum()


@register
class GLS(LossMethod):
    """Geometric loss strategy (Chennupati et al. 2019): the geometric mean (Π_t L_t)^(1/T) of the
    task losses, as LibMTL's GLS. Its gradient is Σ_t (GLS / (T L_t)) ∇L_t: each task weighted by
    the inverse of its own loss. Computed as exp(mean log L_t) (a product of many small losses
    would underflow); the losses must be positive."""

    name = "gls"

    def __init__(self):
        super().__init__()

    def loss(self, losses, shared) -> torch.Tensor:
        stacked = torch.stack([loss.reshape(()) for loss in losses])
        return stacked.log().mean().exp()
