"""Applications built on the fastmtl library: the MultiDigits demo and its plots, and the op
benchmarks behind ``python -m fastmtl demo`` and ``python -m fastmtl bench``. The demo's data
comes from ``fastmtl.datasets``.

The library (``import fastmtl``) never imports this package, so its optional dependencies
(scikit-learn, matplotlib, tqdm; pytest-benchmark and torchjd for the benchmarks) stay
optional: they come with the extras ``pip install 'fastmtl[demo]'`` and ``'fastmtl[bench]'``.

    demo.py       the ``demo`` command: train with a surgery method and with the summed loss
    plots.py      the demo's figures (matplotlib)
    bench/        the ``bench`` command: pytest-benchmark cases, peers, the report
    extras.py     the check that an extra is installed, with the pip line that installs it
"""
