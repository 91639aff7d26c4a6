"""FairBranch's fairness loss (Roy et al. 2024, Eq. 1) vs a direct loop over the (label, group)
cells (tests/oracles.py), its gradient, and the λ_t rule (``fairness_weights``)."""

import math

import pytest
import torch
from conftest import DEVICES, UNIT_ROUNDOFF, accumulate_dtype, gamma
from oracles import fairness_loss_direct

import fastmtl
from fastmtl import fairness_loss
from fastmtl.losses import fairness_weights

F64 = torch.float64


def loss_bound(logits: torch.Tensor, y: torch.Tensor, dtype: torch.dtype) -> float:
    """Bound on |fairness_loss(logits in dtype) - exact F| plus the float64 oracle's own error.

    Per sample (u of the dtype the per-sample value is computed in, at worst the logits' dtype),
    ce = m + log Σ_c exp(z_c - m) - z_y, m = max z: the shifts err by u |z_c - m|, which moves each
    exp(w_c) <= 1 by at most u |w_c| e^{w_c} <= u / e, exp itself by 2u (two ulps), so the sum S >= 1
    of C terms errs relatively by at most 3Cu + γ_C <= γ_{4C}; log adds 2u log C, the addition of m
    u (zmax + log C) and the subtraction of z_y u (2 zmax + log C):
    |Δce| <= γ_{4C+2} + u (3 zmax + 4 log C). (Binary cross-entropy with logits, max(x, 0) - xy +
    log1p(e^{-|x|}), has fewer roundings on smaller terms: the C = 2 bound covers it.) A cell's mean
    of n values <= ce_max = 2 zmax + log C adds γ_{n+1} ce_max (the sum in the accumulation dtype and
    the division); a max over groups is 1-Lipschitz; the sum of C labels adds γ_C C ce_max; storing
    in the logits' dtype u C ce_max. The oracle: the same in float64."""
    z = logits.detach().double()
    C = 2 if z.dim() == 1 or z.shape[1] == 1 else z.shape[1]
    zmax = float(z.abs().max()) if z.numel() else 0.0
    ce_max = 2 * zmax + math.log(C)
    total = 0.0
    for d in (dtype, F64):
        acc = accumulate_dtype(d)
        per_sample = gamma(4 * C + 2, d) + UNIT_ROUNDOFF[d] * (3 * zmax + 4 * math.log(C))
        cell = per_sample + gamma(len(y) + 1, acc) * ce_max
        total += C * cell + (gamma(C, acc) + UNIT_ROUNDOFF[d]) * C * ce_max
    return total


def grad_bound(logits: torch.Tensor) -> float:
    """Bound on the difference of two float64 gradients of F (ours and the loop's): each entry is
    (softmax - onehot) / n of a worst cell; softmax e^{w_c} / S takes the relative errors of its
    exponential (2u + u |w_c|) and of S (γ_{4C}) and one division, so it errs by at most
    γ_{4C+4} + 2u zmax, and the subtraction, the 1/n and the chain rule's factor 1 add 3u; twice
    that for the two gradients."""
    z = logits.detach().double()
    C = 2 if z.dim() == 1 or z.shape[1] == 1 else z.shape[1]
    zmax = float(z.abs().max())
    return 2 * (gamma(4 * C + 7, F64) + 2 * UNIT_ROUNDOFF[F64] * zmax)


