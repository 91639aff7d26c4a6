"""The op benchmarks: fastmtl's kernels against peers and against memory floors.

    python -m fastmtl bench [-T 2,8] [-P 1e5,1e6] [--full] [--json PATH]

    command.py       the ``bench`` command: checks the bench extra, runs pytest-benchmark on
                     op_cases.py in a subprocess, prints report.py's tables
    grid.py          the (T, P) grid and how it reaches the pytest run (environment variables)
    op_cases.py      the pytest-benchmark cases (also collected by the checkout's benchmarks/)
    peers.py         the implementations fastmtl is compared with (torchjd, a LibMTL-style loop)
    report.py        Markdown tables from pytest-benchmark's JSON
    machine_info.py  pytest plugin: torch version, threads and fastmtl build in the JSON

Nothing here is imported by the library; the cases need the bench extra
(``pip install 'fastmtl[bench]'``: pytest, pytest-benchmark, torchjd).
"""
