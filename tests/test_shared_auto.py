"""MTLOptimizer(shared="auto"): the shared parameters found from the losses' autograd graphs at
the first backward (engine/autoshare.py), cached, derived again when the number of losses, the
trainable parameters or the mode change.

No tolerance anywhere: with shared="auto" the optimizer must run exactly the operations it runs
with the same parameters given explicitly (same group, same order, same kernels on the same
numbers), so gradients and parameters are compared bit for bit (torch.equal). A wrong set (a head
aggregated, a shared layer left out) changes them by far more than rounding."""

import datetime
import os
import sys
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import fastmtl
from fastmtl.engine.autoshare import reaching_losses

torch.set_flush_denormal(True)  # these tests train


class Net(torch.nn.Module):
    """An encoder shared by three tasks, a middle layer read by tasks 0 and 2 only, one head per
    task, and a layer no task reads."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.encoder = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 5), torch.nn.Tanh())
        self.middle = torch.nn.Linear(5, 5)
        self.heads = torch.nn.ModuleList(torch.nn.Linear(5, 1) for _ in range(3))
        self.unused = torch.nn.Linear(2, 2)
        self.double()

    def losses(self, x, y, tasks=3, middle=False):
        z = self.encoder(x)
        out = []
        for t in range(tasks):
            z_t = self.middle(z) if middle and t in (0, 2) else z
            out.append((self.heads[t](z_t).squeeze(1) - y[:, t]).pow(2).mean())
        return out


def data(seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(12, 4, generator=gen, dtype=torch.float64), torch.randn(12, 3, generator=gen, dtype=torch.float64)


def pair(method="upgrad", shared=lambda net: net.encoder.parameters(), **options):
    """The same model twice: one optimizer with shared='auto', one with the parameters given."""
    nets = Net(), Net()
    opts = [fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9), method,
                                 shared="auto" if auto else shared(net), **options)
            for auto, net in zip((True, False), nets)]
    return nets, opts


def train_together(nets, opts, steps=3, **loss_options):
    """Steps of both; after each backward every .grad must be equal bit for bit."""
    x, y = data()
    for _ in range(steps):
        for net, opt in zip(nets, opts):
            opt.zero_grad()
            opt.backward(net.losses(x, y, **loss_options))
        for (name, p), q in zip(nets[0].named_parameters(), nets[1].parameters()):
            assert (p.grad is None) == (q.grad is None), name
            assert p.grad is None or torch.equal(p.grad, q.grad), name
        for opt in opts:
            opt.step()
    for p, q in zip(*(net.parameters() for net in nets)):
        assert torch.equal(p, q)


# ----- which parameters ------------------------------------------------------------------------
def test_multi_head_model_shares_exactly_the_encoder():
    net = Net()
    opt = fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "upgrad", shared="auto")
    with pytest.raises(RuntimeError, match="determined at the first backward"):
        opt.shared_parameters()
    opt.backward(net.losses(*data()))
    found = opt.shared_parameters()
    assert [id(p) for p in found] == [id(p) for p in net.encoder.parameters()]
    assert all(p.grad is not None for p in net.heads.parameters())  # the heads: their plain gradients
    assert all(p.grad is None for p in list(net.middle.parameters()) + list(net.unused.parameters()))


def test_parameter_reached_by_two_of_three_tasks_is_shared():
    net = Net()
    opt = fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "mgda", shared="auto")
    opt.backward(net.losses(*data(), middle=True))
    expected = list(net.encoder.parameters()) + list(net.middle.parameters())
    assert [id(p) for p in opt.shared_parameters()] == [id(p) for p in expected]


def test_only_the_wrapped_optimizers_parameters_count():
    net = Net()  # the optimizer leaves out the encoder's first layer: it is never a shared parameter
    held = [p for name, p in net.named_parameters() if not name.startswith("encoder.0")]
    opt = fastmtl.MTLOptimizer(torch.optim.SGD(held, lr=0.1), "upgrad", shared="auto")
    opt.backward(net.losses(*data()))
    assert [id(p) for p in opt.shared_parameters()] == [id(p) for p in net.encoder[2].parameters()]


def test_explicit_shared_parameters_are_listed_in_the_optimizers_order():
    net = Net()
    opt = fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "upgrad",
                               shared=list(net.encoder.parameters())[::-1])
    assert [id(p) for p in opt.shared_parameters()] == [id(p) for p in net.encoder.parameters()]


def test_nothing_shared_raises_and_names_what_each_task_reaches():
    heads = [torch.nn.Linear(3, 1).double() for _ in range(2)]
    opt = fastmtl.MTLOptimizer(torch.optim.SGD([p for h in heads for p in h.parameters()], lr=0.1), "upgrad",
                               shared="auto")
    x = torch.randn(5, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"task 0 reaches 2, task 1 reaches 2 of its parameters.*only its own"):
        opt.backward([h(x).pow(2).mean() for h in heads])
    assert all(p.grad is None for h in heads for p in h.parameters())
    with pytest.raises(RuntimeError, match="determined at the first backward"):
        opt.shared_parameters()


def test_one_loss_raises():
    net = Net()
    opt = fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "upgrad", shared="auto")
    with pytest.raises(ValueError, match="two or more task losses reach; backward got 1 loss"):
        opt.backward(net.losses(*data(), tasks=1))


def test_number_of_losses_changes_the_group_is_derived_again():
    net = Net()
    opt = fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "upgrad", shared="auto")
    x, y = data()
    opt.backward(net.losses(x, y, tasks=2, middle=True))  # the middle layer: task 0 alone
    assert [id(p) for p in opt.shared_parameters()] == [id(p) for p in net.encoder.parameters()]
    group = opt.groups[0]
    opt.zero_grad()
    opt.backward(net.losses(x, y, tasks=3, middle=True))  # now tasks 0 and 2
    shared = list(net.encoder.parameters()) + list(net.middle.parameters())
    assert [id(p) for p in opt.shared_parameters()] == [id(p) for p in shared]
    assert opt.groups == [group]  # the same group (and method state), its parameters updated
    grads = [p.grad.clone() for p in net.parameters() if p.grad is not None]
    explicit_net = Net()
    explicit = fastmtl.MTLOptimizer(torch.optim.SGD(explicit_net.parameters(), lr=0.1), "upgrad",
                                    shared=list(explicit_net.encoder.parameters()) + list(explicit_net.middle.parameters()))
    explicit.backward(explicit_net.losses(x, y, tasks=3, middle=True))
    assert all(torch.equal(a, b.grad) for a, b in zip(grads, [p for p in explicit_net.parameters() if p.grad is not None]))


def test_same_forward_is_not_walked_again(monkeypatch):
    from fastmtl import optim

    calls = []
    monkeypatch.setattr(optim, "reaching_losses", lambda *a: calls.append(1) or reaching_losses(*a))
    net = Net()
    opt = fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "upgrad", shared="auto")
    for _ in range(3):
        opt.zero_grad()
        opt.backward(net.losses(*data()))
        opt.step()
    assert calls == [1]


# ----- the same training as the parameters given explicitly ------------------------------------
@pytest.mark.parametrize("method,options", [("upgrad", {}), ("mgda", {}), ("pcgrad", {"shuffle": False}),
                                            ("graddrop", {"generator": "seeded"}), ("sum", {})])
def test_same_gradients_as_explicit_shared(method, options):
    if options.get("generator") == "seeded":
        nets = Net(), Net()
        opts = [fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9), method,
                                     shared="auto" if auto else net.encoder.parameters(),
                                     generator=torch.Generator().manual_seed(5))
                for auto, net in zip((True, False), nets)]
    else:
        nets, opts = pair(method, **options)
    train_together(nets, opts)


def test_same_gradients_every_k():
    nets, opts = pair("mgda", every=2)
    train_together(nets, opts, steps=4)


def test_same_gradients_with_diagnostics():
    nets, opts = pair("upgrad", diagnostics=True)
    train_together(nets, opts, steps=1)
    assert torch.equal(opts[0].last_diagnostics["cosine"], opts[1].last_diagnostics["cosine"])


@pytest.mark.parametrize("method,options", [("cosreg", {}), ("gradnorm", {"n_tasks": 3}), ("uw", {"n_tasks": 3})])
def test_loss_side_methods_get_the_found_parameters(method, options):
    nets, opts = pair(method, **options)
    for opt in opts:  # a method's learnable tensors joined the optimizer at construction, never shared
        assert len(opt.param_groups) == 1 + bool(opt.method.parameters())
    train_together(nets, opts)
    learnable = {id(p) for p in opts[0].method.parameters()}
    assert not learnable & {id(p) for p in opts[0].shared_parameters()}


def test_frozen_parameters_stay_out_until_unfrozen():
    nets, opts = pair("upgrad")
    for net in nets:
        net.encoder[0].requires_grad_(False)
    train_together(nets, opts, steps=2)
    assert [id(p) for p in opts[0].shared_parameters()] == [id(p) for p in nets[0].encoder[2].parameters()]
    assert all(p.grad is None for p in nets[0].encoder[0].parameters())
    for net in nets:
        net.encoder[0].requires_grad_(True)
    train_together(nets, opts, steps=2)  # unfrozen: derived again, the whole encoder
    assert [id(p) for p in opts[0].shared_parameters()] == [id(p) for p in nets[0].encoder.parameters()]


def test_feature_mode():
    """The group is what the representation reaches; the middle layer after z, read by tasks 0
    and 2, stays with the heads (feature mode aggregates z's gradient only)."""
    nets, opts = pair("upgrad")
    x, y = data()
    for _ in range(2):
        for net, opt in zip(nets, opts):
            opt.zero_grad()
            z = opt.features(net.encoder(x))
            opt.backward([(net.heads[t](net.middle(z) if t != 1 else z).squeeze(1) - y[:, t]).pow(2).mean()
                          for t in range(3)])
        for p, q in zip(*(net.parameters() for net in nets)):
            assert (p.grad is None and q.grad is None) or torch.equal(p.grad, q.grad)
        for opt in opts:
            opt.step()
    assert [id(p) for p in opts[0].shared_parameters()] == [id(p) for p in nets[0].encoder.parameters()]
    opts[0].zero_grad()  # parameter mode on the same optimizer: derived again, the middle layer joins
    opts[0].backward(nets[0].losses(x, y, middle=True))
    assert len(opts[0].shared_parameters()) == 6


def test_feature_mode_without_the_leaf_raises():
    net = Net()
    opt = fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "upgrad", shared="auto")
    x, _ = data()
    opt.features(net.encoder(x))
    with pytest.raises(ValueError, match="through the tensor returned by opt.features"):
        opt.backward([net.heads[t](x.new_ones(12, 5)).sum() for t in range(3)])


