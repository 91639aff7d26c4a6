"""MTLOptimizer and fastmtl.backward: the update equals a hand-written per-vector method
followed by the wrapped optimizer's step; heads get plain gradients; every=k, state_dict,
GradScaler, clipping and bad input."""

import copy

import pytest
import tiny_models
import torch
from oracles import pcgrad_per_vector

import fastmtl

torch.set_flush_denormal(True)  # these tests train


model, batch = tiny_models.model, tiny_models.batch


def hand_written_pcgrad_step(net, x, y, lr):
    """Per-task gradients with torch.autograd.grad, the paper's per-vector PCGrad on the shared
    parameters, the plain summed gradient on the heads, then SGD."""
    losses = net.losses(x, y)
    combined = pcgrad_per_vector(tiny_models.task_gradients(losses, list(net.encoder.parameters())))
    tiny_models.sgd_step(net, combined, torch.autograd.grad(sum(losses), list(net.heads.parameters())), lr)


@pytest.mark.parametrize("impl", ["auto", "torch"])
def test_update_equals_hand_written_pcgrad_then_sgd(impl):
    net, reference = model(), model()
    opt = fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "pcgrad",
                               shared=net.encoder.parameters(), shuffle=False, impl=impl)
    for step in range(3):
        x, y = batch(step)
        opt.zero_grad()
        opt.backward(net.losses(x, y))
        opt.step()
        hand_written_pcgrad_step(reference, x, y, lr=0.1)
        for a, b in zip(net.parameters(), reference.parameters()):
            assert torch.allclose(a, b, atol=1e-12), step


def test_graddrop_with_leak_one_equals_summed_loss_training():
    net, reference = model(), model()
    opt = fastmtl.MTLOptimizer(torch.optim.Adam(net.parameters(), lr=0.01), "graddrop",
                               shared=net.encoder.parameters(), leak=1.0)
    plain = torch.optim.Adam(reference.parameters(), lr=0.01)
    for step in range(3):
        x, y = batch(step)
        opt.zero_grad()
        opt.backward(net.losses(x, y))
        opt.step()
        plain.zero_grad()
        sum(reference.losses(x, y)).backward()
        plain.step()
    for a, b in zip(net.parameters(), reference.parameters()):
        assert torch.allclose(a, b, atol=1e-10)


def test_every_k_reuses_weights():
    net = model()
    opt = fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.05), "pcgrad",
                               shared=net.encoder.parameters(), every=3)
    seen = []
    for step in range(5):
        opt.zero_grad()
        opt.backward(net.losses(*batch(step)))
        opt.step()
        seen.append(opt.groups[0].weights.clone())
    assert torch.equal(seen[0], seen[1]) and torch.equal(seen[1], seen[2])
    assert not torch.equal(seen[2], seen[3]) and torch.equal(seen[3], seen[4])


def test_state_dict_round_trip_continues_identically():
    net = model()
    opt = fastmtl.MTLOptimizer(torch.optim.Adam(net.parameters(), lr=0.01), "pcgrad",
                               shared=net.encoder.parameters(), every=2, shuffle=False)
    for step in range(3):
        opt.zero_grad()
        opt.backward(net.losses(*batch(step)))
        opt.step()
    twin = copy.deepcopy(net)
    twin_opt = fastmtl.MTLOptimizer(torch.optim.Adam(twin.parameters(), lr=0.01), "pcgrad",
                                    shared=twin.encoder.parameters(), every=2, shuffle=False)
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # as if saved and loaded: no shared tensors
    for step in range(3, 6):
        for m, o in ((net, opt), (twin, twin_opt)):
            o.zero_grad()
            o.backward(m.losses(*batch(step)))
            o.step()
    for a, b in zip(net.parameters(), twin.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="method"):
        fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "sum",
                             shared=net.encoder.parameters()).load_state_dict(opt.state_dict())


