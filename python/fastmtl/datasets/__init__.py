"""Datasets for the applications, built from data that ships with an installed package (no
download at run time)."""

from fastmtl.apps.datasets.multidigits import MultiDigits, multi_digits

__all__ = ["MultiDigits", "multi_digits"]
