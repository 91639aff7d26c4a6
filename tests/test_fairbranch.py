"""The FairBranch model (Roy et al. 2024, Algorithm 1): forward through the branches, the
branching checks (CKA between the groups' exclusive parameters, pair_tasks or clustering), the
optimizer's state across a branching, and the training step (λ-weighted fairness losses, FBGrad,
accuracy losses) against a hand-written step built from the per-vector oracles (tests/oracles.py)."""

import io

import pytest
import torch
from conftest import UNIT_ROUNDOFF, assert_within, gamma, pcgrad_coefficients, pcgrad_error_bound, \
    pcgrad_per_vector_error_bound
from oracles import fbgrad_per_vector, linear_cka_direct, pair_tasks_brute, pcgrad_per_vector
from test_branching_similarity import cka_bound
from test_fbgrad import decision_error, decision_margin, row_bounds
from torch import nn
from torch.nn import functional as F

import fastmtl
from fastmtl import FairBranch
from fastmtl.branching import BranchEvent

torch.set_flush_denormal(True)  # these tests train


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (tests/conftest.py)

F64 = torch.float64
U64 = UNIT_ROUNDOFF[F64]
N, D_IN, D = 24, 5, 6


def make_trunk():
    return [nn.Linear(D_IN, D)] + [nn.Sequential(nn.Linear(D, D), nn.Tanh()) for _ in range(3)]


def build(T=4, seed=0, similar=((0, 2),), **options) -> FairBranch:
    """Four trunk layers (a Linear, then three Linear + Tanh blocks) and T two-way heads; the heads
    in each pair of ``similar`` start nearly equal (CKA close to 1), the others at random."""
    torch.manual_seed(seed)
    trunk = make_trunk()
    heads = [nn.Linear(D, 2) for _ in range(T)]
    with torch.no_grad():
        for a, b in similar:
            heads[b].weight.copy_(heads[a].weight + 0.02 * torch.randn_like(heads[a].weight))
    return FairBranch(trunk, heads, **options).double()


def data(seed, T=4):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D_IN, generator=gen, dtype=F64)
    y = torch.randint(0, 2, (N, T), generator=gen)
    if T > 2:
        y[:, 2] = 1 - y[:, 0]  # task 2 is task 0's opposite: the fairness gradients of their heads conflict
    s = torch.randint(0, 2, (N,), generator=gen)
    return x, y, s


def losses(fb, x, y, s):
    outs = fb(x)
    return ([F.cross_entropy(o, y[:, t]) for t, o in enumerate(outs)],
            [fastmtl.fairness_loss(o, y[:, t], s, num_groups=2) for t, o in enumerate(outs)])


def adamw(fb):
    return torch.optim.AdamW([{"params": [p for layer in fb.layers for p in layer.parameters()], "lr": 1e-2},
                              {"params": list(fb.heads.parameters()), "lr": 1e-3, "weight_decay": 0.0}])


def train_step(fb, opt, batch):
    accuracy, fairness = losses(fb, *batch)
    opt.zero_grad()
    lambdas = fb.backward(accuracy, fairness)
    opt.step()
    return lambdas, fb.after_step()


def heads_similarity(fb) -> torch.Tensor:
    heads = [head.weight.T for head in fb.heads]
    return torch.tensor([[float(linear_cka_direct(a, b)) for b in heads] for a in heads], dtype=F64)


def similarity_bound(thetas) -> float:
    return max(cka_bound(a, b, F64) for a in thetas for b in thetas)


def assert_clear(S: torch.Tensor, tau: float, bound: float) -> None:
    """The greedy decisions on S are the same for every matrix within ``bound`` of it: no pair is
    within the bound of τ, and no two pairs (that are not exactly tied) within twice of each other."""
    T = S.shape[0]
    values = S[tuple(torch.triu_indices(T, T, 1))]
    assert ((values - tau).abs() > bound).all(), (values, tau, bound)
    gaps = (values[:, None] - values[None, :]).abs()
    assert ((gaps > 2 * bound) | torch.eye(len(values), dtype=torch.bool)).all()