def test_grad_scaler_and_clipping_work_between_backward_and_step():
    net, reference = model(), model()
    opt = fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "pcgrad",
                               shared=net.encoder.parameters(), shuffle=False)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    x, y = batch(1)
    opt.zero_grad()
    opt.backward([scaler.scale(loss) for loss in net.losses(x, y)])
    scaler.unscale_(opt)
    torch.nn.utils.clip_grad_norm_(net.parameters(), max_norm=1e9)  # the .grad views are real tensors
    scaler.step(opt)
    scaler.update()
    hand_written_pcgrad_step(reference, x, y, lr=0.1)
    for a, b in zip(net.parameters(), reference.parameters()):
        assert torch.allclose(a, b, atol=1e-10)


def test_functional_backward_writes_shared_grads():
    net = model()
    x, y = batch(2)
    combined = fastmtl.backward(net.losses(x, y), net.encoder.parameters(), "pcgrad", shuffle=False)
    shared = list(net.encoder.parameters())
    flat = torch.cat([p.grad.reshape(-1) for p in shared])
    assert torch.equal(flat, combined)
    rows = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, shared, retain_graph=True)])
            for loss in net.losses(x, y)]
    assert torch.allclose(combined, pcgrad_per_vector(torch.stack(rows)), atol=1e-12)
    assert all(p.grad is not None for p in net.heads.parameters())


def test_loss_not_touching_shared_parameters_gives_a_zero_row():
    net = model()
    x, y = batch(3)
    losses = net.losses(x, y)
    head_only = (net.heads[0].weight ** 2).sum()  # depends on no shared parameter
    combined = fastmtl.backward([losses[1], head_only], net.encoder.parameters(), "sum")
    shared = list(net.encoder.parameters())
    expected = torch.cat([g.reshape(-1) for g in torch.autograd.grad(net.losses(x, y)[1], shared)])
    assert torch.allclose(combined, expected)


def test_bad_input():
    net = model()
    params = net.encoder.parameters
    opt = fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), shared=params())
    x, y = batch()
    with pytest.raises(ValueError, match="empty"):
        opt.backward([])
    with pytest.raises(ValueError, match="scalar"):
        opt.backward([net.encoder(x).sum(1)])
    with pytest.raises(ValueError, match="does not require grad"):
        opt.backward([torch.tensor(1.0)])
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        fastmtl.MTLOptimizer(object(), shared=params())
    with pytest.raises(ValueError, match="shared"):
        fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="unknown method"):
        fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "pcgard", shared=params())
    with pytest.raises(TypeError, match="options"):
        fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "pcgrad", shared=params(), leak=0.1)
    with pytest.raises(ValueError, match="every"):
        fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "graddrop", shared=params(), every=2)
    with pytest.raises(ValueError, match="every"):
        fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), shared=params(), every=0)


def test_zero_grad_keeps_or_drops_buffers():
    net = model()
    opt = fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), shared=net.encoder.parameters())
    opt.backward(net.losses(*batch()))
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in net.parameters())
    opt.zero_grad()
    assert all(p.grad is None for p in net.parameters())


def test_diagnostics_report_weights_cosines_and_conflicts():
    net = model()
    opt = fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "pcgrad",
                               shared=net.encoder.parameters(), diagnostics=True, shuffle=False)
    x, y = batch(4)
    opt.backward(net.losses(x, y))
    report = opt.last_diagnostics
    shared = list(net.encoder.parameters())
    rows = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, shared, retain_graph=True)])
                        for loss in net.losses(x, y)])
    cosine = torch.nn.functional.cosine_similarity(rows[:, None], rows[None, :], dim=-1)
    assert torch.allclose(report["cosine"], cosine, atol=1e-10)
    assert int(report["conflicts"]) == int((torch.triu(cosine, 1) < 0).sum())
    assert torch.allclose(report["weights"] @ rows, pcgrad_per_vector(rows), atol=1e-10)
    graddrop = fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "graddrop",
                                    shared=net.encoder.parameters(), diagnostics=True)
    graddrop.backward(net.losses(x, y))
    assert graddrop.last_diagnostics["weights"] is None and graddrop.last_diagnostics["cosine"].shape == (3, 3)


