"""Task-subset groups of shared parameters: each group's G holds only the rows of its tasks and
is combined by its own method; groups added during training (a branch created mid-run).
Checked against a hand-written per-group step (torch.autograd.grad per task, the paper's
per-vector PCGrad, torchjd's MGDA, the plain sum)."""

import copy

import pytest
import torch
from oracles import pcgrad_per_vector

import fastmtl

torch.set_flush_denormal(True)  # these tests train


def mgda_oracle(G):
    torchjd = pytest.importorskip("torchjd.aggregation")
    return torchjd.MGDA()(G)


class Branched(torch.nn.Module):
    """A trunk shared by three tasks, a branch for tasks 0 and 2, a branch for task 1."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.trunk = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh())
        self.branch_a = torch.nn.Linear(6, 5)
        self.branch_b = torch.nn.Linear(6, 5)
        self.heads = torch.nn.ModuleList([torch.nn.Linear(5, 1) for _ in range(3)])

    def losses(self, x, y):
        h = self.trunk(x)
        z = [self.branch_a(h), self.branch_b(h), self.branch_a(h)]
        # Task 1 also reads branch_a a little: a group that task 1 does not share must ignore it.
        z[1] = z[1] + 0.1 * self.branch_a(h)
        return [((head(z_t).squeeze(1) - y[:, t]) ** 2).mean() for t, (head, z_t) in enumerate(zip(self.heads, z))]


def data(seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(16, 4, generator=gen, dtype=torch.float64), torch.randn(16, 3, generator=gen, dtype=torch.float64)


def task_rows(losses, params, tasks):
    return torch.stack([torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(
        torch.autograd.grad(losses[t], params, retain_graph=True, allow_unused=True), params)]) for t in tasks])


def hand_written_step(net, x, y, lr, groups):
    """groups: [(params, tasks, combine)] -> SGD with each group's combined gradient, plain heads."""
    losses = net.losses(x, y)
    updates = [(params, combine(task_rows(losses, params, tasks))) for params, tasks, combine in groups]
    heads = list(net.heads.parameters())
    head_grads = torch.autograd.grad(sum(losses), heads)
    with torch.no_grad():
        for params, direction in updates:
            for p, g in zip(params, direction.split([p.numel() for p in params])):
                p -= lr * g.view_as(p)
        for p, g in zip(heads, head_grads):
            p -= lr * g


def groups_of(net):
    return [(list(net.trunk.parameters()), [0, 1, 2], lambda G: pcgrad_per_vector(G)),
            (list(net.branch_a.parameters()), [0, 2], mgda_oracle),
            (list(net.branch_b.parameters()), [1], lambda G: G.sum(0))]


def test_each_group_combines_only_its_tasks_with_its_method():
    net, reference = Branched().double(), Branched().double()
    opt = fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "pcgrad", shuffle=False, shared=[
        {"params": net.trunk.parameters()},
        {"params": net.branch_a.parameters(), "tasks": [0, 2], "method": "mgda"},
        {"params": net.branch_b.parameters(), "tasks": [1], "method": "sum"},
    ])
    for step in range(3):
        x, y = data(step)
        opt.zero_grad()
        combined = opt.backward(net.losses(x, y))
        opt.step()
        hand_written_step(reference, x, y, 0.1, groups_of(reference))
        for (name, a), b in zip(net.named_parameters(), reference.parameters()):
            assert torch.allclose(a, b, atol=1e-12), (step, name)
    assert len(combined) == 3 and combined[1].shape == (6 * 5 + 5,)


