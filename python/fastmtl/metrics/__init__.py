"""Metrics of the seed papers: Δm and mean rank, worst-group accuracy, group fairness gaps,
FairBranch's knowledge/discrimination gains, feature disentanglement and ranking similarity.

Each takes torch tensors (any device) or numpy arrays/lists, and gives a 0-d tensor back for
tensor input and a float otherwise. They are for evaluation: some read values back to the host.
"""

from fastmtl.metrics.disentanglement import feature_disentanglement, feature_saliency, ranking_similarity
from fastmtl.metrics.fairness import (
    demographic_parity_difference,
    equal_opportunity_difference,
    equalized_odds_difference,
)
from fastmtl.metrics.groups import attribute_groups, average_accuracy, group_accuracies, worst_group_accuracy
from fastmtl.metrics.multitask import delta_m, discrimination_gain, knowledge_gain, mean_rank

__all__ = [
    "attribute_groups",
    "average_accuracy",
    "delta_m",
    "demographic_parity_difference",
    "discrimination_gain",
    "equal_opportunity_difference",
    "equalized_odds_difference",
    "feature_disentanglement",
    "feature_saliency",
    "group_accuracies",
    "knowledge_gain",
    "mean_rank",
    "ranking_similarity",
    "worst_group_accuracy",
]
