"""Shared code of the ``multidigits3`` and ``go4align`` experiments: a shared encoder with one
head per task, trained with one multi-task method (parameter or feature level, a loss-side
method, or plain equal weighting), the single-task baselines with the same backbone, and the
per-task test accuracies, step times, feature disentanglement and gradient conflict rate."""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn

import fastmtl
from fastmtl import metrics


@contextlib.contextmanager
def threads(count: int):
    """torch's intra-op threads set to ``count`` for the block: these models are small enough that
    one thread per process beats two (and is far steadier on a shared 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class MultiHead(nn.Module):
    """``encoder`` -> z -> one head per task; ``forward`` gives the list of per-task outputs."""

    def __init__(self, encoder: nn.Module, heads: list[nn.Module]):
        super().__init__()
        self.encoder, self.heads = encoder, nn.ModuleList(heads)

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> list[torch.Tensor]:
        z = self.encoder(x) if z is None else z
        return [head(z) for head in self.heads]


@dataclass
class Task:
    """One task: its number of classes (1: a binary task with one logit and BCE)."""

    classes: int

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.classes == 1:
            return nn.functional.binary_cross_entropy_with_logits(out.squeeze(1), y.float())
        return nn.functional.cross_entropy(out, y)

    def predict(self, out: torch.Tensor) -> torch.Tensor:
        return (out.squeeze(1) > 0).long() if self.classes == 1 else out.argmax(1)


def mlp_layers(inputs: int, hidden, batch_norm: bool = False) -> list[nn.Module]:
    """An MLP as a list of layers, one module each (what FairBranch branches): Linear+ReLU, or
    Linear+BatchNorm1d+ReLU with ``batch_norm``."""
    layers, width = [], inputs
    for size in hidden:
        layers.append(nn.Sequential(nn.Linear(width, size), *([nn.BatchNorm1d(size)] if batch_norm else []), nn.ReLU()))
        width = size
    return layers


def build(make_encoder, width: int, tasks: list[Task], head_hidden: int = 0) -> MultiHead:
    """The encoder and one head per task: linear, or with one hidden ReLU layer of ``head_hidden``."""
    def head(classes: int) -> nn.Module:
        if head_hidden <= 0:
            return nn.Linear(width, classes)
        return nn.Sequential(nn.Linear(width, head_hidden), nn.ReLU(), nn.Linear(head_hidden, classes))
    return MultiHead(make_encoder(), [head(task.classes) for task in tasks])


def train(model: MultiHead, tasks: list[Task], x: torch.Tensor, y: torch.Tensor, *, arm: str, steps: int,
          batch: int, lr: float, seed: int, options: dict | None = None, curve: dict | None = None,
          curve_points: int = 20) -> float:
    """Trains ``model`` in place with Adam; ``arm``: ``"ew"`` (one backward of the mean loss),
    ``"METHOD"`` (fastmtl.MTLOptimizer at parameter level, or a loss-side method) or
    ``"METHOD_feature"`` (feature level, via ``opt.features(z)``). ``y`` [N, T]: column t is task
    t's label. Returns the median milliseconds per training step. ``curve``: ``{"step": [],
    "value": []}`` that gets, about ``curve_points`` times, the step count and the mean training
    loss (the sum of the task losses, as computed for the step) since the previous point; read
    outside the timed step, so the step times do not include it."""
    adam = torch.optim.Adam(model.parameters(), lr=lr)
    feature = arm.endswith("_feature")
    method = arm.removesuffix("_feature")
    opt = None if method == "ew" else fastmtl.MTLOptimizer(adam, method, shared=model.encoder.parameters(),
                                                           **(options or {}).get(method, {}))
    gen = torch.Generator().manual_seed(10_000 + seed)
    times = []
    every = max(1, steps // max(1, curve_points))
    window, window_steps = 0.0, 0
    model.train()
    for step in range(steps):
        index = torch.randint(0, len(x), (batch,), generator=gen)
        xb, yb = x[index], y[index]
        started = time.perf_counter()
        adam.zero_grad(set_to_none=True)
        z = model.encoder(xb)
        if feature:
            z = opt.features(z)
        losses = [task.loss(out, yb[:, t]) for t, (task, out) in enumerate(zip(tasks, model(xb, z)))]
        if opt is None:
            torch.stack(losses).mean().backward()
            adam.step()
        else:
            opt.backward(losses)
            opt.step()
        times.append(time.perf_counter() - started)
        if curve is not None:
            window += float(sum(float(loss.detach()) for loss in losses))
            window_steps += 1
            if (step + 1) % every == 0 or step + 1 == steps:
                curve["step"].append(step + 1)
                curve["value"].append(window / window_steps)
                window, window_steps = 0.0, 0
    return 1000.0 * statistics.median(times)


@torch.no_grad()
def accuracies(model: MultiHead, tasks: list[Task], x: torch.Tensor, y: torch.Tensor, task_ids=None) -> list[float]:
    """Test accuracy of each head; ``task_ids``: the label column of each head (default 0..T-1)."""
    model.eval()
    outs = model(x)
    task_ids = range(len(tasks)) if task_ids is None else task_ids
    return [float((task.predict(out) == y[:, t]).double().mean()) for task, out, t in zip(tasks, outs, task_ids)]


def single_task_accuracies(make_encoder, width: int, tasks: list[Task], data, *, steps: int, batch: int, lr: float,
                           seed: int, head_hidden: int = 0) -> list[float]:
    """The single-task baselines: one model (same backbone) per task, trained on that task alone
    (``data``: x_train, y_train, x_test, y_test); their test accuracies."""
    result = []
    for t, task in enumerate(tasks):
        torch.manual_seed(seed)
        model = build(make_encoder, width, [task], head_hidden)
        train(model, [task], data.x_train, data.y_train[:, t:t + 1], arm="ew", steps=steps, batch=batch, lr=lr,
              seed=seed)
        result.append(accuracies(model, [task], data.x_test, data.y_test[:, t:t + 1])[0])
    return result


def delta_m(acc: list[float], stl: list[float]) -> float:
    """Δm% of the test accuracies against the single-task ones (lower is better)."""
    return float(metrics.delta_m(acc, stl, higher_is_better=[True] * len(acc)))


def feature_disentanglement(model: MultiHead, tasks: list[Task], x: torch.Tensor, y: torch.Tensor) -> float:
    """FD (fastmtl.metrics) of the encoder's representation of a test batch."""
    model.eval()
    with torch.enable_grad():
        z = model.encoder(x)
        losses = [task.loss(out, y[:, t]) for t, (task, out) in enumerate(zip(tasks, model(x, z)))]
        return float(metrics.feature_disentanglement(metrics.feature_saliency(losses, z)))