# ----- state --------------------------------------------------------------------------------
def test_state_dict_round_trip():
    """GradVac keeps targets across steps (and draws its task order from the global generator,
    seeded per step here): 2 steps, save, a fresh model and optimizer with
    shared='auto' load it (the group and the method's state, before any backward), 1 step: the
    same parameters as 3 steps in one go."""
    x, y = data()

    def run(net, opt, steps, start=0):
        for step in range(start, start + steps):
            torch.manual_seed(step)  # GradVac's task order: the same draws in both runs
            opt.zero_grad()
            opt.backward(net.losses(x, y))
            opt.step()

    straight = Net()
    run(straight, fastmtl.MTLOptimizer(torch.optim.Adam(straight.parameters(), lr=0.01), "gradvac", shared="auto"), 3)
    first = Net()
    first_opt = fastmtl.MTLOptimizer(torch.optim.Adam(first.parameters(), lr=0.01), "gradvac", shared="auto")
    run(first, first_opt, 2)
    saved = first_opt.state_dict()
    assert saved["fastmtl"]["auto"] == {"indices": [0, 1, 2, 3]}
    resumed = Net(seed=4)
    resumed.load_state_dict(first.state_dict())
    resumed_opt = fastmtl.MTLOptimizer(torch.optim.Adam(resumed.parameters(), lr=0.01), "gradvac", shared="auto")
    resumed_opt.load_state_dict(saved)
    assert [id(p) for p in resumed_opt.shared_parameters()] == [id(p) for p in resumed.encoder.parameters()]
    assert resumed_opt.groups[0].method.state_dict().keys() == first_opt.groups[0].method.state_dict().keys()
    run(resumed, resumed_opt, 1, start=2)
    for p, q in zip(resumed.parameters(), straight.parameters()):
        assert torch.equal(p, q)


