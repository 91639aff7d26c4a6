"""Every Gram-space method with a compiled solve runs it as one op call: under impl="cpp"
(impl="cuda" takes the same Python path) weights(K) dispatches the method's fastmtl op once,
plus only the set-up its inputs need (a random order, UPGrad's rows, GradVac's state update), and
none of the reference path's masking (isfinite / identity stand-in): one launch per solve on a
GPU. impl="torch" never calls a compiled op."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fastmtl

pytestmark = pytest.mark.skipif(not fastmtl.HAS_EXT, reason="fastmtl._C not built")

# The op of each method and the other ops its compiled path may dispatch.
COMPILED = {
    "mgda": ("mgda_weights", {"aten.detach"}),
    "nash_mtl": ("nash_mtl_weights", {"aten.detach"}),
    "imtl_g": ("imtl_g_weights", {"aten.detach"}),
    "aligned_mtl": ("aligned_mtl_weights", {"aten.detach"}),
    "cagrad": ("cagrad_weights", {"aten.detach"}),
    "upgrad": ("dual_cone_weights", {"aten.detach", "aten.eye", "aten.div", "aten.sum"}),
    "dualproj": ("dual_cone_weights", {"aten.detach", "aten.full", "aten.select"}),
    "gradvac": ("gradvac_weights", {"aten.detach", "aten.zeros", "aten.rand", "aten.sort", "aten.select", "aten.isnan",
                                    "aten.where"}),
    "pcgrad": ("pcgrad_weights", {"aten.detach", "aten.rand", "aten.sort"}),
    "modo": ("simplex_descent_weights", {"aten.detach", "aten.full", "aten.slice", "aten.select", "aten.isnan",
                                         "aten.where"}),
    "sdmgrad": ("simplex_descent_weights", {"aten.detach", "aten.full", "aten.slice", "aten.select", "aten.isnan",
                                            "aten.where"}),
    "fairgrad": ("fairgrad_weights", {"aten.detach"}),
    # PCD's moving average of the squared norms runs as torch ops before its op.
    "pcd": ("pcd_weights", {"aten._to_copy", "aten.abs", "aten.add", "aten.all", "aten.detach", "aten.diagonal",
                            "aten.div", "aten.eq", "aten.full", "aten.gt", "aten.lift_fresh", "aten.mul", "aten.ne",
                            "aten.pow", "aten.reciprocal", "aten.rsub", "aten.scalar_tensor", "aten.sqrt",
                            "aten.where", "aten.zeros", "aten.zeros_like"}),
}
REQUIRED_OPTIONS = {"fairgrad": {"alpha": 1.0}}


class OpLog(TorchDispatchMode):
    """The overload packets (e.g. "aten.sort", "fastmtl.mgda_weights") dispatched inside."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def logged_weights(method, K):
    with OpLog() as log:
        w = method.weights(K)
    return w, log.calls


# Gram-space methods without a compiled solve: no solve (sum, mean, random, constant), or one
# that is not a fused op yet (Krum's selection, ConFIG's pinv: torch ops).
WITHOUT_OP = {"sum", "mean", "random", "constant", "krum", "config"}
# Gram-space methods whose solve is another method's op: CR-MOGM averages its base's weights, IMTL
# runs IMTL-G's op on the loss-scaled K (tests/test_stochastic_weightings.py, test_libmtl_weightings.py).
BORROWED_OP = {"crmogm", "imtl"}


def test_every_gram_method_with_an_op_is_listed():
    gram_methods = {m for m in fastmtl.methods.available() if fastmtl.methods.method_class(m).family == "gram"}
    assert gram_methods - WITHOUT_OP - BORROWED_OP == set(COMPILED)


@pytest.mark.parametrize("name", sorted(COMPILED))
def test_compiled_path_is_one_op_call(name):
    op, allowed = COMPILED[name]
    G = torch.randn(5, 20, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    method = fastmtl.methods.create(name, impl="cpp", **REQUIRED_OPTIONS.get(name, {}))
    w, calls = logged_weights(method, G @ G.T)
    assert calls.count(f"fastmtl.{op}") == 1, calls
    assert set(calls) - {f"fastmtl.{op}"} <= allowed, calls
    assert torch.isfinite(w).all()


@pytest.mark.parametrize("name", sorted(COMPILED))
def test_compiled_path_keeps_the_nan_policy(name):
    # Without the masking ops, the op itself gives all-NaN weights for a non-finite K, and a
    # stateful method keeps its state.
    G = torch.randn(4, 9, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    method = fastmtl.methods.create(name, impl="cpp", **REQUIRED_OPTIONS.get(name, {}))
    method.weights(G @ G.T)
    state = {key: value.clone() for key, value in method.state_dict().items() if value is not None}
    K = G @ G.T
    K[1, 2] = float("nan")
    assert method.weights(K).isnan().all()
    for key, value in state.items():
        assert torch.equal(method.state_dict()[key], value), key


@pytest.mark.parametrize("name", sorted(COMPILED))
def test_torch_path_calls_no_compiled_op(name):
    G = torch.randn(5, 20, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    _, calls = logged_weights(fastmtl.methods.create(name, impl="torch", **REQUIRED_OPTIONS.get(name, {})), G @ G.T)
    assert not [call for call in calls if call.startswith("fastmtl.")], calls


def test_borrowed_ops_run_once():
    G = torch.randn(4, 9, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    imtl = fastmtl.methods.create("imtl", n_tasks=4, impl="cpp")
    imtl.take_losses(torch.linspace(0.5, 2.0, 4, dtype=torch.float64))
    crmogm = fastmtl.methods.create("crmogm", base="upgrad", impl="cpp")
    for method, op in ((imtl, "fastmtl.imtl_g_weights"), (crmogm, "fastmtl.dual_cone_weights")):
        w, calls = logged_weights(method, G @ G.T)
        assert calls.count(op) == 1 and torch.isfinite(w).all(), (method.name, calls)
