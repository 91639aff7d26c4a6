"""The bridges' training-step benchmark (benchmarks/training_step.py --bridges) runs every pair,
and its Pytorch-PCGrad peer (a re-implementation, fastmtl.apps.bench.peers) computes what the
bridge computes: otherwise the speed-up it reports would compare different work."""

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("torchjd")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import training_step  # noqa: E402

from fastmtl.apps.bench import peers  # noqa: E402
from fastmtl.compat.pcgrad import PCGrad  # noqa: E402


@pytest.mark.parametrize("variant", [name for pair in training_step.BRIDGES for name in pair])
def test_every_bridge_variant_runs(variant):
    if "libmtl" in variant:
        import libmtl_oracle

        libmtl_oracle.skip_unless_installed()
    assert training_step.bridge_step_ms("mlp", 2, variant, 6) > 0


def test_the_pytorch_pcgrad_peer_computes_what_the_bridge_computes():
    encoder, heads, x, y = training_step.make_model("mlp", 3)
    encoder, heads, x = encoder.double(), heads.double(), x.double()
    params = [*encoder.parameters(), *heads.parameters()]

    def losses():
        z = encoder(x)
        return [torch.nn.functional.cross_entropy(head(z), y[:, t]) for t, head in enumerate(heads)]

    import random

    task_losses = losses()
    largest = max(float(torch.cat([g.flatten() for g in torch.autograd.grad(loss, params, allow_unused=True,
                                                                             retain_graph=True)
                                   if g is not None]).norm()) for loss in task_losses)  # max_t |g_t|
    random.seed(0)
    peers.pytorch_pcgrad_style_backward(losses(), params)
    theirs = [p.grad.clone() for p in params]
    random.seed(0)
    PCGrad(torch.optim.SGD(params, lr=0.1)).pc_backward(losses())
    for ours, expected in zip((p.grad for p in params), theirs):
        # float64: each of the T² dot products over P ≈ 6.6e5 coordinates is within γ_P ≈ 7.3e-11 of
        # |g_i||g_j|, and each projection scales it by |g_j|/|g_j|² |g_j| = 1; over T = 3 tasks'
        # chains of at most 2 projections and the mean, both sides stay within 3·2·γ_P of
        # max_t |g_t| in every entry: 1e-9 max_t |g_t| covers both.
        bound = 1e-9 * largest
        assert (ours - expected).abs().max() <= bound
