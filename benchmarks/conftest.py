"""Records what the timings depend on in the JSON's machine_info (report.py prints it)."""

import torch

import fastmtl


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["torch_version"] = torch.__version__
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["fastmtl_build"] = fastmtl.build_info()
