"""LibMTL 1.1.5's weightings as test oracles (a test-only dependency: scripts/dev.sh installs it
with --no-deps). ``import LibMTL`` imports torchvision, which the weightings do not use, so the
loader registers stand-in ``LibMTL`` and ``LibMTL.weighting`` packages that point at the installed
package's folders: ``LibMTL.weighting.UW`` and the others then import without the packages'
``__init__``. ``Run`` stands in for LibMTL's Trainer: the attributes a weighting reads (task_num,
device, epoch, train_loss_buffer, rep_grad, get_share_params, zero_grad_share_params) and the
per-epoch loss bookkeeping, everything in float64 (LibMTL builds its gradient matrix in torch's
default dtype).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import os
import sys

import numpy as np
import torch

VERSION = "1.1.5"


def missing_reason() -> str | None:
    """Why the oracle cannot run here, or None when LibMTL 1.1.5 is installed."""
    try:
        version = importlib.metadata.version("LibMTL")
    except importlib.metadata.PackageNotFoundError:
        return f"LibMTL is not installed (pip install --no-deps LibMTL=={VERSION})"
    if version != VERSION:
        return f"LibMTL {version} is installed; these tests check against LibMTL {VERSION}"
    if importlib.util.find_spec("LibMTL") is None:  # for a top-level name: finds, does not import
        return "LibMTL's distribution is installed but its package cannot be found"
    return None


def skip_unless_installed() -> None:
    """Skips the calling test (pytest.skip, with the reason) when LibMTL 1.1.5 is not installed."""
    reason = missing_reason()
    if reason is not None:
        import pytest

        pytest.skip(reason)


def _register_packages() -> None:
    """Stand-ins for LibMTL's package modules (their __init__ would import torchvision): LibMTL,
    LibMTL.weighting and LibMTL.architecture, each pointing at its folder, so that their modules
    (and LibMTL.trainer, _record, utils, loss, metrics, which import only those) load."""
    root = importlib.util.find_spec("LibMTL").submodule_search_locations[0]
    for name, folder in (("LibMTL", root), ("LibMTL.weighting", os.path.join(root, "weighting")),
                         ("LibMTL.architecture", os.path.join(root, "architecture"))):
        if name not in sys.modules:
            spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
            spec.submodule_search_locations = [folder]
            sys.modules[name] = importlib.util.module_from_spec(spec)
        if name != "LibMTL":
            setattr(sys.modules["LibMTL"], name.split(".")[1], sys.modules[name])


def module(name: str):
    """A LibMTL module without its package's __init__, e.g. module("trainer") for LibMTL.trainer,
    module("architecture.HPS"), module("loss")."""
    reason = missing_reason()
    if reason is not None:
        raise RuntimeError(reason)
    _register_packages()
    return importlib.import_module(f"LibMTL.{name}")


def weighting_class(name: str) -> type:
    """LibMTL's weighting class ``name`` (e.g. "UW"), from LibMTL/weighting/<name>.py."""
    reason = missing_reason()
    if reason is not None:
        raise RuntimeError(reason)
    _register_packages()
    return getattr(importlib.import_module(f"LibMTL.weighting.{name}"), name)


@contextlib.contextmanager
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def harness(cls: type, shared, n_tasks: int, epochs: int = 100):
    """An instance of the LibMTL weighting class ``cls`` (LibMTL's, or a bridge's) with what its
    Trainer gives it: ``shared`` as the shared parameters, ``zero_grad_share_params`` zeroing in
    place (as torch's zero_grad did when LibMTL was written: ``_reset_grad`` then writes the
    combined gradient into these tensors), CPU, parameter gradients, epoch 0. ``init_param()`` is
    left to the caller (it makes the learnable tensors in torch's default dtype)."""
    shared = list(shared)

    class Harness(cls):
        def get_share_params(self):
            return iter(shared)

        def zero_grad_share_params(self):
            for p in shared:
                if p.grad is not None:
                    p.grad.zero_()

    weighting = Harness()
    weighting.task_num, weighting.device, weighting.rep_grad, weighting.epoch = n_tasks, torch.device("cpu"), False, 0
    weighting.train_loss_buffer = np.zeros((n_tasks, epochs))
    return weighting


class Run:
    """A LibMTL weighting driven as its Trainer drives it: ``backward(losses, **weight_args)``
    once per batch, ``batches_per_epoch`` batches an epoch, whose mean losses go into
    ``train_loss_buffer`` at the end of the epoch (LibMTL's meter averages the batches' losses,
    weighted by batch size: the plain mean for the equal batches used here)."""

    def __init__(self, name: str, shared, n_tasks: int, batches_per_epoch: int = 1, epochs: int = 100):
        self.weighting = harness(weighting_class(name), shared, n_tasks, epochs)
        with float64():
            self.weighting.init_param()
        self.batches_per_epoch = batches_per_epoch
        self.steps = 0
        self._epoch_losses: list[list[float]] = []

    @property
    def loss_scale(self) -> torch.nn.Parameter | None:
        """The weighting's learnable tensor (UW, GradNorm, IMTL), or None."""
        return getattr(self.weighting, "loss_scale", None)

    def backward(self, losses: torch.Tensor, **weight_args):
        self.weighting.epoch = self.steps // self.batches_per_epoch
        self._epoch_losses.append([float(loss) for loss in losses.detach()])
        with float64():
            weights = self.weighting.backward(losses, **weight_args)
        self.steps += 1
        if self.steps % self.batches_per_epoch == 0:
            self.weighting.train_loss_buffer[:, self.weighting.epoch] = np.mean(self._epoch_losses, axis=0)
            self._epoch_losses = []
        return weights