def batch(N: int, C: int, groups: int, seed: int, binary: bool = False, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(N, 1 if binary else C, generator=gen, dtype=F64) * 2
    y = torch.randint(0, 2 if binary else C, (N,), generator=gen)
    s = torch.randint(0, groups, (N,), generator=gen)
    return logits.to(dtype).requires_grad_(), y, s


# ----- value ----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["ce2", "ce3", "binary_1d", "binary_col"])
@pytest.mark.parametrize("groups", [2, 3, 5])
def test_matches_the_cell_loop(shape, groups):
    C = {"ce2": 2, "ce3": 3}.get(shape, 2)
    for seed in range(6):
        logits, y, s = batch(24, C, groups, seed, binary=shape.startswith("binary"))
        if shape == "binary_1d":
            logits = logits.detach().reshape(-1).requires_grad_()
        value = fairness_loss(logits, y, s, num_groups=groups)
        expected = fairness_loss_direct(logits, y, s, range(groups))
        assert value.dim() == 0 and value.dtype == F64
        assert abs(value.item() - expected.item()) <= loss_bound(logits, y, F64), (seed, value.item(), expected.item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dtypes(dtype):
    for seed in range(4):
        logits, y, s = batch(40, 2, 3, seed, dtype=dtype)
        value = fairness_loss(logits, y, s, num_groups=3)
        assert value.dtype == dtype
        expected = fairness_loss_direct(logits.detach().double(), y, s, range(3))
        assert abs(value.item() - expected.item()) <= loss_bound(logits, y, dtype), (seed, dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_large_cells_in_half_precision(dtype):
    # 3000 samples per label: a bfloat16 count stops at 256 and a float16 one at 2048, and a half
    # precision sum of ~0.69 stalls long before; all-zero logits give CE = log 2 in every cell,
    # so F = 2 log 2 whatever the cell sizes.
    N = 6000
    logits = torch.zeros(N, 2, dtype=dtype, requires_grad=True)
    y = torch.arange(N) % 2
    s = (torch.arange(N) // 2) % 2
    value = fairness_loss(logits, y, s, num_groups=2)
    assert abs(value.item() - 2 * math.log(2)) <= loss_bound(logits, y, dtype)


def test_empty_cells_and_labels():
    logits, y, s = batch(12, 3, 3, 0)
    # Group 2 only has label 0; label 2 has no sample at all.
    y = torch.tensor([0, 0, 1, 1, 0, 1, 0, 1, 0, 0, 1, 1])
    s = torch.tensor([0, 1, 0, 1, 2, 0, 2, 1, 1, 0, 0, 1])
    value = fairness_loss(logits, y, s, num_groups=4)  # group 3: no sample in the batch
    expected = fairness_loss_direct(logits, y, s, range(4))
    assert abs(value.item() - expected.item()) <= loss_bound(logits, y, F64)
    assert torch.isfinite(value)
    # A label with samples in one group only: that cell is the max.
    one = torch.tensor([0, 0, 0, 1])
    groups = torch.tensor([0, 1, 1, 1])
    z = torch.randn(4, 2, dtype=F64)
    v = fairness_loss(z, one, groups, num_groups=2)
    direct = torch.nn.functional.cross_entropy(z[3:], one[3:])
    worst0 = max(torch.nn.functional.cross_entropy(z[:1], one[:1]), torch.nn.functional.cross_entropy(z[1:3], one[1:3]))
    assert abs((v - direct - worst0).item()) <= loss_bound(z, one, F64)


def test_empty_batch():
    for logits in (torch.zeros(0, 2, dtype=F64, requires_grad=True), torch.zeros(0, dtype=F64, requires_grad=True)):
        empty = torch.zeros(0, dtype=torch.int64)
        for groups in (2, None):
            value = fairness_loss(logits, empty, empty, num_groups=groups)
            assert value.dim() == 0 and value.item() == 0.0
            value.backward()  # differentiable, gradient of an empty batch: nothing
            assert logits.grad.shape == logits.shape


def test_num_groups_none_reads_the_groups_of_the_batch():
    logits, y, s = batch(30, 2, 3, 4)
    for mapping in ([0, 1, 2], [3, 7, 11], [-1, 0, 5]):
        ids = torch.tensor(mapping)[s]
        value = fairness_loss(logits, y, ids, num_groups=None)
        expected = fairness_loss_direct(logits, y, ids, mapping)
        assert abs(value.item() - expected.item()) <= loss_bound(logits, y, F64)
    # The given path with the same cells (ids 3, 7, 11 of 12 groups: the other cells empty) agrees
    # with the None path and with ids 0, 1, 2 (each within its bound of the same exact value).
    sparse = fairness_loss(logits, y, torch.tensor([3, 7, 11])[s], num_groups=12)
    read = fairness_loss(logits, y, torch.tensor([3, 7, 11])[s], num_groups=None)
    dense = fairness_loss(logits, y, s, num_groups=3)
    assert abs(sparse.item() - read.item()) <= 2 * loss_bound(logits, y, F64)
    assert abs(sparse.item() - dense.item()) <= 2 * loss_bound(logits, y, F64)


# ----- gradient -------------------------------------------------------------------------------


def test_gradcheck():
    logits, y, s = batch(10, 2, 2, 5)
    for binary in (False, True):
        z = logits.detach()[:, :1].clone().requires_grad_() if binary else logits
        assert torch.autograd.gradcheck(lambda x: fairness_loss(x, y, s, num_groups=2), (z,))


def test_gradient_flows_only_into_the_worst_cell_per_label():
    logits, y, s = batch(30, 2, 3, 6)
    value = fairness_loss(logits, y, s, num_groups=3)
    (grad,) = torch.autograd.grad(value, logits)
    # The worst cell of each label, found by the loop.
    worst = []
    for label in range(2):
        means = {g: float(torch.nn.functional.cross_entropy(logits.detach()[(y == label) & (s == g)], y[(y == label) & (s == g)]))
                 for g in range(3) if bool(((y == label) & (s == g)).any())}
        ordered = sorted(means.values())
        assert ordered[-1] - ordered[-2] > 2 * loss_bound(logits, y, F64)  # no tie
        worst.append(max(means, key=means.get))
    in_worst = torch.zeros(30, dtype=torch.bool)
    for label, group in enumerate(worst):
        in_worst |= (y == label) & (s == group)
    assert grad[~in_worst].eq(0).all()  # exactly zero outside
    assert grad[in_worst].abs().sum(1).gt(0).all()
    # Inside, the gradient of each worst cell's mean cross-entropy (the loop's autograd).
    (expected,) = torch.autograd.grad(fairness_loss_direct(logits, y, s, range(3)), logits)
    assert (grad - expected).abs().max() <= grad_bound(logits)


# ----- errors ---------------------------------------------------------------------------------


def test_errors():
    logits, y, s = batch(6, 2, 2, 7)
    with pytest.raises(ValueError, match="shape"):
        fairness_loss(logits, y[:5], s, num_groups=2)
    with pytest.raises(ValueError, match="shape"):
        fairness_loss(logits, y, s[:5], num_groups=2)
    with pytest.raises(ValueError, match="shape"):
        fairness_loss(logits, y[:, None], s, num_groups=2)
    with pytest.raises(ValueError, match="logits"):
        fairness_loss(logits[:, :, None], y, s, num_groups=2)
    with pytest.raises(TypeError, match="integer"):
        fairness_loss(logits, y.double(), s, num_groups=2)
    with pytest.raises(TypeError, match="integer"):
        fairness_loss(logits, y, s.float(), num_groups=2)
    with pytest.raises(TypeError):
        fairness_loss(logits.detach().long(), y, s, num_groups=2)
    with pytest.raises(TypeError):
        fairness_loss(logits, y.tolist(), s, num_groups=2)
    with pytest.raises(ValueError, match="one group"):
        fairness_loss(logits, y, torch.ones_like(s), num_groups=None)
    for bad in (1, 0, -2):
        with pytest.raises(ValueError, match="num_groups"):
            fairness_loss(logits, y, s, num_groups=bad)
    with pytest.raises(TypeError):
        fairness_loss(logits, y, s, num_groups=2.0)
    with pytest.raises(TypeError):
        fairness_loss(logits, y, s, num_groups=True)
    with pytest.raises(ValueError, match="is on meta"):
        fairness_loss(logits, y.to("meta"), s, num_groups=2)
    with pytest.raises(ValueError, match="is on meta"):
        fairness_loss(logits, y, s.to("meta"), num_groups=2)
    # Out-of-range groups or labels fail (on the CPU: an index error), never land in another cell:
    # group 2 of label 0 would otherwise be cell (1, 0).
    for bad_s in ([0, 1, 2, 0, 1, 0], [0, 1, -1, 0, 1, 0]):
        with pytest.raises(IndexError):
            fairness_loss(logits, torch.zeros(6, dtype=torch.int64), torch.tensor(bad_s), num_groups=2)
    with pytest.raises(IndexError):
        fairness_loss(logits[:, :1], torch.tensor([0, 1, 2, 0, 1, 0]), s, num_groups=2)  # binary label 2


@pytest.mark.parametrize("device", DEVICES)
def test_devices(device):
    logits, y, s = batch(20, 2, 2, 8)
    value = fairness_loss(logits.detach().to(device), y.to(device), s.to(device), num_groups=2)
    assert value.device.type == torch.device(device).type
    assert abs(value.item() - fairness_loss_direct(logits, y, s, range(2)).item()) <= loss_bound(logits, y, F64)


# ----- λ ----------------------------------------------------------------------------------------


def test_fairness_weights():
    gen = torch.Generator().manual_seed(0)
    accuracy = [torch.randn(2, 6, generator=gen, dtype=F64) for _ in range(40)]
    fairness = [torch.randn(2, 6, generator=gen, dtype=F64) for _ in range(40)]
    lam = fairness_weights(accuracy, fairness)
    assert lam.shape == (40,) and lam.dtype == F64
    for t, (a, f) in enumerate(zip(accuracy, fairness)):
        dot = float((a * f).sum())
        # The dot's rounding, 12 products in float64: γ_12 Σ |a f|; the decision is clear of it.
        assert abs(dot) > gamma(12, F64) * float((a * f).abs().sum())
        assert float(lam[t]) == (0.0 if dot < 0 else 1.0)
    assert 5 < float(lam.sum()) < 35  # both cases occur
    # Exactly orthogonal (dot 0): no conflict, λ = 1; any shapes, equal per task; float32 in, float32 out.
    lam = fairness_weights([torch.tensor([1.0, 0.0]), torch.ones(3)], [torch.tensor([0.0, 5.0]), -torch.ones(3)])
    assert lam.tolist() == [1.0, 0.0] and lam.dtype == torch.float32
    with pytest.raises(ValueError):
        fairness_weights([torch.ones(2)], [torch.ones(3)])
    with pytest.raises(ValueError):
        fairness_weights([torch.ones(2)], [torch.ones(2), torch.ones(2)])
    with pytest.raises(ValueError):
        fairness_weights([], [])
    assert fastmtl.losses.fairness_weights is fairness_weights