def merged_children(fb):
    """Per merge of every branching, the child modules merged (derived here from the events'
    groups and members and the route, not from the model's own bookkeeping)."""
    merges = []
    top = len(fb.layers) - 1
    for event in fb.events:
        for members in event.members:
            if len(members) < 2:
                continue
            first = [event.groups_before[g][0] for g in members]
            if event.layer == top:
                merges.append([fb.heads[t] for t in first])
            else:
                above = event.layer + 1
                merges.append([fb.layers[above][fb.route[above][t]] for t in first])
    return merges


def flat(grads, params):
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])


def same_step_lambdas(accuracy, fairness, fb) -> torch.Tensor:
    """λ_t = 0 where ∇_θt L_t · ∇_θt F_t < 0 on the head's weight θ_t, else 1 (autograd per task)."""
    lambdas = []
    for t, head in enumerate(fb.heads):
        (a,) = torch.autograd.grad(accuracy[t], head.weight, retain_graph=True)
        (f,) = torch.autograd.grad(fairness[t], head.weight, retain_graph=True)
        dot = float((a * f).sum())
        # Clear of rounding: both gradients are float64 backprops through a 4-layer net of width 6
        # (errors ~1e-14 relative to their magnitudes), the dot of 12 products γ_12.
        assert abs(dot) > 1e-9 * float(a.norm() * f.norm()), (t, dot)
        lambdas.append(0.0 if dot < 0 else 1.0)
    return torch.tensor(lambdas, dtype=F64)


def expected_step(fb, batch, lambdas=None, mode="merged"):
    """The hand-written step: {id(p): (expected .grad, bound)}, λ, whether FBGrad fired, and the
    heads' fairness gradients as written (for the λ of the next step with lambda_lag=1).

    The fairness gradient is that of Σ_t λ_t F_t (the same expression fastmtl differentiates, so
    the same deterministic autograd gives the same bits); "merged": the merged children's
    weight rows (and bias rows, following the weight's test) replaced by the per-vector FBGrad;
    "within_branch": per task, PCGrad (index order, the paper's per-vector algorithm) on each
    branched copy, a plain sum elsewhere. Then the gradient of Σ_t L_t is added (one rounding,
    u |sum|, in either order of the two additions)."""
    accuracy, fairness = losses(fb, *batch)
    if lambdas is None:
        lambdas = same_step_lambdas(accuracy, fairness, fb)
    params = [p for p in fb.parameters()]
    weighted = [lam * loss.reshape(()) for lam, loss in zip(lambdas, fairness)]
    fair = dict(zip(map(id, params), torch.autograd.grad(sum(weighted), params, retain_graph=True, allow_unused=True)))
    fair = {k: (g if g is not None else torch.zeros_like(p)) for (k, g), p in zip(fair.items(), params)}
    bound = {id(p): torch.zeros_like(p) for p in params}
    fired = False
    if mode == "merged":
        for children in merged_children(fb):
            weights = [next(p for p in m.parameters() if p.dim() >= 2) for m in children]
            biases = [[p for p in m.parameters() if p is not w] for m, w in zip(children, weights)]
            G = torch.stack([fair[id(w)].reshape(-1) for w in weights])
            followers = [torch.stack([fair[id(b[k])].reshape(-1) for b in biases]) for k in range(len(biases[0]))]
            projected = fbgrad_per_vector(G, *followers)
            assert decision_margin(G) > decision_error(G)  # the follower rows' decisions are not in doubt
            fired |= bool(((projected[0] - G).norm(dim=1) > 2 * row_bounds(G)).any())
            for M, rows, column in zip([G, *followers], projected, [weights, *zip(*biases)]):
                limits = row_bounds(M)
                for p, row, limit in zip(column, rows, limits):
                    fair[id(p)] = row.view_as(p)
                    bound[id(p)] = bound[id(p)] + float(limit)
    else:
        for copies, route in zip(fb.layers, fb.route):
            for c, module in enumerate(copies):
                group = list(module.parameters())
                if not group:
                    continue
                tasks = [t for t, r in enumerate(route) if r == c]
                G = torch.stack([flat(torch.autograd.grad(weighted[t], group, retain_graph=True, allow_unused=True),
                                      group) for t in tasks])
                if len(copies) > 1:
                    combined = pcgrad_per_vector(G)
                    limit = pcgrad_error_bound(G, pcgrad_coefficients(G @ G.T)) + pcgrad_per_vector_error_bound(G)
                    fired |= bool((combined - G.sum(0)).norm() > 2 * limit.max())
                else:  # a plain sum of the rows: γ_T Σ |g_t| for each of the two orders of summation
                    combined = G.sum(0)
                    limit = 2 * gamma(len(tasks), F64) * G.abs().sum(0)
                for p, piece, lim in zip(group, combined.split([p.numel() for p in group]),
                                         torch.as_tensor(limit).expand(combined.shape).split([p.numel() for p in group])):
                    fair[id(p)] = piece.view_as(p)
                    bound[id(p)] = lim.view_as(p).clone()
    written = [fair[id(head.weight)] for head in fb.heads]
    accuracy_grads = torch.autograd.grad(sum(accuracy), params, allow_unused=True)
    expected = {}
    for p, a in zip(params, accuracy_grads):
        a = torch.zeros_like(p) if a is None else a
        total = fair[id(p)] + a
        expected[id(p)] = (total, bound[id(p)] + U64 * (total.abs() + bound[id(p)]))
    return expected, lambdas, fired, [w.clone() for w in written]


