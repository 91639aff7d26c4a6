"""Losses built from the task losses: CosReg's penalty, GO4Align's weighting, FairBranch's fairness
loss and its per-task weight, and worst-group training (regularised MTL, JTT, Group DRO, selection
by worst-group accuracy)."""

from fastmtl.losses.cosreg import cosreg_penalty
from fastmtl.losses.fairness import fairness_loss, fairness_weights
from fastmtl.losses.go4align import GO4Align, kmeans_1d
from fastmtl.losses.worst_group import (ActivationL1, GroupDRO, RegularizedMTL, WorstGroupSelection,
                                        activation_l1, jtt_error_set, jtt_sampler, jtt_weights)

__all__ = ["ActivationL1", "GO4Align", "GroupDRO", "RegularizedMTL", "WorstGroupSelection", "activation_l1",
           "cosreg_penalty", "fairness_loss", "fairness_weights", "jtt_error_set", "jtt_sampler", "jtt_weights", "kmeans_1d"]
