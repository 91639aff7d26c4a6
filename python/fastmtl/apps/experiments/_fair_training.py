"""Shared code of the FairBranch experiments (``celeba-fair``, ``adult-fair``; Roy et al. 2024):
the five arms trained on one table with a sensitive attribute, their per-task test accuracy and
fairness violations, the knowledge and discrimination gains against the fair single-task
learners, FairBranch's branching events as JSON records, and the acceptance summary.

Set-up (the paper's): a trunk of fully connected layers, then one 2-way linear head per task;
accuracy loss L_t = cross-entropy, fairness loss F_t = ``fastmtl.fairness_loss`` (Eq. 1, two
sensitive groups); AdamW. Arms:

* ``stl_fair``: one model (same trunk, one head) per task, trained on L_t + F_t: the fair
  single-task learners every gain is measured against (their own gains are 0 by definition);
* ``mtl``: everything shared, Σ_t L_t;
* ``mtl_fair``: everything shared, Σ_t (L_t + λ F_t), λ = ``config["fair_weight"]`` (1);
* ``pcgrad``: everything shared, PCGrad (``fastmtl.MTLOptimizer``) on the accuracy losses L_t;
* ``fairbranch``: ``fastmtl.FairBranch`` with τ = ``config["tau"]``, a branching check at the
  end of every epoch after a one-epoch warm-up, its default options otherwise.

Every arm starts from the same initial weights (``torch.manual_seed(seed)`` before each build)
and sees the same batches: one permutation of the training rows per epoch, drawn from the seed.

Metrics (test split): ``acc``, ``ep`` (EP = |ΔTPR| between the sensitive groups, fastmtl's
``equal_opportunity_difference``) and ``eo`` (EO = |ΔTPR| + |ΔFPR|,
``equalized_odds_difference(agg="sum")``), each the mean over tasks; ``kg`` = K̄G (mean of
Acc_arm(t) − Acc_STL(t)), ``dg_ep`` and ``dg_eo`` = D̄G (mean of viol_arm(t) − viol_STL(t)) for
EP and EO. The per-task values, the seconds each arm took and the branching events go into the
seed's ``"_details"``.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

import fastmtl
from fastmtl import metrics
from fastmtl.apps.experiments import _multitask_training as mt

ARMS = ("stl_fair", "mtl", "mtl_fair", "pcgrad", "fairbranch")
METRICS = ("acc", "ep", "eo", "kg", "dg_ep", "dg_eo")
SENSITIVE_GROUPS = 2  # every sensitive attribute here is binary (Male; sex_Male)


@dataclass
class FairData:
    """One table with a binary sensitive attribute: x float32 inputs, y [N, T] {0, 1} labels (one
    column per task of ``tasks``), s [N] {0, 1} sensitive groups."""

    tasks: tuple[str, ...]
    x_train: torch.Tensor
    y_train: torch.Tensor
    s_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    s_test: torch.Tensor


def build_layers(inputs: int, hidden, tasks: int, batch_norm: bool) -> tuple[list[nn.Module], list[nn.Module]]:
    """The trunk, one module per layer (``mt.mlp_layers``: what FairBranch branches), and ``tasks``
    2-way linear heads."""
    layers = mt.mlp_layers(inputs, hidden, batch_norm)
    return layers, [nn.Linear(hidden[-1], 2) for _ in range(tasks)]


def shared_trunk(trunk: list[nn.Module], heads: list[nn.Module]) -> mt.MultiHead:
    """The trunk layers in sequence, then one head per task (the ``stl_fair``, ``mtl``,
    ``mtl_fair`` and ``pcgrad`` model; FairBranch builds its own from the same layers)."""
    return mt.MultiHead(nn.Sequential(*trunk), heads)


def batches(rows: int, batch: int, epochs: int, seed: int):
    """Index tensors of every training step: one permutation per epoch from the seed, cut into
    ``batch``-row pieces (the last one of an epoch may be shorter)."""
    gen = torch.Generator().manual_seed(10_000 + seed)
    for _ in range(epochs):
        order = torch.randperm(rows, generator=gen)
        yield from order.split(batch)


def steps_per_epoch(rows: int, batch: int) -> int:
    return -(-rows // batch)


def _losses(outs, y: torch.Tensor, s: torch.Tensor, tasks) -> tuple[list, list]:
    """(accuracy losses, fairness losses) of the heads ``outs``, head i predicting column tasks[i]."""
    accuracy = [F.cross_entropy(out, y[:, t]) for out, t in zip(outs, tasks)]
    fairness = [fastmtl.fairness_loss(out, y[:, t], s, num_groups=SENSITIVE_GROUPS) for out, t in zip(outs, tasks)]
    return accuracy, fairness


def _adamw(model: nn.Module, config: dict) -> torch.optim.AdamW:
    return torch.optim.AdamW(model.parameters(), lr=config["lr"])


def train_single_task(data: FairData, config: dict, seed: int, task: int) -> mt.MultiHead:
    """The fair single-task learner of column ``task``: L_t + F_t (λ = 1, as the authors' STL)."""
    torch.manual_seed(seed)
    trunk, heads = build_layers(data.x_train.shape[1], config["hidden"], 1, config["batch_norm"])
    model = shared_trunk(trunk, heads)
    adamw = _adamw(model, config)
    model.train()
    for index in batches(len(data.x_train), config["batch"], config["epochs"], seed):
        x, y, s = data.x_train[index], data.y_train[index], data.s_train[index]
        accuracy, fairness = _losses(model(x), y, s, [task])
        adamw.zero_grad(set_to_none=True)
        (accuracy[0] + fairness[0]).backward()
        adamw.step()
    return model


def train_shared(data: FairData, config: dict, seed: int, arm: str) -> mt.MultiHead:
    """``mtl`` (Σ L_t), ``mtl_fair`` (Σ L_t + λ F_t) or ``pcgrad`` (PCGrad on the L_t of the
    trunk's parameters; the heads get their own plain gradients)."""
    if arm not in ("mtl", "mtl_fair", "pcgrad"):
        raise ValueError(f"no shared arm {arm!r}")
    torch.manual_seed(seed)
    tasks = range(len(data.tasks))
    model = shared_trunk(*build_layers(data.x_train.shape[1], config["hidden"], len(tasks), config["batch_norm"]))
    adamw = _adamw(model, config)
    pcgrad = None
    if arm == "pcgrad":
        pcgrad = fastmtl.MTLOptimizer(adamw, "pcgrad", shared=model.encoder.parameters(),
                                      generator=torch.Generator().manual_seed(seed))
    model.train()
    for index in batches(len(data.x_train), config["batch"], config["epochs"], seed):
        x, y, s = data.x_train[index], data.y_train[index], data.s_train[index]
        adamw.zero_grad(set_to_none=True)
        outs = model(x)
        if arm == "pcgrad":
            pcgrad.backward([F.cross_entropy(out, y[:, t]) for out, t in zip(outs, tasks)])
        elif arm == "mtl":
            sum(F.cross_entropy(out, y[:, t]) for out, t in zip(outs, tasks)).backward()
        else:  # mtl_fair
            accuracy, fairness = _losses(outs, y, s, tasks)
            (sum(accuracy) + config["fair_weight"] * sum(fairness)).backward()
        adamw.step()
    return model


def train_fairbranch(data: FairData, config: dict, seed: int) -> fastmtl.FairBranch:
    """FairBranch from the same initial trunk and heads as the shared arms; a branching check at
    the end of every epoch once the one-epoch warm-up is done (``warmup`` = ``branch_every`` =
    the steps of one epoch)."""
    torch.manual_seed(seed)
    tasks = range(len(data.tasks))
    trunk, heads = build_layers(data.x_train.shape[1], config["hidden"], len(tasks), config["batch_norm"])
    epoch = steps_per_epoch(len(data.x_train), config["batch"])
    model = fastmtl.FairBranch(trunk, heads, tau=config["tau"], branch_every=epoch, warmup=epoch,
                               **config.get("fairbranch", {}))
    optimizer = model.make_optimizer(_adamw(model, config))
    model.train()
    for index in batches(len(data.x_train), config["batch"], config["epochs"], seed):
        x, y, s = data.x_train[index], data.y_train[index], data.s_train[index]
        optimizer.zero_grad(set_to_none=True)
        model.backward(*_losses(model(x), y, s, tasks))
        optimizer.step()
        model.after_step()
    return model


@torch.no_grad()
def predictions(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """[N, heads] predicted classes (argmax of each 2-way head), in evaluation mode."""
    model.eval()
    return torch.stack([out.argmax(1) for out in model(x)], dim=1)


def task_metrics(pred: torch.Tensor, y: torch.Tensor, s: torch.Tensor) -> dict[str, list[float]]:
    """Per task (column): accuracy, EP = |ΔTPR| and EO = |ΔTPR| + |ΔFPR| between the groups of s."""
    result = {"acc": [], "ep": [], "eo": []}
    for t in range(y.shape[1]):
        result["acc"].append(float((pred[:, t] == y[:, t]).double().mean()))
        result["ep"].append(float(metrics.equal_opportunity_difference(y[:, t], pred[:, t], sensitive_features=s)))
        result["eo"].append(float(metrics.equalized_odds_difference(y[:, t], pred[:, t], sensitive_features=s,
                                                                    agg="sum")))
    return result


def arm_metrics(per_task: dict[str, list[float]], stl: dict[str, list[float]]) -> dict[str, float]:
    """The arm's scalar metrics: means over tasks, K̄G and D̄G (EP, EO) against ``stl``."""
    return {"acc": statistics.fmean(per_task["acc"]), "ep": statistics.fmean(per_task["ep"]),
            "eo": statistics.fmean(per_task["eo"]),
            "kg": float(metrics.knowledge_gain(per_task["acc"], stl["acc"])),
            "dg_ep": float(metrics.discrimination_gain(per_task["ep"], stl["ep"])),
            "dg_eo": float(metrics.discrimination_gain(per_task["eo"], stl["eo"]))}


def event_record(event, epoch_steps: int) -> dict:
    """A ``BranchEvent`` as JSON: when (step, epoch), which trunk layer, the task groups before
    and after (task indices) and ``members`` (indices into ``groups_before`` of each new group),
    and ``cka`` per new group: for a merge, the smallest CKA between the merged groups (the
    similarity it was decided at, ≥ τ); for a group left single, its highest CKA to any other
    group (below τ, or its best partner was taken by a more similar pair)."""
    S = event.similarity
    cka = []
    for members in event.members:
        if len(members) > 1:
            cka.append(min(S[i][j] for i in members for j in members if i < j))
        else:
            others = [S[members[0]][j] for j in range(len(S)) if j != members[0]]
            cka.append(max(others) if others else None)
    return {"step": event.step, "epoch": event.step / epoch_steps, "layer": event.layer,
            "groups_before": [list(g) for g in event.groups_before], "groups": [list(g) for g in event.groups],
            "members": [list(m) for m in event.members], "cka": cka, "tau": event.tau}


def run_arms(data: FairData, config: dict, seed: int, progress) -> dict:
    """Every arm for one seed, on ``config["threads"]`` torch threads: ``{arm: metrics}`` and
    ``"_details"``: ``{arm: {"tasks", "acc", "ep", "eo", "seconds"}}``, plus the fairbranch
    arm's ``"branch_events"`` and ``"steps_per_epoch"``."""
    with mt.threads(config["threads"]):
        return _run_arms(data, config, seed, progress)


def _run_arms(data: FairData, config: dict, seed: int, progress) -> dict:
    x, y, s = data.x_test, data.y_test, data.s_test
    details, results = {}, {}
    for arm in ARMS:
        started = time.perf_counter()
        extra = {}
        if arm == "stl_fair":
            pred = torch.cat([predictions(train_single_task(data, config, seed, t), x)
                              for t in range(len(data.tasks))], dim=1)
        elif arm == "fairbranch":
            model = train_fairbranch(data, config, seed)
            epoch = steps_per_epoch(len(data.x_train), config["batch"])
            extra = {"steps_per_epoch": epoch, "branch_events": [event_record(e, epoch) for e in model.events]}
            pred = predictions(model, x)
        else:
            pred = predictions(train_shared(data, config, seed, arm), x)
        details[arm] = {"tasks": list(data.tasks), **task_metrics(pred, y, s),
                        "seconds": round(time.perf_counter() - started, 2), **extra}
        progress(arm)
    stl = details["stl_fair"]
    for arm in ARMS:
        results[arm] = arm_metrics(details[arm], stl)
    results["_details"] = details
    return results


def summary(output: dict) -> dict:
    """The acceptance checks on the means over seeds: D̄G_EO(fairbranch) ≤ min(D̄G_EO(pcgrad),
    D̄G_EO(mtl)); K̄G(fairbranch) ≥ K̄G(mtl_fair) − 0.005; a branching in every seed. And the
    paper's targets, reported without gating: K̄G(fairbranch) > 0, D̄G(fairbranch) ≤ 0 (EP, EO)."""
    arms = output["arms"]
    mean = {arm: {metric: statistics.fmean(values) for metric, values in arms[arm].items()} for arm in arms}
    events = [len(record.get("branch_events", [])) for record in output.get("details", {}).get("fairbranch", [])]
    fb = mean["fairbranch"]
    accept = {
        "dg_eo_fairbranch_le_min_pcgrad_mtl": fb["dg_eo"] <= min(mean["pcgrad"]["dg_eo"], mean["mtl"]["dg_eo"]),
        "kg_fairbranch_ge_mtl_fair_minus_0.005": fb["kg"] >= mean["mtl_fair"]["kg"] - 0.005,
        "branching_in_every_seed": bool(events) and min(events) >= 1,
    }
    return {
        "mean": mean,
        "branch_events_per_seed": events,
        "accept": accept,
        "accepted": all(accept.values()),
        "paper_targets": {"kg_fairbranch_gt_0": fb["kg"] > 0, "dg_eo_fairbranch_le_0": fb["dg_eo"] <= 0,
                          "dg_ep_fairbranch_le_0": fb["dg_ep"] <= 0},
    }
