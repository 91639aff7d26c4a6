"""Records what the timings depend on in the JSON's machine_info: the hook is the package's
(fastmtl.apps.bench.machine_info), which ``python -m fastmtl bench`` loads as a plugin."""

from fastmtl.apps.bench.machine_info import pytest_benchmark_update_machine_info  # noqa: F401