def check_grads(fb, expected, what=""):
    for name, p in fb.named_parameters():
        value, bound = expected[id(p)]
        assert p.grad is not None, (what, name)
        assert_within(p.grad, value, bound, f"{what} {name}")


# ----- forward and the first branching -------------------------------------------------------------


def test_forward_before_branching_is_a_shared_trunk():
    fb = build()
    x, _, _ = data(0)
    plain = nn.Sequential(*[layer[0] for layer in fb.layers])
    h = plain(x)
    outs = fb(x)
    assert len(outs) == 4
    for head, out in zip(fb.heads, outs):
        assert torch.equal(out, head(h))  # the same modules on the same input: the same bits


def test_first_branching_follows_pair_tasks_on_the_heads_cka():
    # One step, then the check (branch_every=1, warmup=0) decides from the heads as they are now.
    fb = build(tau=0.9)
    opt = fb.make_optimizer(adamw(fb))
    batch = data(0)
    x = batch[0]
    accuracy, fairness = losses(fb, *batch)
    opt.zero_grad()
    fb.backward(accuracy, fairness)
    opt.step()
    S = heads_similarity(fb)
    bound = similarity_bound([head.weight.T for head in fb.heads])
    assert_clear(S, 0.9, bound)
    expected_groups = pair_tasks_brute(S, 0.9)
    assert expected_groups == [(0, 2), (1,), (3,)]  # the similar heads pair, the others stay alone
    before = [out.detach().clone() for out in fb(x)]
    old = fb.layers[3][0]
    event = fb.after_step()
    assert isinstance(event, BranchEvent) and fb.events == [event]
    assert event.step == 1 and event.layer == 3 and event.tau == 0.9
    assert event.groups_before == [(0,), (1,), (2,), (3,)]
    assert event.groups == expected_groups and event.members == expected_groups
    assert event.children == [[("head", 0), ("head", 2)]]
    assert torch.tensor(event.similarity, dtype=F64).sub(S).abs().max() <= bound
    assert fb.task_groups == expected_groups and fb.next_layer == 2
    assert fb.route[3] == [0, 1, 0, 2] and fb.route[:3] == [[0] * 4] * 3
    # The copies are exact copies, new objects; the outputs are unchanged at this moment.
    assert len(fb.layers[3]) == 3
    for c in fb.layers[3]:
        assert c is not old
        for p, q in zip(c.parameters(), old.parameters()):
            assert torch.equal(p, q) and p is not q and p.grad is None
    assert len({id(p) for c in fb.layers[3] for p in c.parameters()}) == 6
    for a, b in zip(before, fb(x)):
        assert torch.equal(a, b)


def test_no_branching_when_everything_pairs_and_none_for_one_task():
    # T = 2 with similar heads: one pair, one group: nothing to branch.
    fb = build(T=2, similar=((0, 1),), tau=0.5)
    opt = fb.make_optimizer(adamw(fb))
    for step in range(3):
        assert train_step(fb, opt, data(step, T=2))[1] is None
    assert fb.events == [] and all(len(layer) == 1 for layer in fb.layers)
    # T = 1: never branches.
    fb = build(T=1, similar=(), tau=0.0)
    opt = fb.make_optimizer(adamw(fb))
    for step in range(3):
        lambdas, event = train_step(fb, opt, data(step, T=1))
        assert event is None and lambdas.shape == (1,)
    assert fb.branch() is None and fb.events == []