def test_state_dict_before_the_first_backward_and_across_kinds():
    net = Net()
    fresh = fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "uw", shared="auto", n_tasks=3)
    saved = fresh.state_dict()
    assert saved["fastmtl"]["groups"] == [] and saved["fastmtl"]["auto"]["indices"] is None
    trained = fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "uw", shared="auto", n_tasks=3)
    trained.backward(net.losses(*data()))
    trained.step()
    trained.load_state_dict(saved)  # back to before the first backward: no group, the initial log-variances
    assert trained.groups == []
    assert torch.equal(trained.method.log_variances, fresh.method.log_variances)
    trained.backward(net.losses(*data()))
    assert len(trained.shared_parameters()) == 4
    # A state with explicit groups does not say which parameters: refused; the other way it loads.
    explicit = fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "uw", shared=net.encoder,
                                    n_tasks=3)
    with pytest.raises(ValueError, match="shared parameters given explicitly"):
        trained.load_state_dict(explicit.state_dict())
    explicit.load_state_dict(trained.state_dict())
    bad = trained.state_dict()
    bad["fastmtl"]["auto"]["indices"] = [0, 99]
    with pytest.raises(ValueError, match="increasing positions"):
        trained.load_state_dict(bad)
    assert len(trained.shared_parameters()) == 4  # all or nothing


