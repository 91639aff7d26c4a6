"""Losses built from the task losses: CosReg's penalty and GO4Align's weighting."""

from fastmtl.losses.cosreg import cosreg_penalty
from fastmtl.losses.go4align import GO4Align, kmeans_1d

__all__ = ["GO4Align", "cosreg_penalty", "kmeans_1d"]