def test_schedule_top_down_once_per_layer_never_layer_zero():
    # tau = 1: no pair (CKA of different matrices < 1), so every check finds T groups and branches.
    fb = build(tau=1.0, warmup=3, branch_every=2, similar=())
    opt = fb.make_optimizer(adamw(fb))
    events = []
    for step in range(1, 12):
        _, event = train_step(fb, opt, data(step))
        if event is not None:
            events.append(event)
    assert [(e.step, e.layer) for e in events] == [(3, 3), (5, 2), (7, 1)]
    assert fb.next_layer == 0 and len(fb.layers[0]) == 1 and [len(layer) for layer in fb.layers] == [1, 4, 4, 4]
    assert all(e.groups == [(0,), (1,), (2,), (3,)] and e.children == [] for e in events)
    assert fb.branch() is None  # layer 0 is never branched
    # The checks of steps 5 and 7 measured the copies of the layer above (trained apart for two steps).
    assert all(max(v for i, row in enumerate(e.similarity) for j, v in enumerate(row) if i != j) < 1.0 for e in events)


def test_a_layer_without_parameters_can_branch():
    # Layer 1 an activation: it is never compared (only layers 2 and up are), but it is branched.
    torch.manual_seed(0)
    trunk = [nn.Linear(D_IN, D), nn.Tanh(), nn.Sequential(nn.Linear(D, D), nn.Tanh()), nn.Linear(D, D)]
    fb = FairBranch(trunk, [nn.Linear(D, 2) for _ in range(3)], tau=1.0).double()
    opt = fb.make_optimizer(adamw(fb))
    layers = []
    for step in range(4):
        _, event = train_step(fb, opt, data(step, T=3))
        layers += [event.layer] if event else []
    assert layers == [3, 2, 1] and len(fb.layers[1]) == 3
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    assert held == {id(p) for p in fb.parameters()}


# ----- the optimizer across a branching ----------------------------------------------------------


def test_optimizer_state_across_a_branching():
    fb = build(tau=0.9)
    inner = adamw(fb)
    opt = fb.make_optimizer(inner)
    batch = data(0)
    accuracy, fairness = losses(fb, *batch)
    opt.zero_grad()
    fb.backward(accuracy, fairness)
    opt.step()
    old = list(fb.layers[3][0].parameters())
    kept = [p for p in fb.parameters() if all(p is not q for q in old)]
    states = {id(p): (opt.state[p], {k: v for k, v in opt.state[p].items()},
                      {k: v.clone() for k, v in opt.state[p].items()}) for p in kept}
    event = fb.after_step()
    assert event is not None
    copies = [list(c.parameters()) for c in fb.layers[3]]
    # Every parameter that stays keeps its state: the same dict, the same tensors, the same values.
    for p in kept:
        state, objects, values = states[id(p)]
        assert opt.state[p] is state
        for k, v in opt.state[p].items():
            assert v is objects[k] and torch.equal(v, values[k])
    # The replaced parameters are gone from the param groups and the state; the copies are in the
    # trunk's param group (lr 1e-2, weight decay 0.01) with no state yet.
    groups = opt.param_groups
    assert all(p is not q for q in old for g in groups for p in g["params"])
    assert all(q not in opt.state for q in old)
    trunk_ids = {id(p) for p in groups[0]["params"]}
    for c in copies:
        for p in c:
            assert id(p) in trunk_ids and p not in opt.state
    assert len(groups) == 2 and groups[0]["lr"] == 1e-2 and groups[1]["lr"] == 1e-3
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in fb.parameters()}
    # The MTLOptimizer's groups: layers 0-2 for every task, each copy for its group's tasks.
    listed = sorted((tuple(sorted(id(p) for p in g.params)), g.tasks) for g in opt.groups)
    wanted = sorted([(tuple(sorted(id(p) for p in fb.layers[l][0].parameters())), (0, 1, 2, 3)) for l in range(3)]
                    + [(tuple(sorted(id(p) for p in c)), tasks) for c, tasks in zip(copies, [(0, 2), (1,), (3,)])])
    assert listed == wanted
    # Training goes on: the copies get AdamW state at the next step.
    train_step(fb, opt, data(1))
    assert all(p in opt.state and int(opt.state[p]["step"]) == 1 for c in copies for p in c)
    assert int(opt.state[kept[0]]["step"]) == 2


