"""Drop-in bridges from other multi-task libraries' APIs to fastmtl's methods.

Each bridge is imported by its own module path, so importing this package imports nothing heavy
and never needs the other library:

* ``fastmtl.compat.torchjd``: torchjd 0.18's aggregators and weightings (UPGrad, MGDA, PCGrad,
  ...) with the same names and constructor arguments, as real ``torchjd.aggregation.Aggregator``
  / ``Weighting`` objects whose computation is fastmtl's (needs torchjd: ``pip install
  "fastmtl[torchjd]"``).
* ``fastmtl.compat.libmtl``: LibMTL's weighting classes.
* ``fastmtl.compat.pcgrad``: the PCGrad optimizer wrapper of the PCGrad reference code.

docs/compat.md lists what each bridge maps and where conventions differ.
"""
