"""Shared training code of the worst-group experiments (``spurious-digits``, ``celeba-blond``):
Kulkarni et al. 2024's recipe (docs/design.md "Experiments") on a small masked-input MLP.

* **Model.** An MLP encoder on ``[x·(1−m), m]`` (m the 0/1 mask of hidden inputs, all zero for
  the end task), whose last-layer output h feeds two heads: a 2-way classifier (end task) and a
  reconstruction head (the pre-training objective, reused as L_MT).
* **Pre-training.** Masked-input reconstruction on the training inputs (a fresh mask per batch,
  each input hidden with probability ``mask_ratio``); the loss is taken on the masked entries
  only: MSE for pixels, binary cross-entropy for {0,1} attributes. Shared by every arm of a seed:
  each arm starts from a copy of the same pre-trained state (classifier head included, which
  pre-training leaves at its random initialisation).
* **Fine-tuning.** ``RegularizedMTL`` for every arm: ERM (no L_MT, w_reg = 0), ERM+L1, MT (the
  reconstruction loss of a masked second forward as L_MT), MT+L1; Adam, model selected after
  each epoch by validation worst-group accuracy (``WorstGroupSelection``).
* **JTT.** ERM for T epochs from the pre-trained state, ``jtt_error_set`` on the training set in
  a fixed order, re-initialisation from the PRE-TRAINED state, and the full fine-tuning run
  again with ``jtt_sampler(jtt_weights(errors, λ_up))`` (N draws with replacement per epoch).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from fastmtl.losses.worst_group import (RegularizedMTL, WorstGroupSelection, jtt_error_set, jtt_sampler,
                                        jtt_weights)
from fastmtl.metrics import attribute_groups, average_accuracy, worst_group_accuracy

L1_WEIGHT = math.exp(-1)  # the paper's w_reg = e^-1 = 0.3679 ("0.37")


@dataclass
class Split:
    x: torch.Tensor  # [N, D] float32 inputs
    y: torch.Tensor  # [N] int64 end-task label
    group: torch.Tensor  # [N] int64, 2·y + a


def split(x: torch.Tensor, y: torch.Tensor, a: torch.Tensor) -> Split:
    return Split(x.float().contiguous(), y.long(), torch.as_tensor(attribute_groups(y, a, 2)).long())


class MaskedMLP(nn.Module):
    """Encoder ``[x·(1−m), m]`` (2·D inputs) → hidden layers with ReLU → h; heads: classifier
    h → 2 logits, reconstruction h → D values (pixels, or attribute logits)."""

    def __init__(self, dim: int, hidden: tuple[int, ...], classes: int = 2):
        super().__init__()
        layers, width = [], 2 * dim
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        self.encoder = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, classes)
        self.reconstruct = nn.Linear(width, dim)

    def encode(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:
            mask = torch.zeros_like(x)
        return self.encoder(torch.cat([x * (1 - mask), mask], dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # end-task logits on the unmasked input
        return self.classifier(self.encode(x))


def masked_loss(model: MaskedMLP, x: torch.Tensor, mask_ratio: float, kind: str, gen: torch.Generator):
    """(reconstruction loss on the masked entries, h of the masked forward)."""
    mask = (torch.rand(x.shape, generator=gen) < mask_ratio).float()
    h = model.encode(x, mask)
    out = model.reconstruct(h)
    if kind == "mse":
        per_entry = (out - x) ** 2
    else:  # "bce": {0,1} attributes, reconstruction head gives logits
        per_entry = F.binary_cross_entropy_with_logits(out, x, reduction="none")
    return (per_entry * mask).sum() / mask.sum().clamp_min(1.0), h


def pretrain(model: MaskedMLP, x: torch.Tensor, cfg: dict, gen: torch.Generator) -> None:
    params = list(model.encoder.parameters()) + list(model.reconstruct.parameters())
    opt = torch.optim.Adam(params, lr=cfg["lr"])
    model.train()
    for _ in range(cfg["pretrain_epochs"]):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), cfg["batch"]):
            loss, _ = masked_loss(model, x[order[start:start + cfg["batch"]]], cfg["mask_ratio"], cfg["recon"], gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


@torch.no_grad()
def predict(model: MaskedMLP, x: torch.Tensor) -> torch.Tensor:
    was = model.training
    model.eval()
    labels = torch.cat([model(x[i:i + 8192]).argmax(1) for i in range(0, len(x), 8192)])
    model.train(was)
    return labels


def evaluate(model: MaskedMLP, data: Split) -> dict:
    pred = predict(model, data.x)
    return {"avg_acc": float(average_accuracy(data.y, pred)),
            "wga": float(worst_group_accuracy(data.y, pred, data.group))}


def _epoch_order(n: int, sampler, gen: torch.Generator) -> torch.Tensor:
    if sampler is None:
        return torch.randperm(n, generator=gen)
    return torch.tensor(list(sampler), dtype=torch.int64)


def finetune(model: MaskedMLP, train: Split, val: Split, cfg: dict, *, w_mt: float, w_reg: float, mt: bool,
             epochs: int, gen: torch.Generator, sampler=None, select: bool = True,
             curve: dict | None = None) -> MaskedMLP:
    """Fine-tune every parameter with Adam on RegularizedMTL; with ``select``, load the epoch with
    the best validation WGA at the end (else keep the last state). ``curve`` (with ``select``):
    ``{"step": [], "value": []}`` that gets each epoch's number (from 1) and the validation WGA
    the selection saw."""
    loss_fn = RegularizedMTL(w_erm=1.0, w_mt=w_mt if mt else 0.0, w_reg=w_reg) if (mt or w_reg > 0) else None
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    selection = WorstGroupSelection()
    model.train()
    for epoch in range(epochs):
        order = _epoch_order(len(train.x), sampler, gen)
        for start in range(0, len(order), cfg["batch"]):
            idx = order[start:start + cfg["batch"]]
            x, y = train.x[idx], train.y[idx]
            h_end = model.encode(x)
            end = F.cross_entropy(model.classifier(h_end), y)
            if loss_fn is None:  # ERM
                loss = end
            elif mt:
                aux, h_aux = masked_loss(model, x, cfg["mask_ratio"], cfg["recon"], gen)
                loss = loss_fn(end, aux, h_end=h_end, h_aux=h_aux)
            else:  # ERM + L1
                loss = loss_fn(end, h_end=h_end)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if select:
            wga = evaluate(model, val)["wga"]
            selection.update(epoch, wga, model)
            if curve is not None:
                curve["step"].append(epoch + 1)
                curve["value"].append(wga)
    if select:
        selection.load_best(model)
    return model


ARMS = {  # arm -> (uses L_MT, uses the L1 penalty with weight cfg["w_reg"])
    "erm": (False, False),
    "erm_l1": (False, True),
    "mt": (True, False),
    "mt_l1": (True, True),
}


def run_arms(arms: tuple[str, ...], train: Split, val: Split, test: Split, cfg: dict, seed: int, progress) -> dict:
    """Pre-train once, then fine-tune each arm from the same pre-trained state; test metrics, and
    under ``"_curves"`` each arm's validation WGA per fine-tuning epoch (JTT: of its retraining)."""
    threads = torch.get_num_threads()
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    try:
        torch.manual_seed(seed)  # the initialisation
        model = MaskedMLP(train.x.shape[1], tuple(cfg["hidden"]))
        pretrain(model, train.x, cfg, torch.Generator().manual_seed(10_000 + seed))
        pretrained = copy.deepcopy(model.state_dict())

        def fresh() -> MaskedMLP:
            net = MaskedMLP(train.x.shape[1], tuple(cfg["hidden"]))
            net.load_state_dict(pretrained)
            return net

        results, curves = {}, {}
        for index, arm in enumerate(arms):
            gen = torch.Generator().manual_seed(20_000 + 100 * seed)  # same batch order for every arm
            curves[arm] = curve = {"step": [], "value": []}
            if arm == "jtt":
                # Steps 1-2: ERM for T epochs from the pre-trained state, then the error set.
                ident = finetune(fresh(), train, val, cfg, w_mt=0.0, w_reg=0.0, mt=False,
                                 epochs=cfg["jtt_T"], gen=gen, select=False)
                batches = [(train.x[i:i + 8192], train.y[i:i + 8192]) for i in range(0, len(train.x), 8192)]
                errors = jtt_error_set(ident, batches)
                # Steps 3-4: re-initialise from the PRE-TRAINED weights, retrain on the up-sampled set.
                sampler = jtt_sampler(jtt_weights(errors, cfg["jtt_lambda_up"]),
                                      generator=torch.Generator().manual_seed(30_000 + seed))
                net = finetune(fresh(), train, val, cfg, w_mt=0.0, w_reg=0.0, mt=False,
                               epochs=cfg["epochs"], gen=gen, sampler=sampler, curve=curve)
            else:
                mt, l1 = ARMS[arm]
                net = finetune(fresh(), train, val, cfg, w_mt=cfg["w_mt"], w_reg=cfg["w_reg"] if l1 else 0.0, mt=mt,
                               epochs=cfg["epochs"], gen=gen, curve=curve)
            results[arm] = evaluate(net, test)
            progress(arm)
        results["_curves"] = curves
        return results
    finally:
        torch.set_num_threads(threads)


def summary(output: dict) -> dict:
    """The mean over seeds of each arm and metric (each experiment adds its acceptance checks)."""
    return {"mean": {arm: {m: round(sum(v) / len(v), 4) for m, v in metrics.items()}
                     for arm, metrics in output["arms"].items()}}
