"""MultiDigits-3 (Mao et al. 2024; docs/design.md "Experiments"): parameter-level vs feature-level gradient
surgery on a light backbone, with feature disentanglement (FD) and ranking similarity.

Tasks: left digit, right digit (10 classes each) and (left + right) mod 2, on the 8×16 image.
Backbone: a small CNN, two convolutions (16 and 32 channels) and a 256-element representation z;
one head per task with a hidden ReLU layer of 64 (``head_hidden``; 0: linear heads, with which no
multi-task arm learns the parity task: ~0.55-0.6 test accuracy against ~0.82 single-task, so Δm is
that one task's gap and its seed noise).
Arms: every gradient method of ``fastmtl.methods.available()`` at parameter level (``METHOD``)
and, where it has a feature-level form, at feature level (``METHOD_feature``, via
``opt.features(z)``), and the loss-side methods at parameter level. Single-task baselines (one model per task, same backbone,
same steps) are trained for every seed. Metrics: ``delta_m`` (Δm% of the test accuracies against
the single-task ones, lower is better), ``fd`` (FD of the trained encoder's representation on a
test batch), ``conflict`` (share of task pairs with a negative gradient cosine on the encoder,
over test batches) and ``step_ms`` (median ms per training step). Summary: Kendall τ_b between
the FD ranking and the Δm ranking of the arms, and between FD and the conflict rate, and the
acceptance check (feature-level Δm of MGDA and Aligned-MTL ≤ parameter-level + 0.5).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from fastmtl import methods
from fastmtl import metrics as fm
from fastmtl.apps.experiments import _multitask_training as mt
from fastmtl.apps.experiments.registry import Experiment, register

GRADIENT_METHODS = tuple(name for name in methods.available() if methods.method_class(name).family != "loss")
LOSS_METHODS = tuple(name for name in methods.available() if methods.method_class(name).family == "loss")
FEATURE_METHODS = tuple(name for name in GRADIENT_METHODS if methods.method_class(name).feature_level)
ARMS = GRADIENT_METHODS + tuple(f"{name}_feature" for name in FEATURE_METHODS) + LOSS_METHODS
TASKS = [mt.Task(10), mt.Task(10), mt.Task(2)]
WIDTH = 32 * 2 * 4  # the representation z: 32 channels on a 2×4 grid


def make_encoder() -> nn.Module:
    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 16)),
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # 16 × 4 × 8
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 32 × 2 × 4
        nn.Flatten(),
    )


@functools.lru_cache(maxsize=4)
def _data(train_pairs: int, test_pairs: int, seed: int):
    from fastmtl.datasets import multi_digits3

    return multi_digits3(train_pairs=train_pairs, test_pairs=test_pairs, seed=seed)


def run(config: dict, seed: int, progress) -> dict:
    with mt.threads(config["threads"]):
        return _run(config, seed, progress)


def _run(config: dict, seed: int, progress) -> dict:
    data = _data(config["train_pairs"], config["test_pairs"], seed)
    fit = {"steps": config["steps"], "batch": config["batch"], "lr": config["lr"], "seed": seed}
    stl = mt.single_task_accuracies(make_encoder, WIDTH, TASKS, data, head_hidden=config["head_hidden"], **fit)
    x_fd, y_fd = data.x_test[:config["fd_batch"]], data.y_test[:config["fd_batch"]]
    results, curves = {}, {}
    for arm in ARMS:
        torch.manual_seed(seed)  # every arm starts from the same weights
        model = mt.build(make_encoder, WIDTH, TASKS, config["head_hidden"])
        step_ms = mt.train(model, TASKS, data.x_train, data.y_train, arm=arm, options=config["options"],
                           curve=curves.setdefault(arm, {"step": [], "value": []}), **fit)
        results[arm] = {
            "delta_m": mt.delta_m(mt.accuracies(model, TASKS, data.x_test, data.y_test), stl),
            "fd": mt.feature_disentanglement(model, TASKS, x_fd, y_fd),
            "conflict": mt.conflict_rate(model, TASKS, data.x_test, data.y_test, config["conflict_batches"],
                                         config["batch"]),
            "step_ms": step_ms,
        }
        progress(arm)
    results["_curves"] = curves
    return results


def summary(output: dict) -> dict:
    arms = output["arms"]
    names = [arm for arm in arms if all(arms[arm][m] for m in ("delta_m", "fd", "conflict"))]
    mean = {m: [mt.mean(arms[arm][m]) for arm in names] for m in ("delta_m", "fd", "conflict")}
    result = {}
    if len(names) >= 2:
        result["kendall_fd_vs_delta_m"] = float(fm.ranking_similarity(mean["fd"], mean["delta_m"]))
        result["kendall_fd_vs_conflict"] = float(fm.ranking_similarity(mean["fd"], mean["conflict"]))
    accept = {}
    for method in ("mgda", "aligned_mtl"):
        if method in arms and f"{method}_feature" in arms:
            param, feat = mt.mean(arms[method]["delta_m"]), mt.mean(arms[f"{method}_feature"]["delta_m"])
            accept[method] = {"parameter": param, "feature": feat, "holds": feat <= param + 0.5}
    if accept:
        result["acceptance_feature_le_parameter_plus_0.5"] = accept
    return result


EXPERIMENT = register(Experiment(
    name="multidigits3",
    description="MultiDigits-3 (left, right, parity) on a 2-conv CNN: every gradient method at parameter and "
                "feature level, plus cosreg and go4align; Δm vs single-task, FD, conflict rate, step time",
    run=run,
    arms=ARMS,
    metrics=("delta_m", "fd", "conflict", "step_ms"),
    default_seeds=3,
    full_config={"train_pairs": 20_000, "test_pairs": 4_000, "steps": 600, "batch": 128, "lr": 2e-3, "threads": 1,
                 "head_hidden": 64, "fd_batch": 1_000, "conflict_batches": 8,
                 "options": {"go4align": {"n_groups": 2},
                             # torchjd's aggregators with required options (T = 3 tasks)
                             "constant": {"weights": [1.0, 1.0, 1.0]}, "krum": {"n_byzantine": 0},
                             "trimmed_mean": {"trim_number": 1},
                             "crmogm": {"base": "mgda"}, "fairgrad": {"alpha": 1.0},
                             # LibMTL's methods with learnable or per-task state (T = 3 tasks); STCH's nadir from
                             # the first 60 of 600 steps, DWA's loss ratios over periods of 20 steps
                             "uw": {"n_tasks": 3}, "gradnorm": {"n_tasks": 3}, "imtl": {"n_tasks": 3},
                             "famo": {"n_tasks": 3}, "stch": {"warmup_steps": 60}, "dwa": {"period": 20}}},
    quick_config={"train_pairs": 5_000, "test_pairs": 2_000, "steps": 60, "conflict_batches": 4},
    summary=summary,
    curve_label="training loss (sum over tasks)",
))
