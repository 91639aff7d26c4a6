"""The Gram-space solver benchmarks, run from a checkout (cases in fastmtl.apps.bench.solver_cases):

    pytest benchmarks/test_bench_solvers.py --benchmark-only --benchmark-json=solvers.json
    python -m fastmtl.apps.bench.report solvers.json
"""

from fastmtl.apps.bench.solver_cases import test_aggregate, test_gram_solve  # noqa: F401
