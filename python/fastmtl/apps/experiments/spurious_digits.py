"""``spurious-digits``: Kulkarni et al. 2024 (regularised MTL for worst-group accuracy) on
SpuriousDigits, the offline Waterbirds analogue (docs/design.md "Experiments").

Recipe (docs/design.md "Experiments"): MLP 64→64→64 on [x·(1−m), m], pre-trained 30 epochs on masked-pixel
reconstruction (30% of pixels masked, MSE on the masked pixels); fine-tuned 40 epochs, Adam 1e-3,
batch 128, the epoch with the best validation WGA kept. Arms: ERM, ERM+L1 (w_reg = e⁻¹ ≈ 0.37),
MT (the reconstruction loss as L_MT), MT+L1, JTT (T = 2, λ_up = 20). Metrics on the test set:
sample-weighted average accuracy and worst-group accuracy over the groups 2·y + a.

Choices the spec leaves open (documented here):
* "MLP 64→64→64": the encoder has two hidden layers of 64 (ReLU) on the 128 inputs [x·(1−m), m];
  h is the second layer's output, where the L1 sits; heads are linear (2 logits; 64 pixels).
* w_mt = e⁻¹: the paper's Waterbirds setting (w_erm = 1, w_mt = e⁻¹, w_reg = e⁻¹), since
  SpuriousDigits is the Waterbirds analogue with masked-image modelling as L_MT.
* Pre-training uses Adam 1e-3, batch 128 (as fine-tuning); every fine-tuning step of the MT arms
  draws a fresh 30% mask for the L_MT forward.
* JTT's identification run is T = 2 epochs of ERM fine-tuning with no model selection (the last
  state flags the errors); the retraining is the 40-epoch fine-tuning with selection.
"""

from __future__ import annotations

from fastmtl.apps.experiments import _worst_group_training as wg
from fastmtl.apps.experiments.registry import Experiment, register

ARMS = ("erm", "erm_l1", "mt", "mt_l1", "jtt")

FULL = {
    "hidden": [64, 64], "pretrain_epochs": 30, "epochs": 40, "lr": 1e-3, "batch": 128,
    "mask_ratio": 0.3, "recon": "mse", "w_mt": wg.L1_WEIGHT, "w_reg": wg.L1_WEIGHT,
    "jtt_T": 2, "jtt_lambda_up": 20.0, "train_agreement": 0.95, "copies": 4, "noise": 0.05,
    "threads": 1,
}
QUICK = {"pretrain_epochs": 10, "epochs": 12}


def run(config: dict, seed: int, progress) -> dict:
    from fastmtl.datasets import spurious_digits

    data = spurious_digits(seed, train_agreement=config["train_agreement"], copies=config["copies"],
                           noise=config["noise"])
    train, val, test = (wg.split(s.x, s.y, s.a) for s in (data.train, data.val, data.test))
    return wg.run_arms(ARMS, train, val, test, config, seed, progress)


def summary(output: dict) -> dict:
    result = wg.summary(output)
    mean = result["mean"]
    result["accept"] = {
        "wga_mt_l1_ge_erm": mean["mt_l1"]["wga"] >= mean["erm"]["wga"],
        "avg_mt_l1_ge_erm_minus_0.005": mean["mt_l1"]["avg_acc"] >= mean["erm"]["avg_acc"] - 0.005,
        "wga_jtt_gt_erm": mean["jtt"]["wga"] > mean["erm"]["wga"],
    }
    # The paper's headline (regularised MTL >= JTT) is reported, not gated (docs/design.md "Experiments").
    result["report_wga_mt_l1_ge_jtt"] = mean["mt_l1"]["wga"] >= mean["jtt"]["wga"]
    return result


register(Experiment(
    name="spurious-digits",
    description="Kulkarni et al. 2024 on SpuriousDigits: ERM, ERM+L1, MT, MT+L1, JTT; test avg and worst-group acc",
    run=run, arms=ARMS, metrics=("avg_acc", "wga"), default_seeds=5,
    full_config=FULL, quick_config=QUICK, extras=("demo",), summary=summary,
    curve_label="validation WGA", curve_x="fine-tuning epoch",
))