def test_a_branch_added_during_training():
    net, reference = Branched().double(), Branched().double()
    # Before branching: branch_a is shared by every task (branch_b unused by the optimizer's groups).
    opt = fastmtl.MTLOptimizer(torch.optim.SGD([*net.trunk.parameters(), *net.branch_a.parameters(),
                                                *net.heads.parameters()], lr=0.1, momentum=0.5), "pcgrad",
                               shuffle=False, shared=[{"params": net.trunk.parameters()},
                                                      {"params": net.branch_a.parameters()}])
    x, y = data(0)
    opt.zero_grad()
    opt.backward(net.losses(x, y))
    opt.step()
    momentum = {id(p): opt.state[p]["momentum_buffer"].clone() for p in net.branch_a.parameters()}
    # Branch: task 1 gets its own copy (new parameters), tasks 0 and 2 keep branch_a and its state.
    net.branch_b.load_state_dict(net.branch_a.state_dict())
    new = opt.add_shared_group(net.branch_b.parameters(), tasks=[1], method="sum", param_group={"lr": 0.05})
    opt.add_shared_group(net.branch_a.parameters(), tasks=[0, 2], method="mgda")
    assert [g.tasks for g in opt.groups] == [None, (1,), (0, 2)] and new.method.name == "sum"
    assert opt.param_groups[-1]["lr"] == 0.05 and len(opt.param_groups) == 2
    for p in net.branch_a.parameters():
        assert torch.equal(opt.state[p]["momentum_buffer"], momentum[id(p)])
    reference.load_state_dict(net.state_dict())
    buffers = [opt.state[p]["momentum_buffer"].clone() if p in opt.state else None for p in net.parameters()]
    x, y = data(1)
    opt.zero_grad()
    opt.backward(net.losses(x, y))
    opt.step()
    # By hand: momentum 0.5 on the old parameters; the copy's first momentum step is plain SGD at lr 0.05.
    losses = reference.losses(x, y)
    directions = {}
    for params, tasks, combine in groups_of(reference):
        for p, g in zip(params, combine(task_rows(losses, params, tasks)).split([p.numel() for p in params])):
            directions[id(p)] = g.view_as(p)
    heads = list(reference.heads.parameters())
    for p, g in zip(heads, torch.autograd.grad(sum(losses), heads)):
        directions[id(p)] = g
    with torch.no_grad():
        for p, buffer in zip(reference.parameters(), buffers):
            if buffer is None:
                p -= 0.05 * directions[id(p)]
            else:
                p -= 0.1 * (0.5 * buffer + directions[id(p)])
    for (name, a), b in zip(net.named_parameters(), reference.parameters()):
        assert torch.allclose(a, b, atol=1e-12), name


def test_group_configuration_errors():
    net = Branched()
    sgd = torch.optim.SGD(net.parameters(), lr=0.1)
    opt = fastmtl.MTLOptimizer(sgd, shared=[{"params": net.trunk.parameters(), "tasks": [0, 3]}])
    x, y = data(0)
    with pytest.raises(ValueError, match="task 3"):
        opt.backward(net.losses(x.float(), y.float()))
    with pytest.raises(ValueError, match="tasks"):
        fastmtl.MTLOptimizer(sgd, shared=[{"params": net.trunk.parameters(), "tasks": [1, 1]}])
    with pytest.raises(ValueError, match="params"):
        fastmtl.MTLOptimizer(sgd, shared=[{"tasks": [1]}])
    with pytest.raises(ValueError, match="loss-side"):
        fastmtl.MTLOptimizer(sgd, "cosreg", shared=[{"params": net.trunk.parameters()},
                                                    {"params": net.branch_a.parameters(), "tasks": [0]}])
    with pytest.raises(ValueError, match="every"):
        fastmtl.MTLOptimizer(sgd, "pcgrad", every=2, shared=[{"params": net.trunk.parameters()},
                                                             {"params": net.branch_a.parameters(),
                                                              "method": "graddrop"}])
    grouped = fastmtl.MTLOptimizer(sgd, shared=[{"params": net.trunk.parameters()},
                                                {"params": net.branch_a.parameters(), "tasks": [0]}])
    with pytest.raises(ValueError, match="one shared group"):
        grouped.features(net.trunk(x.float()))
    with pytest.raises(ValueError, match="wrapped optimizer"):
        fastmtl.MTLOptimizer(torch.optim.SGD(net.heads.parameters(), lr=0.1), shared=[{"params": net.trunk}])


def test_state_dict_needs_the_same_groups():
    net = Branched().double()
    opt = fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "gradvac", shared=[
        {"params": net.trunk.parameters()}, {"params": net.branch_a.parameters(), "tasks": [0, 2]}])
    opt.backward(net.losses(*data(0)))
    saved = copy.deepcopy(opt.state_dict())
    assert [g["tasks"] for g in saved["fastmtl"]["groups"]] == [None, (0, 2)]
    assert saved["fastmtl"]["groups"][1]["method_state"]["targets"].shape == (2, 2)
    single = fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "gradvac", shared=net.trunk.parameters())
    with pytest.raises(ValueError, match="groups"):
        single.load_state_dict(saved)


def two_group_optimizer(net, method="pcgrad", **options):
    return fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), method, shared=[
        {"params": net.trunk.parameters()},
        {"params": net.branch_a.parameters(), "tasks": [0, 2]},
        {"params": net.branch_b.parameters(), "tasks": [1], "method": "sum"}], **options)