def test_make_optimizer_needs_every_parameter():
    fb = build()
    with pytest.raises(ValueError, match="every parameter"):
        fb.make_optimizer(torch.optim.SGD(fb.heads.parameters(), lr=0.1))
    fb = build(tau=1.0)
    with pytest.raises(RuntimeError, match="make_optimizer"):
        fb.branch()
    fb = build(fbgrad="within_branch")
    with pytest.raises(RuntimeError, match="make_optimizer"):
        fb.backward(*losses(fb, *data(0)))


# ----- the training step --------------------------------------------------------------------------


def branched_twice(mode="merged", lambda_lag=0, grouping="pairs", T=6, similar=((0, 2), (1, 4), (3, 5))):
    """A model after two branchings: heads paired (0, 2), (1, 4), (3, 5) at layer 3 (three copies),
    then the copies of groups (1, 4) and (3, 5) made similar by hand and paired at layer 2."""
    fb = build(T=T, similar=similar, tau=0.9, fbgrad=mode, lambda_lag=lambda_lag, grouping=grouping)
    opt = fb.make_optimizer(torch.optim.SGD(fb.parameters(), lr=0.05))
    _, event = train_step(fb, opt, data(0, T))
    assert event is not None and event.groups == [(0, 2), (1, 4), (3, 5)]
    with torch.no_grad():  # the copies are still nearly equal after one step: set them apart by hand
        gen = torch.Generator().manual_seed(1)
        first, a, b = (fb.layers[3][c][0] for c in range(3))
        first.weight.copy_(torch.randn(first.weight.shape, generator=gen, dtype=F64) * 0.4)
        a.weight.copy_(torch.randn(a.weight.shape, generator=gen, dtype=F64) * 0.4)
        b.weight.copy_(a.weight + 0.01 * torch.randn(a.weight.shape, generator=gen, dtype=F64))
    event = fb.branch()
    assert event is not None and event.layer == 2 and event.groups == [(0, 2), (1, 3, 4, 5)]
    assert event.members == [(0,), (1, 2)] and event.children == [[("layer", 3, 1), ("layer", 3, 2)]]
    return fb, opt


@pytest.mark.parametrize("lambda_lag", [0, 1])
def test_training_steps_match_the_hand_written_step(lambda_lag):
    fb, opt = branched_twice(lambda_lag=lambda_lag)
    fired = zero_lambdas = 0
    previous = None  # lambda_lag=1: the λ the last step's test gives for this one
    for step in range(1, 5):
        batch = data(step, T=6)
        accuracy, fairness = losses(fb, *batch)
        heads_accuracy = [torch.autograd.grad(accuracy[t], h.weight, retain_graph=True)[0] for t, h in enumerate(fb.heads)]
        opt.zero_grad()
        stored = None if fb._lambda_next is None else fb._lambda_next.clone()
        got = fb.backward(accuracy, fairness)
        if lambda_lag and previous is None:
            lambdas = stored  # the test of branched_twice's step (not watched here): the λ it stored
        elif lambda_lag:
            lambdas = previous
        else:
            lambdas = None  # the same-step test, computed by expected_step
        expected, lambdas, step_fired, written = expected_step(fb, batch, lambdas)
        assert torch.equal(got, lambdas), (step, got, lambdas)
        check_grads(fb, expected, f"step {step}")
        if lambda_lag:  # the test of this step, on the head's fairness gradient as written, for the next
            dots = [float((a * w).sum()) for a, w in zip(heads_accuracy, written)]
            for dot, a, w in zip(dots, heads_accuracy, written):  # clear of rounding (see same_step_lambdas)
                assert dot == 0 or abs(dot) > 1e-9 * float(a.norm() * w.norm())
            previous = torch.tensor([0.0 if dot < 0 else 1.0 for dot in dots], dtype=F64)
        fired += step_fired
        zero_lambdas += int((lambdas == 0).sum())
        opt.step()
    assert fired >= 2  # FBGrad projected
    assert zero_lambdas >= 1  # some fairness loss was dropped for conflicting with its accuracy


