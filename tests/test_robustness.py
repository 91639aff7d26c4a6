"""Misuses and bad steps that used to spoil training silently; each now behaves as documented
(state survives a bad step, .grad is all or nothing, options are checked when a method is
built, the optimizer pickles)."""

import copy
import io
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import fastmtl
from fastmtl import methods

torch.set_flush_denormal(True)  # these tests train

GRAM_METHODS = ["pcgrad", "mgda", "imtl_g", "aligned_mtl", "upgrad", "dualproj", "cagrad", "nash_mtl", "gradvac"]


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.encoder = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 5))
        self.heads = torch.nn.ModuleList([torch.nn.Linear(5, 1) for _ in range(3)])

    def losses(self, x, y, z=None):
        z = self.encoder(x) if z is None else z
        return [((head(z).squeeze(1) - y[:, t]) ** 2).mean() for t, head in enumerate(self.heads)]


def data(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(16, 4, generator=gen, dtype=torch.float64), torch.randn(16, 3, generator=gen, dtype=torch.float64)


def net_and_optimizer(method="pcgrad", **options):
    net = Net().double()
    return net, fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9), method,
                                     shared=net.encoder.parameters(), **options)


def test_gradvac_state_survives_a_non_finite_step():
    gradvac = methods.create("gradvac", shuffle=False)
    G = torch.randn(3, 50, dtype=torch.float64)
    gradvac(G)
    targets = gradvac.targets.clone()
    bad = G.clone()
    bad[1, 7] = float("inf")  # e.g. an AMP overflow that GradScaler then skips
    assert torch.isnan(gradvac(bad)).all()
    assert torch.equal(gradvac.targets, targets)
    # The next good step behaves as if the bad one never happened.
    twin = methods.create("gradvac", shuffle=False)
    twin.load_state_dict({"targets": targets})
    assert torch.equal(gradvac(G), twin(G))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_go4align_state_survives_a_non_finite_loss(bad):
    go = fastmtl.GO4Align(3, n_groups=2, beta=0.5)
    good = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (1.0, 2.0, 3.0)]
    go.weights(good)
    zeta = go.zeta.clone()
    weights = go.weights([good[0], torch.tensor(bad, dtype=torch.float64, requires_grad=True), good[2]])
    assert torch.isnan(weights).all()
    assert torch.equal(go.zeta, zeta)
    assert torch.isfinite(go.weights(good)).all() and (go.weights(good) > 0).all()


def test_parameter_frozen_after_construction_keeps_grad_none():
    net, opt = net_and_optimizer()
    frozen = net.encoder[0].weight
    frozen.requires_grad_(False)
    opt.zero_grad()
    opt.backward(net.losses(*data()))
    assert frozen.grad is None  # so momentum and weight decay leave it alone
    before = frozen.detach().clone()
    opt.step()
    assert torch.equal(frozen, before)
    assert all(p.grad is not None for p in net.encoder.parameters() if p.requires_grad)


def test_parameter_unfrozen_later_gets_the_aggregated_gradient():
    net = Net().double()
    net.encoder[0].weight.requires_grad_(False)
    opt = fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "mgda", shared=net.encoder.parameters())
    opt.backward(net.losses(*data()))
    net.encoder[0].weight.requires_grad_(True)
    opt.zero_grad()
    x, y = data(1)
    combined = opt.backward(net.losses(x, y))
    shared = list(net.encoder.parameters())
    G = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, shared, retain_graph=True)])
                     for loss in net.losses(x, y)])
    expected = fastmtl.aggregate(G, "mgda")
    assert torch.allclose(combined, expected, atol=1e-12)
    assert torch.allclose(net.encoder[0].weight.grad.reshape(-1), expected[: net.encoder[0].weight.numel()], atol=1e-12)
    assert not torch.allclose(expected, G.sum(0))  # the plain sum would be a different update


class Exploding(methods.GramWeighting):
    """A weighting that fails after the per-task passes, like a solver on bad gradients."""

    name = "exploding"

    def solve(self, K, finite):
        raise RuntimeError("solver failed")


@pytest.mark.parametrize("accumulated", [False, True])
def test_failed_backward_leaves_every_grad_as_it_was(accumulated):
    net, opt = net_and_optimizer(Exploding())
    if accumulated:
        sum(net.losses(*data(3))).backward()
    before = {name: None if p.grad is None else p.grad.clone() for name, p in net.named_parameters()}
    with pytest.raises(RuntimeError, match="solver failed"):
        opt.backward(net.losses(*data()))
    for name, p in net.named_parameters():
        assert (p.grad is None) == (before[name] is None), name
        if p.grad is not None:
            assert torch.equal(p.grad, before[name]), name


