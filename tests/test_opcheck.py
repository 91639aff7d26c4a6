"""torch.library.opcheck on every operator: schema, fake (meta) kernels, dispatch under
AOTAutograd, so torch.compile can trace them."""

import pytest
import torch

import fastmtl

pytestmark = pytest.mark.skipif(not fastmtl.HAS_EXT, reason="fastmtl._C not built")


def cases():
    G = torch.randn(4, 1000)
    K = G @ G.T
    order = torch.rand(4, 4).argsort(1)
    seed = torch.tensor([3, 4])
    yield "gram", (G,)
    yield "gram", (G.double()[:, ::2],)
    yield "gram", (G.half(),)
    yield "gram_rescue", (G, K)  # finite K: K in float64
    huge = 2e19 * G
    yield "gram_rescue", (huge, huge @ huge.T)  # overflowed K: recomputed in float64
    yield "gram_rescue", (G.bfloat16()[:, ::2], torch.full((4, 4), float("inf")))
    yield "pcgrad_weights", (K, order)
    yield "pcgrad_weights", (K.double(), None)
    yield "combine", (G, torch.rand(4))
    yield "combine", (G.bfloat16(), torch.rand(4))
    yield "combine_into", (G, torch.rand(4), torch.empty(1000))
    yield "graddrop", (G, torch.rand(4), None, seed)
    yield "graddrop", (G.double(), torch.rand(4).double(), torch.randn(1000).double(), seed)
    yield "graddrop", (G, torch.rand(4), torch.randn(1000), seed, 7)  # a column shard, off the Philox blocks
    # The Gram-space solves: float64 or float32 K, float64 outputs.
    yield "mgda_weights", (K.double(), 100, 1e-3)
    yield "mgda_weights", (K, 5, 1e-3)
    yield "nash_mtl_weights", (K.double(), 1.0, 30)
    yield "nash_mtl_weights", (K, 0.0, 30)
    yield "imtl_g_weights", (K.double(),)
    yield "aligned_mtl_weights", (K.double(), "median")
    yield "aligned_mtl_weights", (K, "min")
    yield "gradvac_weights", (K.double(), torch.rand(4, 4, dtype=torch.float64), order, 0.5, 1e-8)
    uniform = torch.full((4,), 0.25, dtype=torch.float64)
    yield "simplex_descent_weights", (K.double(), uniform, uniform, 10.0, 0.5, 0.0, 0.3, 20, True)  # SDMGrad
    yield "simplex_descent_weights", (K, uniform.float(), uniform, 0.1, 0.0, 0.1, 0.0, 1, False)  # MoDo
    yield "gradvac_weights", (K, torch.zeros(4, 4), None, 0.0, 1e-3)
    yield "dual_cone_weights", (K.double(), torch.eye(4, dtype=torch.float64) / 4, 1e-4, 1e-4)
    yield "dual_cone_weights", (K, torch.full((1, 4), 0.25, dtype=torch.float64), 1e-3, 1e-2)
    yield "cagrad_weights", (K.double(), 0.5, 0, 1e-4, 12, 1e-12)
    yield "cagrad_weights", (K, 2.0, 1, 1e-4, 12, 0.0)
    yield "pcd_weights", (K.double(), torch.rand(4, dtype=torch.float64), torch.full((3,), 0.2, dtype=torch.float64),
                          1e-9, 1e-9, 2.2e-15)
    yield "pcd_weights", (K, torch.rand(4), torch.rand(3), 1e-9, 1e-6, 1.2e-6)
    yield "fairgrad_weights", (K.double(), 1.0, 100)
    yield "fairgrad_weights", (K, 0.5, 20)
    yield "cluster_tasks", (torch.eye(4), 2, None, "average")
    yield "cluster_tasks", (torch.eye(4), None, 0.5, "single")


@pytest.mark.parametrize("name,args", list(cases()), ids=lambda value: value if isinstance(value, str) else "")
def test_opcheck(name, args):
    torch.library.opcheck(getattr(torch.ops.fastmtl, name).default, args)


def test_every_registered_operator_is_opchecked():
    registered = {name.split("::")[1] for name in torch._C._dispatch_get_all_op_names() if name.startswith("fastmtl::")}
    assert registered == {name for name, _ in cases()}