def test_lagged_lambda_starts_at_one():
    # The first step of lambda_lag=1 uses λ = 1 where the same-step test drops a fairness loss.
    fb = build(tau=0.9, lambda_lag=1)
    opt = fb.make_optimizer(torch.optim.SGD(fb.parameters(), lr=0.05))
    accuracy, fairness = losses(fb, *data(2))
    same_step = same_step_lambdas(accuracy, fairness, fb)
    assert (same_step == 0).any()
    expected, _, _, _ = expected_step(fb, data(2), torch.ones(4, dtype=F64))
    opt.zero_grad()
    assert torch.equal(fb.backward(accuracy, fairness), torch.ones(4, dtype=F64))
    check_grads(fb, expected, "first lagged step")


def test_within_branch_is_pcgrad_on_each_branched_copy():
    fb, opt = branched_twice(mode="within_branch")
    methods = {g.tasks: g.method for g in opt.groups}
    assert methods[(0, 2)].name == "pcgrad" and methods[(0, 1, 2, 3, 4, 5)].name == "sum"
    fired = 0
    for step in range(1, 4):
        batch = data(step, T=6)
        expected, lambdas, step_fired, _ = expected_step(fb, batch, mode="within_branch")
        accuracy, fairness = losses(fb, *batch)
        opt.zero_grad()
        assert torch.equal(fb.backward(accuracy, fairness), lambdas)
        check_grads(fb, expected, f"step {step}")
        fired += step_fired
        opt.step()
    assert fired >= 1


def test_fairness_only_after_the_first_branching():
    fb = build(tau=0.9, fair_from_start=False)
    opt = fb.make_optimizer(torch.optim.SGD(fb.parameters(), lr=0.05))
    batch = data(0)
    accuracy, fairness = losses(fb, *batch)
    params = list(fb.parameters())
    plain = torch.autograd.grad(sum(accuracy), params, retain_graph=True)
    opt.zero_grad()
    lambdas = fb.backward(accuracy, fairness)
    assert torch.equal(lambdas, torch.zeros(4, dtype=lambdas.dtype))
    for p, g in zip(params, plain):
        assert torch.equal(p.grad, g)  # the same autograd call on the same graph: the same bits
    opt.step()
    assert fb.after_step() is not None
    batch = data(1)
    expected, lambdas, _, _ = expected_step(fb, batch)
    accuracy, fairness = losses(fb, *batch)
    opt.zero_grad()
    assert torch.equal(fb.backward(accuracy, fairness), lambdas) and lambdas.sum() > 0
    check_grads(fb, expected, "after branching")


def connected_components(S: torch.Tensor, tau: float) -> list[tuple[int, ...]]:
    """Single linkage with a threshold = the connected components of the graph S_ij >= tau."""
    T = S.shape[0]
    label = list(range(T))
    for _ in range(T):
        for i in range(T):
            for j in range(T):
                if i != j and S[i, j] >= tau:
                    label[i] = label[j] = min(label[i], label[j])
    return sorted(tuple(t for t in range(T) if label[t] == value) for value in sorted(set(label)))


def test_cluster_grouping_merges_three_children():
    # Heads 0, 1, 3 similar in a chain: single linkage puts them in one group of three.
    fb = build(T=4, similar=((0, 1), (1, 3)), tau=0.9, grouping="cluster")
    opt = fb.make_optimizer(torch.optim.SGD(fb.parameters(), lr=0.05))
    accuracy, fairness = losses(fb, *data(0))
    opt.zero_grad()
    fb.backward(accuracy, fairness)
    opt.step()
    S = heads_similarity(fb)
    assert_clear(S, 0.9, similarity_bound([h.weight.T for h in fb.heads]))
    groups = connected_components(S, 0.9)
    assert groups == [(0, 1, 3), (2,)]
    event = fb.after_step()
    assert event.groups == groups and event.children == [[("head", 0), ("head", 1), ("head", 3)]]
    expected, lambdas, fired, _ = expected_step(fb, data(1))
    accuracy, fairness = losses(fb, *data(1))
    opt.zero_grad()
    assert torch.equal(fb.backward(accuracy, fairness), lambdas)
    check_grads(fb, expected, "three children")
    assert fired