def test_features_without_the_returned_leaf_raises():
    net, opt = net_and_optimizer()
    x, y = data()
    z = net.encoder(x)
    opt.features(z)
    with pytest.raises(ValueError, match="features"):
        opt.backward(net.losses(x, y, z=z))  # the heads read z itself, not the leaf
    assert all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize("method", GRAM_METHODS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_gradients_follow_the_nan_policy(method, bad):
    G = torch.randn(3, 20, dtype=torch.float64)
    G[1, 4] = bad
    out = fastmtl.aggregate(G, method)  # no solver error: all NaN, the documented policy
    assert out.shape == (20,) and torch.isnan(out).all(), method


@pytest.mark.parametrize("method, options, match", [
    ("upgrad", {"reg_eps": float("nan")}, "reg_eps"),
    ("dualproj", {"reg_eps": -1e-4}, "reg_eps"),
    ("upgrad", {"norm_eps": -1.0}, "norm_eps"),
    ("cagrad", {"max_iters": 0}, "max_iters"),
    ("cagrad", {"c": float("inf")}, "c"),
    ("gradvac", {"beta": 1.5}, "beta"),
    ("gradvac", {"eps": -1.0}, "eps"),
    ("gradvac", {"eps": 0.0}, "eps"),  # a zero-gradient task would turn the targets NaN for good
    ("cagrad", {"norm_eps": 0.0}, "norm_eps"),
    ("upgrad", {"reg_eps": 0.0}, "reg_eps"),
    ("cosreg", {"eps": float("nan")}, "eps"),
    ("mgda", {"epsilon": 0.0}, "epsilon"),
    ("nash_mtl", {"iterations": 0}, "iterations"),
    ("pcgrad", {"reduction": "avg"}, "reduction"),
    ("aligned_mtl", {"scale_mode": "max"}, "scale_mode"),
    ("graddrop", {"leak": 2.0}, "leak"),
    ("pcgrad", {"impl": "gpu"}, "impl"),
    ("go4align", {"n_groups": 0}, "n_groups"),
    ("cosreg", {"weight": -1.0}, "weight"),
])
def test_options_are_checked_when_the_method_is_built(method, options, match):
    with pytest.raises(ValueError, match=match):
        methods.create(method, **options)
    net = Net()
    with pytest.raises(ValueError, match=match):  # at construction, not at the first backward
        fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), method, shared=net.encoder.parameters(),
                             **options)


def test_unknown_and_ill_typed_options():
    with pytest.raises(TypeError, match="does not take"):
        methods.create("gradvac", state="x")
    with pytest.raises(TypeError, match="shuffle"):
        methods.create("pcgrad", shuffle="yes")
    with pytest.raises(TypeError, match="generator"):
        methods.create("pcgrad", generator=0)
    with pytest.raises(TypeError, match="max_iters"):
        methods.create("mgda", max_iters=2.5)


def test_numpy_scalars_are_accepted_as_options():
    G = torch.randn(3, 40, dtype=torch.float64)
    assert torch.equal(fastmtl.aggregate(G, "graddrop", leak=np.float32(1.0)), fastmtl.aggregate(G, "sum"))
    assert torch.equal(fastmtl.aggregate(G, "mgda", max_iters=np.int64(5)), fastmtl.aggregate(G, "mgda", max_iters=5))
    assert methods.create("go4align", n_groups=np.int64(2)).options["n_groups"] == 2
    assert methods.create("pcgrad", shuffle=np.bool_(False)).options["shuffle"] is False


@pytest.mark.parametrize("method", ["sum", "graddrop", *GRAM_METHODS, "cosreg", "go4align"])
def test_optimizer_pickles_and_saves_after_a_step(method):
    net, opt = net_and_optimizer(method)
    opt.zero_grad()
    opt.backward(net.losses(*data()))
    opt.step()
    restored = pickle.loads(pickle.dumps(opt))
    assert type(restored.method) is type(opt.method)
    buffer = io.BytesIO()
    torch.save(opt, buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=False).method.name == method


def test_load_state_dict_takes_a_plain_optimizers_state():
    net, opt = net_and_optimizer()
    plain = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    sum(net.losses(*data())).backward()
    plain.step()
    opt.load_state_dict(plain.state_dict())  # e.g. resuming a checkpoint from before fastmtl
    first = net.encoder[0].weight
    assert torch.equal(opt.state[first]["momentum_buffer"], plain.state[first]["momentum_buffer"])
    with pytest.raises(ValueError, match="neither"):
        opt.load_state_dict({"weights": 1})


