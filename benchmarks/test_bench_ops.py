"""The op benchmarks, run from a checkout:

    pytest benchmarks/ --benchmark-only --benchmark-json=results.json
    python -m fastmtl.apps.bench.report results.json

The cases live in the package (fastmtl.apps.bench.op_cases) so that an installed fastmtl runs
them too (``python -m fastmtl bench``); pytest collects the imported test functions here. The
grid: FASTMTL_BENCH_T / FASTMTL_BENCH_P / FASTMTL_BENCH_FULL (see fastmtl.apps.bench.grid).
"""

from fastmtl.apps.bench.op_cases import test_op, test_similarity, test_solve  # noqa: F401