# ----- state, errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("lambda_lag", [0, 1])
def test_state_dict_round_trip(lambda_lag):
    fb, _ = branched_twice(lambda_lag=lambda_lag)
    opt = fb.make_optimizer(torch.optim.SGD(fb.parameters(), lr=0.05))
    train_step(fb, opt, data(1, T=6))
    buffer = io.BytesIO()
    torch.save(fb.state_dict(), buffer)
    buffer.seek(0)
    fresh = build(T=6, seed=5, similar=(), tau=0.9, lambda_lag=lambda_lag)  # other weights, unbranched
    fresh.load_state_dict(torch.load(buffer))
    assert fresh.events == fb.events and fresh.route == fb.route and fresh.task_groups == fb.task_groups
    assert fresh.next_layer == fb.next_layer and fresh.steps == fb.steps
    assert [len(layer) for layer in fresh.layers] == [len(layer) for layer in fb.layers] == [1, 1, 2, 3]
    x = data(2, T=6)[0]
    for a, b in zip(fb(x), fresh(x)):
        assert torch.equal(a, b)
    # Training goes on identically, each with an optimizer built the same way.
    opts = [m.make_optimizer(torch.optim.SGD(m.parameters(), lr=0.05)) for m in (fb, fresh)]
    for step in range(3, 6):
        results = [train_step(m, o, data(step, T=6)) for m, o in zip((fb, fresh), opts)]
        assert torch.equal(results[0][0], results[1][0])
        for p, q in zip(fb.parameters(), fresh.parameters()):
            assert torch.equal(p, q)
    # A branched state does not load into a model branched differently.
    other = build(T=6, tau=1.0, lambda_lag=lambda_lag)
    other.make_optimizer(torch.optim.SGD(other.parameters(), lr=0.05))
    other.branch()
    with pytest.raises(ValueError, match="branched already"):
        other.load_state_dict(fb.state_dict())
    # A state for another task count is refused before anything changes, strict or not.
    for T in (3, 8):
        other = build(T=T, tau=0.9)
        before = (repr(other), [list(r) for r in other.route], [p.clone() for p in other.parameters()])
        for strict in (True, False):
            with pytest.raises(ValueError, match="another trunk or task count"):
                other.load_state_dict(fb.state_dict(), strict=strict)
        assert (repr(other), other.route) == before[:2]
        assert all(torch.equal(p, q) for p, q in zip(other.parameters(), before[2]))


def test_checkpoint_of_model_and_optimizer_resumes_after_branching():
    """A training checkpoint taken after two branchings (model and AdamW state) resumes into a
    freshly built model and a freshly built optimizer, and training continues identically: the
    copies sit in the optimizer, and its shared groups are listed, in the order a rebuilt model
    gives them."""
    fb, _ = branched_twice()
    opt = fb.make_optimizer(torch.optim.AdamW(fb.parameters(), lr=1e-2))  # AdamW: state that matters
    for step in (1, 2):
        train_step(fb, opt, data(step, T=6))
    buffer = io.BytesIO()  # through a file, as a checkpoint goes (an in-memory optimizer state_dict shares
    torch.save({"model": fb.state_dict(), "optimizer": opt.state_dict()}, buffer)  # AdamW's step tensors)
    buffer.seek(0)
    checkpoint = torch.load(buffer)
    fresh = build(T=6, seed=5, similar=(), tau=0.9)
    fresh.load_state_dict(checkpoint["model"])
    fresh_opt = fresh.make_optimizer(torch.optim.AdamW(fresh.parameters(), lr=1e-2))
    fresh_opt.load_state_dict(checkpoint["optimizer"])
    assert [group.tasks for group in fresh_opt.groups] == [group.tasks for group in opt.groups]
    held = [p for group in opt.param_groups for p in group["params"]]
    assert [id(p) for p in held] == [id(p) for p in fb.parameters()]  # the rebuilt order
    for step in (3, 4):
        results = [train_step(m, o, data(step, T=6)) for m, o in ((fb, opt), (fresh, fresh_opt))]
        assert torch.equal(results[0][0], results[1][0])
        for p, q in zip(fb.parameters(), fresh.parameters()):
            assert torch.equal(p, q)


