"""Parameter-similarity branching (FairBranch, Roy et al. 2024): linear CKA between task
parameters, the greedy pairing of similar task groups, FBGrad, and the FairBranch model."""

from fastmtl.branching.fairbranch import BranchEvent, FairBranch
from fastmtl.branching.fbgrad import fbgrad
from fastmtl.branching.similarity import linear_cka, pair_tasks, parameter_similarity

__all__ = ["BranchEvent", "FairBranch", "fbgrad", "linear_cka", "pair_tasks", "parameter_similarity"]
