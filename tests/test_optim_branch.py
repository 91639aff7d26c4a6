"""MTLOptimizer.branch: shared parameters replaced by per-branch copies (FairBranch's branch
formation) with the optimizer state of everything else kept, checked against its documented
contract; every check runs before anything changes."""

import pytest
import torch
from conftest import UNIT_ROUNDOFF, assert_within, gamma
from torch import nn

import fastmtl

torch.set_flush_denormal(True)  # these tests train

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (tests/conftest.py)


class Net(nn.Module):
    """A shared trunk, a shared layer that gets branched, three heads."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Linear(4, 5)
        self.layer = nn.Linear(5, 5)
        self.copies = nn.ModuleList([nn.Linear(5, 5), nn.Linear(5, 5)])
        self.heads = nn.ModuleList([nn.Linear(5, 1) for _ in range(3)])
        self.route = None  # None: every task through self.layer; else task -> copy index

    def losses(self, x, y):
        h = torch.tanh(self.trunk(x))
        out = []
        for t, head in enumerate(self.heads):
            layer = self.layer if self.route is None else self.copies[self.route[t]]
            out.append(((head(torch.tanh(layer(h))).squeeze(1) - y[:, t]) ** 2).mean())
        return out


def data(seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(12, 4, generator=gen, dtype=F64), torch.randn(12, 3, generator=gen, dtype=F64)


def setup(method="pcgrad", inner="adamw", **options):
    net = Net().double()
    groups = [{"params": [*net.trunk.parameters()], "lr": 0.01},
              {"params": [*net.layer.parameters(), *net.heads.parameters()], "lr": 0.02, "weight_decay": 0.0}]
    wrapped = torch.optim.AdamW(groups) if inner == "adamw" else torch.optim.SGD(groups, lr=0.1)
    if method == "pcgrad":
        options.setdefault("shuffle", False)
    opt = fastmtl.MTLOptimizer(wrapped, method, shared=[{"params": net.trunk.parameters()},
                                                        {"params": net.layer.parameters()}], **options)
    opt.zero_grad()
    opt.backward(net.losses(*data(0)))
    opt.step()
    return net, opt


def branches_of(net):
    with torch.no_grad():
        for c in net.copies:
            c.load_state_dict(net.layer.state_dict())
    return [(list(net.copies[0].parameters()), [0, 2]), (list(net.copies[1].parameters()), [1])]


def snapshot(opt):
    """Everything branch may change: the param groups' lists, the state's keys and objects, the groups."""
    return ([[id(p) for p in g["params"]] for g in opt.param_groups],
            {id(p): (id(s), {k: id(v) for k, v in s.items()}) for p, s in opt.state.items()},
            [([id(p) for p in g.params], g.tasks, id(g.method)) for g in opt.groups])


def test_branch_contract():
    net, opt = setup()
    kept = [*net.trunk.parameters(), *net.heads.parameters()]
    before = {id(p): (opt.state[p], {k: v.clone() for k, v in opt.state[p].items()}) for p in kept}
    old = list(net.layer.parameters())
    added = opt.branch(old, branches_of(net))
    copies = [list(c.parameters()) for c in net.copies]
    # The copies replace the old parameters in their param group (lr 0.02), with no state; the old
    # ones are gone from the param groups and the state.
    group = opt.param_groups[1]
    assert group["lr"] == 0.02 and len(opt.param_groups) == 2
    assert all(p is not q for q in old for g in opt.param_groups for p in g["params"])
    assert all(q not in opt.state for q in old)
    for c in copies:
        for p in c:
            assert any(p is q for q in group["params"]) and p not in opt.state
    assert len(group["params"]) == 2 * 2 + 6
    # Every other parameter keeps its state: the same objects, the same values.
    for p in kept:
        state, values = before[id(p)]
        assert opt.state[p] is state and all(torch.equal(state[k], values[k]) for k in values)
    # The shared groups: the trunk, then one per branch with its tasks and its own method state.
    assert [g.tasks for g in opt.groups] == [None, (0, 2), (1,)]
    assert [[id(p) for p in g.params] for g in opt.groups[1:]] == [[id(p) for p in c] for c in copies]
    assert added == opt.groups[1:]
    assert all(g.method.name == "pcgrad" for g in added)
    assert len({id(g.method) for g in opt.groups}) == 3
    # Training goes on: each copy gets the gradients of its tasks only, and AdamW state from now on.
    net.route = [0, 1, 0]
    opt.zero_grad()
    opt.backward(net.losses(*data(1)))
    opt.step()
    assert all(int(opt.state[p]["step"]) == 1 for c in copies for p in c)
    assert int(opt.state[kept[0]]["step"]) == 2


def test_branch_method_and_options():
    net, opt = setup()
    added = opt.branch(list(net.layer.parameters()), branches_of(net), method="sum")
    assert [g.method.name for g in added] == ["sum", "sum"] and added[0].method is not added[1].method
    net, opt = setup()
    added = opt.branch(list(net.layer.parameters()), branches_of(net), reduction="mean")
    assert all(g.method.name == "pcgrad" and g.method.options["reduction"] == "mean" for g in added)
    assert all(g.method.options["shuffle"] is False for g in added)  # the optimizer's options, then these


def test_branched_gradients_are_each_branchs_own():
    # With method "sum": each copy's gradient is the sum of its tasks' per-task gradients only.
    net, opt = setup(method="sum", inner="sgd")
    opt.branch(list(net.layer.parameters()), branches_of(net))
    net.route = [0, 1, 0]
    losses = net.losses(*data(2))
    expected = []
    for copy, tasks in zip(net.copies, [(0, 2), (1,)]):
        params = list(copy.parameters())
        rows = [torch.autograd.grad(losses[t], params, retain_graph=True) for t in tasks]
        expected.append([(sum(r[k] for r in rows), sum(r[k].abs() for r in rows)) for k in range(len(params))])
    opt.zero_grad()
    opt.backward(losses)
    for copy, grads in zip(net.copies, expected):
        for p, (g, mass) in zip(copy.parameters(), grads):
            # Two sums of the same (at most two) float64 rows, in any order: γ_2 Σ |rows| each.
            assert_within(p.grad, g, 2 * gamma(2, F64) * mass, "copy")
    assert not torch.equal(net.copies[0].weight.grad, net.copies[1].weight.grad)


def test_an_lr_scheduler_created_before_branching_steps_the_copies():
    net, opt = setup(inner="sgd")
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    opt.zero_grad()
    opt.backward(net.losses(*data(3)))
    opt.step()
    scheduler.step()
    assert opt.param_groups[1]["lr"] == 0.01
    opt.branch(list(net.layer.parameters()), branches_of(net))
    net.route = [0, 1, 0]
    for expected_lr in (0.01, 0.005):
        copies = [p for c in net.copies for p in c.parameters()]
        before = [p.detach().clone() for p in copies]
        opt.zero_grad()
        opt.backward(net.losses(*data(3)))
        grads = [p.grad.clone() for p in copies]
        opt.step()
        for p, b, g in zip(copies, before, grads):
            # SGD: p - lr g, two roundings (the product and the difference).
            assert_within(p, b - expected_lr * g, 2 * UNIT_ROUNDOFF[F64] * (b.abs() + expected_lr * g.abs()), "sgd")
            assert not torch.equal(p, b)
        scheduler.step()
        assert opt.param_groups[1]["lr"] == expected_lr / 2


def test_branch_errors_change_nothing():
    net, opt = setup()
    old = list(net.layer.parameters())
    good = branches_of(net)
    wrong_shape = [nn.Parameter(torch.zeros(5, 4, dtype=F64)), nn.Parameter(torch.zeros(5, dtype=F64))]
    wrong_dtype = [nn.Parameter(torch.zeros(5, 5)), nn.Parameter(torch.zeros(5))]
    outsider = [nn.Parameter(torch.zeros(5, 5, dtype=F64)), nn.Parameter(torch.zeros(5, dtype=F64))]
    cases = [
        (old, [good[0], (wrong_shape, [1])], ValueError, "shape"),
        (old, [good[0], (wrong_dtype, [1])], ValueError, "dtype"),
        (old, [good[0], (good[1][0][:1], [1])], ValueError, "one to one"),
        (old, [good[0], (good[1][0], [2])], ValueError, "no task in two"),
        (old, [good[0], (good[1][0], None)], ValueError, "name the tasks"),
        (old, [good[0], (good[0][0], [1])], ValueError, "holds already"),
        (old, [good[0], (old, [1])], ValueError, "holds already"),
        (outsider, good, ValueError, "not in the wrapped optimizer"),
        (old, [], ValueError, "at least one"),
        (old, good, ValueError, "Unknown|unknown|method"),
        ([], good, ValueError, "at least one parameter"),
    ]
    for index, (params, branches, error, match) in enumerate(cases):
        before = snapshot(opt)
        kwargs = {"method": "no-such-method"} if index == 9 else {}
        with pytest.raises(error, match=match):
            opt.branch(params, branches, **kwargs)
        assert snapshot(opt) == before, index
    # A method object already serving a group; a loss-side method.
    before = snapshot(opt)
    with pytest.raises(ValueError, match="serves another group"):
        opt.branch(old, good, method=opt.groups[0].method)
    assert snapshot(opt) == before
    with pytest.raises(ValueError, match="loss-side"):
        opt.branch(old, good, method="cosreg")
    assert snapshot(opt) == before
    # A copy given twice across branches (the same parameter standing in for two branches).
    with pytest.raises(ValueError, match="holds already"):
        opt.branch(old, [good[0], (good[0][0], [1])])
    assert snapshot(opt) == before
    # And the good call still works afterwards.
    opt.branch(old, good)
    assert [g.tasks for g in opt.groups] == [None, (0, 2), (1,)]