# ----- what cannot combine with it --------------------------------------------------------------
def test_refusals():
    net = Net()
    sgd = torch.optim.SGD(net.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="one name accepted is 'auto'"):
        fastmtl.MTLOptimizer(sgd, "upgrad", shared="Auto")
    with pytest.raises(ValueError, match="cannot be one of several groups"):
        fastmtl.MTLOptimizer(sgd, "upgrad", shared=[{"params": "auto"}, {"params": net.middle.parameters()}])
    with pytest.raises(ValueError, match="needs a Gram-space"):
        fastmtl.MTLOptimizer(sgd, "graddrop", shared="auto", every=2)
    opt = fastmtl.MTLOptimizer(sgd, "upgrad", shared="auto")
    for call in (lambda: opt.add_shared_group(net.middle.parameters(), tasks=[0, 2]),
                 lambda: opt.branch(list(net.encoder[2].parameters()),
                                    [([torch.nn.Parameter(p.detach().clone()) for p in net.encoder[2].parameters()],
                                      [0, 1, 2])])):
        with pytest.raises(ValueError, match="determined at the first backward; call"):
            call()
    with pytest.raises(ValueError, match="parameters' gradients only"):
        fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "excess_mtl", shared="auto").features(
            net.encoder(data()[0]))


def test_add_shared_group_after_the_first_backward_makes_the_groups_explicit():
    net = Net()
    opt = fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "upgrad", shared="auto")
    x, y = data()
    opt.backward(net.losses(x, y, middle=True))
    opt.add_shared_group(net.middle.parameters(), tasks=[0, 2], method="mgda")
    assert not opt.auto and [g.tasks for g in opt.groups] == [None, (0, 2)]
    opt.zero_grad()
    opt.backward(net.losses(x, y, tasks=3, middle=True))  # not derived again: the two groups stay
    assert [g.tasks for g in opt.groups] == [None, (0, 2)]
    assert opt.state_dict()["fastmtl"]["auto"] is None


# ----- the graph walk ---------------------------------------------------------------------------
def test_walk_deep_graph_without_recursion():
    """10 000 chained operations: far past Python's recursion limit."""
    weights = [torch.nn.Parameter(torch.tensor(1.0 + 1e-4 * i)) for i in range(5000)]
    h = torch.ones(3)
    for w in weights:
        h = torch.tanh(h * w)
    lone = torch.nn.Parameter(torch.ones(()))
    masks = reaching_losses([h.sum(), h.mean() * lone, lone * 2], weights + [lone, torch.nn.Parameter(torch.ones(()))])
    assert masks[:5000] == [0b011] * 5000 and masks[5000:] == [0b110, 0]


def test_walk_roots_that_are_leaves_or_feed_each_other():
    a, b = torch.nn.Parameter(torch.ones(())), torch.nn.Parameter(torch.ones(()))
    first = a * 3
    second = first * b  # a root inside another root's graph
    assert reaching_losses([first, second, a], [a, b]) == [0b111, 0b010]


