"""RLW and GLS (LibMTL's random and geometric loss weightings): the loss each builds against its
paper's formula on hand-computed cases, the gradient it back-propagates, reproducibility, options,
and one MTLOptimizer step against a hand-written one."""

import math

import pytest
import torch

import fastmtl

EPS = torch.finfo(torch.float64).eps


def scalars(*values):
    return [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in values]


def test_gls_is_the_geometric_mean_and_weights_by_inverse_losses():
    # (2 · 8)^(1/2) = 4; d/dL_t = GLS / (T L_t): 4 / (2 · 2) = 1 and 4 / (2 · 8) = 1/4.
    losses = scalars(2.0, 8.0)
    total = fastmtl.methods.create("gls").loss(losses, None)
    total.backward()
    # exp(mean log): log, mean, exp each round once (relative u), the sum of two logs once more.
    assert abs(float(total.detach()) - 4.0) <= 8 * EPS * 4.0
    assert abs(float(losses[0].grad) - 1.0) <= 16 * EPS
    assert abs(float(losses[1].grad) - 0.25) <= 16 * EPS


def test_gls_does_not_underflow_where_the_product_would():
    # 40 losses of 1e-10: the product 1e-400 underflows float64, the geometric mean is 1e-10.
    losses = scalars(*([1e-10] * 40))
    total = fastmtl.methods.create("gls").loss(losses, None)
    assert math.isclose(float(total.detach()), 1e-10, rel_tol=1e-13)


def test_rlw_weights_are_a_softmax_of_normal_draws():
    losses = scalars(1.0, 2.0, 4.0)
    method = fastmtl.methods.create("rlw", generator=torch.Generator().manual_seed(5))
    total = method.loss(losses, None)
    total.backward()
    # The same draws, by hand: softmax(z) with z from the same seeded generator.
    z = torch.randn(3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    weights = torch.exp(z) / torch.exp(z).sum()
    assert torch.allclose(torch.stack([loss.grad for loss in losses]), weights, rtol=8 * EPS, atol=0)
    assert math.isclose(float(total.detach()), float(weights @ torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)),
                        rel_tol=16 * EPS)


def test_rlw_draws_afresh_each_step_and_reproduces_with_a_seed():
    def weights(method):
        losses = scalars(1.0, 1.0)
        method.loss(losses, None).backward()
        return [float(loss.grad) for loss in losses]

    method = fastmtl.methods.create("rlw", generator=torch.Generator().manual_seed(1))
    first, second = weights(method), weights(method)
    assert first != second and abs(sum(first) - 1) <= 4 * EPS
    assert weights(fastmtl.methods.create("rlw", generator=torch.Generator().manual_seed(1))) == first


def test_bad_options_raise():
    with pytest.raises(TypeError, match="generator"):
        fastmtl.methods.create("rlw", generator=3)
    with pytest.raises(TypeError):
        fastmtl.methods.create("gls", weight=2.0)


@pytest.mark.parametrize("name", ["rlw", "gls"])
def test_one_optimizer_step_is_one_backward_of_the_built_loss(name):
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 2).double()
    reference = torch.nn.Linear(4, 2).double()
    reference.load_state_dict(net.state_dict())
    x = torch.randn(8, 4, dtype=torch.float64)

    def task_losses(model):
        out = model(x)
        return [out[:, 0].pow(2).mean() + 0.1, out[:, 1].pow(2).mean() + 0.1]

    options = {"generator": torch.Generator().manual_seed(3)} if name == "rlw" else {}
    opt = fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), name, shared=net.parameters(), **options)
    opt.zero_grad()
    opt.backward(task_losses(net))
    opt.step()
    built = fastmtl.methods.create(name, **({"generator": torch.Generator().manual_seed(3)} if name == "rlw" else {}))
    sgd = torch.optim.SGD(reference.parameters(), lr=0.1)
    built.loss(task_losses(reference), None).backward()
    sgd.step()
    for p, q in zip(net.parameters(), reference.parameters()):
        assert torch.equal(p, q)  # the same operations on the same numbers