def test_feature_mode_equals_hand_written():
    net, reference = model(), model()
    opt = fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "pcgrad",
                               shared=net.encoder.parameters(), shuffle=False)
    x, y = batch(5)
    z = opt.features(net.encoder(x))
    losses = [((head(z).squeeze(1) - y[:, t]) ** 2).mean() for t, head in enumerate(net.heads)]
    opt.zero_grad()
    opt.backward(losses)
    opt.step()
    # By hand: gradients w.r.t. the representation, PCGrad there, one backward through the encoder.
    z_ref = reference.encoder(x)
    ref_losses = [((head(z_ref).squeeze(1) - y[:, t]) ** 2).mean() for t, head in enumerate(reference.heads)]
    rows = torch.stack([torch.autograd.grad(loss, z_ref, retain_graph=True)[0].reshape(-1) for loss in ref_losses])
    combined = pcgrad_per_vector(rows).view_as(z_ref)
    encoder_grads = torch.autograd.grad(z_ref, list(reference.encoder.parameters()), combined, retain_graph=True)
    head_grads = torch.autograd.grad(sum(ref_losses), list(reference.heads.parameters()))
    with torch.no_grad():
        for p, g in zip([*reference.encoder.parameters(), *reference.heads.parameters()], [*encoder_grads, *head_grads]):
            p -= 0.1 * g
    for a, b in zip(net.parameters(), reference.parameters()):
        assert torch.allclose(a, b, atol=1e-12)


def test_feature_mode_graddrop_uses_the_papers_form():
    net = model()
    opt = fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "graddrop", shared=net.encoder.parameters())
    x, y = batch(6)
    representation = net.encoder(x)
    z = opt.features(representation)
    losses = [((head(z).squeeze(1) - y[:, t]) ** 2).mean() for t, head in enumerate(net.heads)]
    rows = torch.stack([torch.autograd.grad(loss, z, retain_graph=True)[0].reshape(-1) for loss in losses])
    torch.manual_seed(11)
    combined = opt.backward(losses)
    torch.manual_seed(11)
    expected = fastmtl.graddrop(rows, signs=representation.detach().reshape(-1), batch=32)
    assert torch.allclose(combined, expected, atol=1e-14)
    assert all(p.grad is not None for p in net.encoder.parameters())


def test_feature_mode_needs_a_representation_with_grad():
    net = model()
    opt = fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), shared=net.encoder.parameters())
    with pytest.raises(ValueError, match="representation"):
        opt.features(torch.zeros(3, 5))


def test_every_k_steps_between_updates_use_one_weighted_backward():
    # On a reuse step the update must equal (cached w) . G for the shared parameters and the
    # plain summed gradient for the heads, as if the T per-task passes had run.
    net = model()
    opt = fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "mgda",
                               shared=net.encoder.parameters(), every=4)
    opt.zero_grad()
    opt.backward(net.losses(*batch(0)))
    opt.step()
    weights = opt.groups[0].weights
    x, y = batch(1)
    shared, heads = list(net.encoder.parameters()), list(net.heads.parameters())
    losses = net.losses(x, y)
    rows = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, shared, retain_graph=True)])
                        for loss in losses])
    head_grads = torch.autograd.grad(sum(losses), heads, retain_graph=True)
    opt.zero_grad()
    combined = opt.backward(net.losses(x, y))
    assert torch.allclose(combined, weights.to(rows.dtype) @ rows, atol=1e-12)
    assert torch.allclose(torch.cat([p.grad.reshape(-1) for p in shared]), combined)
    for p, g in zip(heads, head_grads):
        assert torch.allclose(p.grad, g, atol=1e-12)