def test_groups_inherit_the_optimizers_options_and_get_their_own_state():
    net = Branched().double()
    opt = fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "pcgrad", shuffle=False, impl="torch",
                               shared=[{"params": net.trunk.parameters()},
                                       {"params": net.branch_a.parameters(), "reduction": "mean"}])
    assert opt.groups[0].method is opt.method
    assert opt.groups[1].method.options == {"impl": "torch", "reduction": "mean", "shuffle": False, "generator": None}
    gradvac = fastmtl.methods.create("gradvac")
    with pytest.raises(ValueError, match="serves another group"):
        fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), gradvac, shared=[
            {"params": net.trunk.parameters()}, {"params": net.branch_a.parameters(), "method": gradvac}])
    gv = fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), "gradvac", shared=[
        {"params": net.trunk.parameters()}, {"params": net.branch_a.parameters(), "tasks": [0, 2]}])
    assert gv.groups[0].method is not gv.groups[1].method  # each group its own targets (3x3 and 2x2)
    gv.backward(net.losses(*data(0)))
    assert gv.groups[0].method.targets.shape == (3, 3) and gv.groups[1].method.targets.shape == (2, 2)


def test_every_k_with_groups_equals_the_cached_weights_times_g():
    net = Branched().double()
    opt = two_group_optimizer(net, "mgda", every=3)
    opt.zero_grad()
    opt.backward(net.losses(*data(0)))
    opt.step()
    weights = [group.weights.clone() for group in opt.groups]
    x, y = data(1)
    losses = net.losses(x, y)
    expected = [w.to(torch.float64) @ task_rows(losses, params, tasks)
                for w, (params, tasks, _) in zip(weights, groups_of(net))]
    opt.zero_grad()
    combined = opt.backward(net.losses(x, y))  # a reuse step: one weighted backward per group
    assert opt.last_diagnostics is None
    for got, want, group in zip(combined, expected, opt.groups):
        assert torch.allclose(got, want, atol=1e-12)
        assert torch.equal(torch.cat([p.grad.reshape(-1) for p in group.params]), got)


def test_state_dict_round_trip_after_a_branch_is_added():
    net = Branched().double()
    opt = fastmtl.MTLOptimizer(torch.optim.SGD([*net.trunk.parameters(), *net.branch_a.parameters(),
                                                *net.heads.parameters()], lr=0.1), "gradvac", shuffle=False,
                               shared=[{"params": net.trunk.parameters()}, {"params": net.branch_a.parameters()}])
    opt.backward(net.losses(*data(0)))
    opt.step()
    opt.add_shared_group(net.branch_b.parameters(), tasks=[1])
    opt.add_shared_group(net.branch_a.parameters(), tasks=[0, 2])
    for step in (1, 2):
        opt.zero_grad()
        opt.backward(net.losses(*data(step)))
        opt.step()
    twin_net = copy.deepcopy(net)
    twin = fastmtl.MTLOptimizer(torch.optim.SGD([*twin_net.trunk.parameters(), *twin_net.branch_a.parameters(),
                                                 *twin_net.heads.parameters()], lr=0.1), "gradvac", shuffle=False,
                                shared=[{"params": twin_net.trunk.parameters()},
                                        {"params": twin_net.branch_a.parameters()}])
    twin.add_shared_group(twin_net.branch_b.parameters(), tasks=[1])
    twin.add_shared_group(twin_net.branch_a.parameters(), tasks=[0, 2])
    twin.load_state_dict(copy.deepcopy(opt.state_dict()))
    for m, o in ((net, opt), (twin_net, twin)):
        o.zero_grad()
        o.backward(m.losses(*data(3)))
        o.step()
    for a, b in zip(net.parameters(), twin_net.parameters()):
        assert torch.equal(a, b)


def test_a_group_frozen_as_a_whole_takes_no_part():
    net = Branched().double()
    opt = two_group_optimizer(net, "mgda", every=2)
    for p in net.branch_b.parameters():
        p.requires_grad_(False)
    for step in range(3):
        opt.zero_grad()
        combined = opt.backward(net.losses(*data(step)))
        opt.step()
        assert len(combined) == 3 and combined[2] is None
        assert all(p.grad is None for p in net.branch_b.parameters())
    assert opt.groups[0].weights is not None  # every=2 still reuses the trainable groups' weights


def test_more_group_configuration_errors():
    net = Branched()
    sgd = torch.optim.SGD(net.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="loss-side"):
        fastmtl.MTLOptimizer(sgd, "pcgrad", shared=[{"params": net.trunk.parameters(), "method": "go4align"}])
    with pytest.raises(ValueError, match="earlier group"):
        fastmtl.MTLOptimizer(sgd, shared=[{"params": net.trunk.parameters()}, {"params": net.trunk[0].parameters()}])
    opt = fastmtl.MTLOptimizer(sgd, shared=[{"params": net.trunk.parameters()}])
    with pytest.raises(ValueError, match="param_group"):
        opt.add_shared_group(net.branch_a.parameters(), tasks=[0], param_group={"lr": 1.0})