class Boom(torch.autograd.Function):
    """Identity whose backward raises: a failure in the middle of FairBranch.backward."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("boom")


@pytest.mark.parametrize("mode", ["merged", "within_branch"])
def test_backward_is_all_or_nothing(mode):
    fb, opt = branched_twice(mode=mode, lambda_lag=1)
    train_step(fb, opt, data(1, T=6))
    lambda_next = fb._lambda_next.clone()
    gen = torch.Generator().manual_seed(0)
    for p in fb.parameters():
        p.grad = torch.randn(p.shape, generator=gen, dtype=F64)
    before = {id(p): p.grad.clone() for p in fb.parameters()}
    accuracy, fairness = losses(fb, *data(2, T=6))
    # The accuracy loss of task 0 passes through Boom on the trunk's first weight: the last
    # backward pass (after the fairness gradients were written) raises.
    accuracy[0] = accuracy[0] + 0.0 * Boom.apply(fb.layers[0][0].weight).sum()
    with pytest.raises(RuntimeError, match="boom"):
        fb.backward(accuracy, fairness)
    for p in fb.parameters():
        assert torch.equal(p.grad, before[id(p)])
    assert torch.equal(fb._lambda_next, lambda_next)
    # And it works afterwards, adding to the gradients there (as loss.backward() does).
    accuracy, fairness = losses(fb, *data(2, T=6))
    fb.backward(accuracy, fairness)
    assert all(not torch.equal(p.grad, before[id(p)]) for p in fb.parameters())


def test_wrong_number_of_losses():
    fb = build()
    accuracy, fairness = losses(fb, *data(0))
    with pytest.raises(ValueError, match="one accuracy and one fairness loss per task"):
        fb.backward(accuracy[:3], fairness)
    with pytest.raises(ValueError, match="one accuracy and one fairness loss per task"):
        fb.backward(accuracy, fairness + fairness[:1])
    with pytest.raises(ValueError):
        fb.backward(accuracy, [f.detach() for f in fairness])
    assert all(p.grad is None for p in fb.parameters())


def test_constructor_errors():
    heads = [nn.Linear(D, 2) for _ in range(2)]
    for trunk in (nn.Linear(D, D), torch.randn(3, 3), [], "layers", [nn.Linear(D, D), "relu"], 3):
        with pytest.raises(TypeError):
            FairBranch(trunk, heads)
    for bad_heads in (nn.Linear(D, 2), [], [nn.Linear(D, 2), torch.randn(2, D)], [nn.Linear(D, 2), nn.Tanh()]):
        with pytest.raises((TypeError, ValueError)):
            FairBranch(make_trunk(), bad_heads)
    for tau in (-0.1, 1.1, float("nan")):
        with pytest.raises(ValueError, match="tau"):
            FairBranch(make_trunk(), heads, tau=tau)
    with pytest.raises(TypeError):
        FairBranch(make_trunk(), heads, tau="0.5")
    for bad in ({"branch_every": 0}, {"warmup": -1}):
        with pytest.raises(ValueError):
            FairBranch(make_trunk(), heads, **bad)
    with pytest.raises(TypeError):
        FairBranch(make_trunk(), heads, branch_every=1.5)
    for bad in ({"grouping": "single"}, {"fbgrad": "pcgrad"}, {"lambda_lag": 2}, {"lambda_lag": "1"}):
        with pytest.raises(ValueError):
            FairBranch(make_trunk(), heads, **bad)
    for bad in ({"lambda_lag": True}, {"fair_from_start": 1}):
        with pytest.raises(TypeError):
            FairBranch(make_trunk(), heads, **bad)
    with pytest.raises(ValueError, match="same parameter shapes"):  # merged heads are projected on each other
        FairBranch(make_trunk(), [nn.Linear(D, 2), nn.Linear(D, 3)])
    with pytest.raises(ValueError, match="weight matrix"):  # layers 2 and up must have one to compare
        FairBranch([nn.Linear(D_IN, D), nn.Linear(D, D), nn.Tanh()], heads)
    # nn.Sequential and nn.ModuleList are sequences of layers; their layers are used as they are.
    trunk = nn.Sequential(*make_trunk())
    fb = FairBranch(trunk, nn.ModuleList(heads))
    assert fb.layers[0][0] is trunk[0] and fb.heads[1] is heads[1] and fb.tasks == 2
    assert "tasks=2" in repr(fb)