def test_loss_side_methods_in_the_optimizer():
    net, reference = model(), model()
    opt = fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "cosreg",
                               shared=net.encoder.parameters(), weight=0.5)
    x, y = batch(7)
    opt.zero_grad()
    built = opt.backward(net.losses(x, y))
    opt.step()
    losses = reference.losses(x, y)
    total = sum(losses) + fastmtl.cosreg_penalty(losses, reference.encoder.parameters(), weight=0.5)
    assert torch.allclose(built, total.detach())  # backward returns the loss it built
    grads = torch.autograd.grad(total, list(reference.parameters()))
    with torch.no_grad():
        for p, g in zip(reference.parameters(), grads):
            p -= 0.1 * g
    for a, b in zip(net.parameters(), reference.parameters()):
        assert torch.allclose(a, b, atol=1e-12)

    go = fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "go4align",
                              shared=net.encoder.parameters(), n_groups=2)
    for step in range(3):
        go.zero_grad()
        go.backward(net.losses(*batch(step)))
        go.step()
    saved = go.state_dict()
    twin = fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "go4align",
                                shared=net.encoder.parameters(), n_groups=2)
    twin.load_state_dict(copy.deepcopy(saved))
    losses = net.losses(*batch(9))
    assert torch.equal(go.method.weighter.weights(losses), twin.method.weighter.weights(losses))
    with pytest.raises(TypeError, match="options"):
        fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "cosreg", shared=net.encoder.parameters(), leak=1)


@pytest.mark.parametrize("method", ["sum", "mean", "mgda", "imtl_g", "aligned_mtl", "upgrad", "dualproj", "cagrad",
                                    "nash_mtl", "gradvac"])
def test_every_weighting_method_through_the_optimizer(method):
    # The optimizer's update = SGD with fastmtl.aggregate(G) on the shared parameters, where G
    # comes from torch.autograd.grad, and plain gradients on the heads.
    net, reference = model(), model()
    options = {"shuffle": False} if method == "gradvac" else {}
    opt = fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), method,
                               shared=net.encoder.parameters(), **options)
    x, y = batch(8)
    opt.zero_grad()
    opt.backward(net.losses(x, y))
    opt.step()
    losses = reference.losses(x, y)
    combined = fastmtl.aggregate(tiny_models.task_gradients(losses, list(reference.encoder.parameters())), method,
                                 **options)
    tiny_models.sgd_step(reference, combined, torch.autograd.grad(sum(losses), list(reference.heads.parameters())), 0.1)
    for a, b in zip(net.parameters(), reference.parameters()):
        assert torch.allclose(a, b, atol=1e-10), method


def test_bf16_autocast_losses():
    # Under bf16 autocast the losses are computed in bf16; the per-task gradients land in the
    # float32 buffer of the float32 parameters and the aggregation runs in float32.
    torch.manual_seed(0)
    encoder, heads = torch.nn.Linear(8, 16), torch.nn.ModuleList([torch.nn.Linear(16, 1) for _ in range(3)])
    opt = fastmtl.MTLOptimizer(torch.optim.SGD([*encoder.parameters(), *heads.parameters()], lr=0.1), "pcgrad",
                               shared=encoder.parameters())
    x = torch.randn(32, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = encoder(x)
        losses = [head(z).float().pow(2).mean() for head in heads]
    opt.zero_grad()
    combined = opt.backward(losses)
    opt.step()
    assert combined.dtype == torch.float32 and torch.isfinite(combined).all()
    assert all(p.grad.dtype == torch.float32 for p in encoder.parameters())


def test_lr_scheduler_drives_the_wrapped_optimizer():
    net = model()
    opt = fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), shared=net.encoder.parameters())
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    opt.zero_grad()
    opt.backward(net.losses(*batch()))
    opt.step()
    scheduler.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
    assert opt.optimizer.param_groups[0]["lr"] == pytest.approx(0.05)


def test_backward_accumulates_like_loss_backward():
    net = model()
    opt = fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "pcgrad",
                               shared=net.encoder.parameters(), shuffle=False)
    x, y = batch(2)
    opt.zero_grad()
    once = opt.backward(net.losses(x, y)).clone()
    first = [p.grad.clone() for p in net.parameters()]
    again = opt.backward(net.losses(x, y))
    assert torch.allclose(again, once)  # the return value is this call's gradient
    for p, g in zip(net.parameters(), first):
        assert torch.allclose(p.grad, 2 * g)  # shared and heads alike


