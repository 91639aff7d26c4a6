"""MTLOptimizer(process_group=...) on 2 and 3 processes (gloo, spawned once per world size,
every case in one run; tests/distributed/distributed_cases.py): parameters after several steps
equal single-process training on the whole batch, and are the same bit for bit on every rank.

The bound: one process sums the batch's per-sample gradients in one order, the ranks in
another (shard sums, then the all-reduce), so each step's gradient differs by rounding, at most
γ_12 (12 samples) relative to the sum of |terms|; the methods' solves are backward stable on
these well-conditioned 3 × 3 problems, and three SGD steps (lr 0.1, momentum 0.9) do not amplify
it beyond a small factor. 1e-12 relative to the largest parameter leaves a factor ~100 above
that (the prototypes of this scheme matched to ~5e-16); a wrong reduction (a sum instead of a
mean, a missing head, a rank-dependent order) is off by 1e-3 or more.
"""

import json
import os
import sys
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import fastmtl

sys.path.insert(0, os.path.dirname(__file__))  # the spawned ranks import the cases from here
import distributed_cases  # noqa: E402

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo backend")

TIMEOUT_S = 120  # a hang (a rank waiting in a collective the others skipped) fails fast
WORLD_SIZES = [2, 3]


def spawn(size: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        store, results = os.path.join(folder, "store"), os.path.join(folder, "results.json")
        context = mp.start_processes(distributed_cases.worker, args=(size, store, results), nprocs=size, join=False,
                                     start_method="spawn")
        try:
            while not context.join(timeout=TIMEOUT_S):
                pass
        except mp.ProcessExitedException:
            raise
        finally:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
        ranks = []
        for rank in range(size):
            with open(f"{results}.{rank}") as file:
                ranks.append(json.load(file))
        return ranks


@pytest.fixture(scope="module", params=WORLD_SIZES, ids=lambda size: f"N{size}")
def all_ranks(request):
    return spawn(request.param)


@pytest.fixture
def results(all_ranks):
    """Rank 0's results (the comparisons are collective: every rank computed the same ones)."""
    return all_ranks[0]


def outcome(results, name):
    result = results[name]
    assert "exception" not in result, result.get("exception")
    return result


FEATURE_CASES = [f"features-{method}" for method in ("pcgrad", "mgda", "nash_mtl", "upgrad")]


@pytest.mark.parametrize("name", list(distributed_cases.CASES) + ["ddp-full", "ddp-sharded", *FEATURE_CASES,
                                                                   "fsdp-pcgrad", "fsdp-mgda", "resume"])
def test_equals_one_process_and_ranks_agree(results, name):
    result = outcome(results, name)
    assert result["same"], "the ranks' parameters differ"
    if name == "resume":
        assert result["error"] == 0.0  # the same operations on the same numbers as the straight run
    else:
        assert result["error"] <= 1e-12, result["error"]


def test_head_missing_on_one_rank_neither_hangs_nor_diverges(results):
    assert outcome(results, "head-missing-on-one-rank")["same"]


@pytest.mark.parametrize("rank", [0, 1])
def test_errors_raise_on_every_rank(all_ranks, rank):
    raised = outcome(all_ranks[rank], "errors")["raised"]
    assert raised == {"different generators": True, "element-wise feature mode": True, "loss-side method": True,
                      "ddp sync armed": True, "ddp static graph": True}, raised


def test_reduce_needs_a_process_group_and_a_known_name():
    net = torch.nn.Linear(3, 2)
    with pytest.raises(ValueError, match="give process_group too"):
        fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), shared=net.parameters(), reduce="sharded")
    with pytest.raises(ValueError, match="reduce must be one of"):
        fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), shared=net.parameters(), reduce="scatter")


def test_process_group_needs_an_initialised_default_group():
    if dist.is_initialized():
        pytest.skip("a default process group exists in this process")
    net = torch.nn.Linear(3, 2)
    with pytest.raises(RuntimeError, match="not initialised"):
        fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), shared=net.parameters(),
                             process_group=dist.group.WORLD)
