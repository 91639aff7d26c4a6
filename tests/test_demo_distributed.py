"""The demo on 2 processes trains as the demo on one (``torchrun --nproc-per-node 2 -m fastmtl demo``).

Two ranks (spawned once, gloo, FileStore rendezvous, one thread each) run the demo's ``train``
on their halves of every global batch; this process runs the same ``train`` alone on the whole
batches, and the results are compared:

* float64, parameters after STEPS Adam steps (plain summed loss, and PCGrad through
  MTLOptimizer): the only difference is the order of the batch sums (two half-batch sums, then
  the all-reduce, instead of one sum), a rounding error of at most ~γ_64 ≈ 7e-15 relative to the
  sum of |terms| per gradient entry and step. Adam divides by sqrt(v̂) + eps, so where a gradient
  entry is not itself cancelled down to its rounding error the update's relative change is of
  the same order; over STEPS steps of a smooth network this stays many orders below 1e-9, the
  bound used (measured: 4.4e-15 plain, 4.6e-15 PCGrad). A wrong reduction is far above it
  (measured): gradients summed instead of averaged 1.3e-2 (Adam is scale invariant only up to
  its eps, which matters for the small gradient entries), both ranks on the same half 2.4e-1.
* float32, the demo as it ships: the same argument with u = 6e-8 bounds nothing useful (where a
  gradient entry cancels, Adam's first steps can even flip its sign), so the float32 parameters
  are only required to agree to 1e-3 relative (measured 3e-6; the wrong reductions above are
  1e-2 and more off), and the
  accuracies are compared exactly where they can be: the reported accuracy of each run may
  differ from the single-process one only by test samples whose top-2 logit margin is below
  twice the largest logit difference between the two networks (a prediction can flip only
  there); every other sample must be classified alike.
* every rank ends with the same parameters, bit for bit (the same reduced gradients everywhere).

And the command itself under torchrun: one report, from rank 0, and one plot file.
"""

import datetime
import functools
import os
import subprocess
import sys
import tempfile
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytest.importorskip("sklearn")
pytest.importorskip("tqdm")

from fastmtl.apps import _distributed, demo
from fastmtl.datasets import multi_digits

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo backend")

SIZE, STEPS, BATCH, SEED = 2, 20, 64, 0
RUNS = [(method, dtype) for dtype in ("float64", "float32") for method in ("plain", "pcgrad")]
TIMEOUT_S = 120  # a rank stuck in a collective fails the test instead of hanging CI


def _flat(net) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()])


@functools.lru_cache(maxsize=1)
def _data():
    return multi_digits(seed=SEED)  # once per process (about a second on 2 cores)


def _train(method: str, dtype: str, process_group=None) -> dict:
    return demo.train(method, method, _data(), STEPS, BATCH, SEED, {}, diagnostics=False,
                      process_group=process_group, dtype=getattr(torch, dtype))


def _worker(rank: int, store_path: str, results_path: str) -> None:
    torch.set_num_threads(1)  # 2 ranks on CI's 2 cores
    torch.set_flush_denormal(True)  # as the demo's run() does
    store = dist.FileStore(store_path, SIZE)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=SIZE, timeout=datetime.timedelta(seconds=60))
    results = {}
    for method, dtype in RUNS:
        history = _train(method, dtype, dist.group.WORLD)
        mine = _flat(history["model"])
        gathered = [torch.empty_like(mine) for _ in range(SIZE)]
        dist.all_gather(gathered, mine)
        results[method, dtype] = {"parameters": mine, "accuracy": history["final_accuracy"],
                                  "same": all(torch.equal(other, mine) for other in gathered)}
    if rank == 0:
        torch.save(results, results_path)
    dist.barrier()  # no rank tears gloo down while the other still talks to it
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def distributed():
    with tempfile.TemporaryDirectory() as folder:
        store, path = os.path.join(folder, "store"), os.path.join(folder, "results.pt")
        context = mp.start_processes(_worker, args=(store, path), nprocs=SIZE, join=False, start_method="spawn")
        deadline = time.monotonic() + TIMEOUT_S
        try:
            # join returns as soon as one rank exits (False while the other runs): wait for both;
            # a rank that failed makes it raise, with that rank's traceback.
            while not context.join(timeout=max(1.0, deadline - time.monotonic())):
                assert time.monotonic() < deadline, f"the ranks did not finish within {TIMEOUT_S} s"
        finally:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
        return torch.load(path)


@pytest.fixture(scope="module")
def alone():
    torch.set_flush_denormal(True)
    return {run: _train(*run) for run in RUNS}


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("method", ["plain", "pcgrad"])
def test_float64_parameters_equal_one_process(distributed, alone, method):
    result, reference = distributed[method, "float64"], alone[method, "float64"]
    assert result["same"], "the ranks' parameters differ"
    error = _relative(result["parameters"], _flat(reference["model"]))
    print(f"{method} float64: max relative parameter difference {error:.2e}")
    assert error <= 1e-9, error


@pytest.mark.parametrize("method", ["plain", "pcgrad"])
def test_float32_accuracy_equals_one_process(distributed, alone, method):
    result, reference = distributed[method, "float32"], alone[method, "float32"]
    assert result["same"], "the ranks' parameters differ"
    single = reference["model"]
    error = _relative(result["parameters"], _flat(single))
    print(f"{method} float32: max relative parameter difference {error:.2e}")
    assert error <= 1e-3, error
    twin = demo.SharedNet().to(torch.float32)
    torch.nn.utils.vector_to_parameters(result["parameters"], twin.parameters())
    data = _data()
    with torch.no_grad():
        for task, (mine, theirs) in enumerate(zip(twin(data.x_test), single(data.x_test))):
            gap = 2 * float((mine - theirs).abs().max())  # how far a top-2 margin can move between the nets
            top2 = theirs.topk(2, dim=1).values
            uncertain = int(((top2[:, 0] - top2[:, 1]) <= gap).sum())
            correct_mine = float((mine.argmax(1) == data.y_test[:, task]).float().mean())
            # the accuracy rank 0 reported is that of its network
            assert result["accuracy"][task] == pytest.approx(correct_mine, abs=1e-12)
            allowed = uncertain / len(data.y_test)
            difference = abs(result["accuracy"][task] - reference["final_accuracy"][task])
            print(f"  task {task}: accuracy {result['accuracy'][task]:.4f} vs {reference['final_accuracy'][task]:.4f}, "
                  f"{uncertain} samples within {gap:.1e} of a tie")
            assert difference <= allowed, (difference, allowed)


def test_shards_are_equal_blocks_of_the_global_batch():
    parts = [_distributed.shard(rank, 4, 128) for rank in range(4)]
    assert [list(range(128))[part] for part in parts] == [list(range(32 * r, 32 * (r + 1))) for r in range(4)]
    with pytest.raises(ValueError, match="not a multiple"):
        _distributed.shard(0, 3, 128)


def test_torchrun_demo_reports_once_from_rank_0(tmp_path):
    # The real launcher: env:// rendezvous on a free local port (--standalone), 2 CPU processes.
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "fastmtl", "demo", "--steps", "4", "--batch", "32", "--out", "plots"],
        check=False, cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("MultiDigits:") == 1 and result.stdout.count("worst task") == 1, result.stdout
    assert "2 processes (gloo): each trains on 16 of every global batch of 32" in result.stdout
    assert result.stderr.count("| 0/4 [") == 3  # one bar per run, rank 0's: the other rank shows none
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["multidigits.png"]