# Options for the three tasks of the tiny model: the required ones, and deterministic choices.
THREE_TASK_OPTIONS = {"pcgrad": {"shuffle": False}, "gradvac": {"shuffle": False}, "constant": {"weights": [1, 2, 3]},
                      "krum": {"n_byzantine": 0}, "trimmed_mean": {"trim_number": 1}, "crmogm": {"base": "mgda"},
                      "fairgrad": {"alpha": 1.0}, "imtl": {"n_tasks": 3}, "uw": {"n_tasks": 3},
                      "gradnorm": {"n_tasks": 3}, "famo": {"n_tasks": 3}, "stch": {"warmup_steps": 1},
                      "cosreg": {"weight": 0.5}}
RANDOM = {"graddrop", "random", "rlw"}  # each optimizer gets a generator seeded alike


@pytest.mark.parametrize("method", fastmtl.methods.available())
def test_grad_scaler_gives_the_unscaled_update(method):
    # Three steps with a GradScaler (a power-of-two scale: scaling and unscaling are exact) give
    # the run without one, for every method: a method whose weights or state do not follow G's
    # scale sees the unscaled K or G (Nash-MTL, MoDo, MoCo, ExcessMTL, DB-MTL, ...), and the
    # learnt tensors (UW, GradNorm, IMTL) are unscaled with the model's gradients.
    def build(net):
        options = dict(THREE_TASK_OPTIONS.get(method, {}))
        if method in RANDOM:
            options["generator"] = torch.Generator().manual_seed(5)
        return fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), method,
                                    shared=net.encoder.parameters(), **options)

    net, reference = model(), model()
    scaled, plain = build(net), build(reference)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    for step in range(3):
        x, y = batch(3 + step)
        scaled.zero_grad()
        scaled.backward(net.losses(x, y), scaler=scaler)
        scaler.step(scaled)
        scaler.update()
        plain.zero_grad()
        plain.backward(reference.losses(x, y))
        plain.step()
    learnt = scaled.method.parameters() + plain.method.parameters()
    assert all(p.grad is not None for p in learnt)  # the learnt tensors did train
    for a, b in zip(list(net.parameters()) + scaled.method.parameters(),
                    list(reference.parameters()) + plain.method.parameters()):
        assert torch.allclose(a, b, rtol=0, atol=1e-10), method


def test_gradvac_object_keeps_its_state_across_steps_as_torchjd(monkeypatch):
    torchjd = pytest.importorskip("torchjd.aggregation")
    monkeypatch.setattr(torch, "randperm", lambda n, *args, **kwargs: torch.arange(n))  # torchjd's order: index order
    net = model()
    gradvac = fastmtl.methods.create("gradvac", beta=0.3, shuffle=False)
    opt = fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), gradvac, shared=net.encoder.parameters())
    peer = torchjd.GradVac(beta=0.3)
    shared = list(net.encoder.parameters())
    for step in range(3):
        x, y = batch(step)
        G = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, shared, retain_graph=True)])
                         for loss in net.losses(x, y)])
        expected = peer(G)
        opt.zero_grad()
        got = opt.backward(net.losses(x, y))
        opt.step()
        assert torch.allclose(got, expected, atol=1e-12), step
    assert opt.groups[0].method is gradvac and gradvac.targets.abs().sum() > 0
    twin_net, twin = copy.deepcopy((net, opt))  # Optimizer's own (de)serialisation would break this
    x, y = batch(5)
    assert torch.equal(opt.backward(net.losses(x, y)), twin.backward(twin_net.losses(x, y)))


def test_configuration_errors():
    net = model()
    with pytest.raises(ValueError, match="must be in the wrapped optimizer"):
        fastmtl.MTLOptimizer(torch.optim.SGD(net.heads.parameters(), lr=0.1), shared=net.encoder.parameters())
    for bad in ({"every": 2}, {"diagnostics": True}):
        with pytest.raises(ValueError, match="do not apply"):
            fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "go4align",
                                 shared=net.encoder.parameters(), **bad)


def test_every_k_falls_back_to_a_full_step_when_the_task_count_changes():
    net = model()
    opt = fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "mgda", shared=net.encoder.parameters(),
                               every=4)
    opt.zero_grad()
    opt.backward(net.losses(*batch()))
    opt.step()
    opt.zero_grad()
    opt.backward(net.losses(*batch())[:2])  # two tasks now: new weights, not an error
    assert opt.groups[0].weights.shape == (2,)