# ----- several processes ------------------------------------------------------------------------
def _worker(rank: int, size: int, store_path: str, results_path: str) -> None:
    """Each rank: shared='auto' and the encoder given, on its shard; then a forward that reaches a
    different layer on rank 1 (must raise on every rank, no hang)."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store_path, size), rank=rank, world_size=size,
                            timeout=datetime.timedelta(seconds=60))
    x, y = data()
    shard = slice(rank * 12 // size, (rank + 1) * 12 // size)
    nets = Net(seed=rank), Net(seed=rank)  # different on each rank: rank 0's values are broadcast
    opts = [fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "mgda", process_group=dist.group.WORLD,
                                 shared="auto" if auto else net.encoder.parameters())
            for auto, net in zip((True, False), nets)]
    for _ in range(3):
        for net, opt in zip(nets, opts):
            opt.zero_grad()
            opt.backward(net.losses(x[shard], y[shard]))
            opt.step()
    mine = torch.cat([p.detach().reshape(-1) for p in nets[0].parameters()])
    gathered = [torch.empty_like(mine) for _ in range(size)]
    dist.all_gather(gathered, mine)
    result = {"equal": all(torch.equal(p, q) for p, q in zip(*(net.parameters() for net in nets))),
              "same": all(torch.equal(g, mine) for g in gathered), "raised": False}
    net = Net()
    opt = fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "mgda", shared="auto",
                               process_group=dist.group.WORLD)
    try:
        opt.backward(net.losses(x[shard], y[shard], middle=rank == 1))
    except ValueError as error:
        result["raised"] = "differs between the processes" in str(error)
    torch.save(result, f"{results_path}.{rank}")
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo backend")
def test_process_group_two_ranks():
    size = 2
    with tempfile.TemporaryDirectory() as folder:
        store, results = os.path.join(folder, "store"), os.path.join(folder, "results")
        # The spawned ranks import this file as a module: its folder on their path.
        sys.path.insert(0, os.path.dirname(__file__))
        try:
            context = mp.start_processes(_worker, args=(size, store, results), nprocs=size, join=False,
                                         start_method="spawn")
            try:
                while not context.join(timeout=120):
                    pass
            finally:
                for process in context.processes:
                    if process.is_alive():
                        process.kill()
        finally:
            sys.path.remove(os.path.dirname(__file__))
        ranks = [torch.load(f"{results}.{rank}") for rank in range(size)]
    for result in ranks:
        assert result == {"equal": True, "same": True, "raised": True}, result


def test_a_task_reaching_none_of_the_shared_parameters_is_refused():
    # Tasks 0 and 1 share the encoder, task 2 has its own: a zero row of G for task 2 would make
    # MGDA's minimum-norm point 0 and stop the encoder; refused, naming the task.
    net, other = Net(), torch.nn.Linear(4, 5).double()
    opt = fastmtl.MTLOptimizer(torch.optim.SGD([*net.parameters(), *other.parameters()], lr=0.1), "mgda", shared="auto")
    x, y = data()
    z = net.encoder(x)
    losses = [(net.heads[t](z).squeeze(1) - y[:, t]).pow(2).mean() for t in range(2)]
    losses.append((net.heads[2](torch.tanh(other(x))).squeeze(1) - y[:, 2]).pow(2).mean())
    with pytest.raises(ValueError, match=r"task\(s\) \[2\] reach none"):
        opt.backward(losses)


def test_reentrant_checkpointing_is_refused_with_advice():
    from torch.utils.checkpoint import checkpoint

    net = Net()
    opt = fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "pcgrad", shared="auto")
    x, y = data()
    z = checkpoint(net.encoder, x.requires_grad_(), use_reentrant=True)
    with pytest.raises(ValueError, match="use_reentrant=False"):
        opt.backward([(head(z).squeeze(1) - y[:, t]).pow(2).mean() for t, head in enumerate(net.heads)])
    # The non-reentrant form keeps the encoder in the graph: found as with explicit parameters.
    z = checkpoint(net.encoder, x, use_reentrant=False)
    opt.backward([(head(z).squeeze(1) - y[:, t]).pow(2).mean() for t, head in enumerate(net.heads)])
    assert [id(p) for p in opt.shared_parameters()] == [id(p) for p in net.encoder.parameters()]


def test_replacing_a_parameter_in_the_optimizer_derives_the_group_again():
    net = Net()
    opt = fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "sum", shared="auto")
    x, y = data()
    opt.backward(net.losses(x, y))
    fresh = torch.nn.Parameter(net.encoder[0].weight.detach().clone())
    group = opt.optimizer.param_groups[0]["params"]
    group[group.index(net.encoder[0].weight)] = fresh
    net.encoder[0].weight = fresh
    opt.zero_grad()
    opt.backward(net.losses(x, y))
    assert any(p is fresh for p in opt.shared_parameters())