def conflict_rate(model: MultiHead, tasks: list[Task], x: torch.Tensor, y: torch.Tensor, batches: int,
                  batch: int) -> float:
    """The share of task pairs whose gradients on the encoder's parameters have a negative cosine,
    over ``batches`` test batches."""
    model.eval()
    shared = [p for p in model.encoder.parameters() if p.requires_grad]
    conflicts = pairs = 0
    with torch.enable_grad():
        for b in range(batches):
            xb, yb = x[b * batch:(b + 1) * batch], y[b * batch:(b + 1) * batch]
            if len(xb) == 0:
                break
            outs = model(xb)
            grads = []
            for t, (task, out) in enumerate(zip(tasks, outs)):
                g = torch.autograd.grad(task.loss(out, yb[:, t]), shared, retain_graph=True, allow_unused=True)
                grads.append(torch.cat([(torch.zeros_like(p) if gi is None else gi).reshape(-1)
                                        for gi, p in zip(g, shared)]))
            G = torch.stack(grads)
            upper = torch.triu(torch.ones(len(G), len(G), dtype=torch.bool), diagonal=1)
            conflicts += int(((G @ G.T)[upper] < 0).sum())
            pairs += int(upper.sum())
    return conflicts / max(pairs, 1)


def mean(values: list[float]) -> float:
    return sum(values) / len(values)