def test_a_failed_extension_load_warns_once_with_the_reason():
    script = textwrap.dedent(
        """
        import sys, warnings
        sys.modules["fastmtl._C"] = None  # the extension cannot be imported
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import fastmtl
            import fastmtl.functional
        messages = [str(w.message) for w in caught if "fastmtl._C" in str(w.message)]
        print(len(messages), repr(fastmtl.IMPORT_ERROR) in messages[0])  # the reason is in the warning
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env={**__import__("os").environ, "FASTMTL_SKIP_EXT": "0"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "True"]


def test_state_dict_round_trip_of_every_stateful_method():
    for method in ("gradvac", "go4align"):
        options = {"shuffle": False} if method == "gradvac" else {}  # the same task order for both twins
        net, opt = net_and_optimizer(method, **options)
        for step in range(2):
            opt.zero_grad()
            opt.backward(net.losses(*data(step)))
            opt.step()
        twin_net = copy.deepcopy(net)
        twin = fastmtl.MTLOptimizer(torch.optim.SGD(twin_net.parameters(), lr=0.1, momentum=0.9), method,
                                    shared=twin_net.encoder.parameters(), **options)
        twin.load_state_dict(copy.deepcopy(opt.state_dict()))
        for step in range(2, 4):
            for m, o in ((net, opt), (twin_net, twin)):
                o.zero_grad()
                o.backward(m.losses(*data(step)))
                o.step()
        for a, b in zip(net.parameters(), twin_net.parameters()):
            assert torch.equal(a, b), method


def test_a_disabled_grad_scaler_is_a_no_op():
    net, opt = net_and_optimizer("nash_mtl")
    twin_net, twin = net_and_optimizer("nash_mtl")
    scaler = torch.amp.GradScaler("cpu", enabled=False)  # GradScaler(enabled=use_amp)
    opt.backward(net.losses(*data()), scaler=scaler)
    twin.backward(twin_net.losses(*data()))
    for a, b in zip(net.parameters(), twin_net.parameters()):
        assert torch.equal(a.grad, b.grad)


def test_feature_mode_is_for_one_call_and_rejects_losses_reading_z_itself():
    net, opt = net_and_optimizer()
    x, y = data()
    opt.features(net.encoder(x))
    with pytest.raises(ValueError, match="empty"):
        opt.backward([])
    opt.backward(net.losses(x, y))  # an ordinary backward: the failed call ended feature mode
    opt.zero_grad()
    z = net.encoder(x)
    leaf = opt.features(z)
    mixed = net.losses(x, y, z=leaf)[:2] + net.losses(x, y, z=z)[2:]  # the last head reads z, not the leaf
    with pytest.raises(ValueError, match="itself"):
        opt.backward(mixed)
    assert all(p.grad is None for p in net.parameters())


def test_diagnostics_of_sum_report_the_real_cosines():
    net, opt = net_and_optimizer("sum", diagnostics=True)
    x, y = data(2)
    opt.backward(net.losses(x, y))
    shared = list(net.encoder.parameters())
    G = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, shared, retain_graph=True)])
                     for loss in net.losses(x, y)])
    cosine = torch.nn.functional.cosine_similarity(G[:, None], G[None, :], dim=-1)
    assert torch.allclose(opt.last_diagnostics["cosine"], cosine, atol=1e-12)


def test_pickle_and_deepcopy_after_an_lr_scheduler_step_their_own_parameters():
    net, opt = net_and_optimizer()
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1)
    opt.backward(net.losses(*data()))
    opt.step()
    scheduler.step()
    restored = pickle.loads(pickle.dumps(opt))
    twin_net, twin = copy.deepcopy((net, opt))
    before = [p.detach().clone() for p in net.parameters()]
    twin.zero_grad()
    twin.backward(twin_net.losses(*data(1)))
    twin.step()
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), before))  # the original did not move
    assert not all(torch.equal(a, b) for a, b in zip(twin_net.parameters(), before))
    assert restored.method.name == "pcgrad"


def test_a_failing_group_leaves_the_other_groups_method_state():
    net = Net().double()
    opt = fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "gradvac", shuffle=False, shared=[
        {"params": net.encoder[0].parameters()}, {"params": net.encoder[2].parameters(), "method": Exploding()}])
    opt.groups[0].method.targets = torch.zeros(3, 3, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="solver failed"):
        opt.backward(net.losses(*data()))
    assert torch.equal(opt.groups[0].method.targets, torch.zeros(3, 3, dtype=torch.float64))


def test_imtl_g_update_does_not_vanish_for_large_gradients():
    G = torch.randn(3, 50, dtype=torch.float64)
    d = fastmtl.aggregate(G, "imtl_g")
    for scale in (1e6, 1e12, 1e100):
        assert torch.allclose(fastmtl.aggregate(scale * G, "imtl_g"), scale * d, rtol=1e-9)


def test_a_checkpoint_of_the_previous_format_loads():
    net, opt = net_and_optimizer("gradvac", shuffle=False)
    opt.backward(net.losses(*data()))
    opt.step()
    current = opt.state_dict()
    group = current["fastmtl"]["groups"][0]
    previous = {"optimizer": current["optimizer"],
                "fastmtl": {"method": "gradvac", "every": 1, "step": 1, "weights": group["weights"],
                            "weights_mode": "parameters", "method_state": group["method_state"]}}
    twin_net, twin = net_and_optimizer("gradvac", shuffle=False)
    twin.load_state_dict(copy.deepcopy(previous))
    assert torch.equal(twin.groups[0].method.targets, opt.groups[0].method.targets)
    with pytest.raises(ValueError, match="lacks"):
        twin.load_state_dict({"optimizer": current["optimizer"], "fastmtl": {"method": "gradvac"}})


def test_functional_backward_with_every_shared_parameter_frozen():
    net = Net().double()
    for p in net.encoder.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="frozen"):
        fastmtl.backward(net.losses(*data()), net.encoder.parameters())
