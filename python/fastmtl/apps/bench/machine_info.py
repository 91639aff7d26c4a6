"""pytest plugin of the benchmark run: records in the JSON's machine_info what the timings
depend on (report.py prints it). The bench command loads it with ``-p``; the checkout's
benchmarks/conftest.py re-exports the hook."""

import torch

import fastmtl


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["torch_version"] = torch.__version__
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["fastmtl_build"] = fastmtl.build_info()
