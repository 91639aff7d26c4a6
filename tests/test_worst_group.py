"""Worst-group training (fastmtl.losses.worst_group): the activation L1 penalty and its fixed
normaliser, the regularised MTL loss and its gradient, JTT's error set / weights / sampler,
online Group DRO against a hand-written per-step implementation, and model selection by
worst-group accuracy.

Exactness: most hand cases use dyadic rationals with few significant bits (small integers,
halves, quarters), so every float64 operation in them is exact and any summation order gives
the same bits; those are compared with ==. Where that is not possible the tolerance is derived
from the rounding error of the few float64 operations involved (see each test)."""

import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from fastmtl.losses import (ActivationL1, GroupDRO, RegularizedMTL, WorstGroupSelection, activation_l1,
                            jtt_error_set, jtt_sampler, jtt_weights)

U64 = 2.0**-53  # unit roundoff of float64
F64 = torch.float64


# ------------------------------------------------------------------------------ ActivationL1

def test_activation_l1_normaliser_is_fixed_by_the_first_batch():
    l1 = ActivationL1()
    first = torch.tensor([[1.0, -2.0], [3.0, -4.0]], dtype=F64)  # ‖h‖₁ = 10, numel 4
    assert l1(first).item() == 2.5
    assert l1.numel == 4
    smaller = torch.tensor([[-6.0, 2.0]], dtype=F64)  # ‖h‖₁ = 8, divided by 4, not by its own 2
    assert l1(smaller).item() == 2.0
    larger = torch.full((3, 4), -1.0, dtype=F64)  # ‖h‖₁ = 12, still divided by 4
    assert l1(larger).item() == 3.0
    # The per-batch mean divides by each batch's own numel.
    assert activation_l1(smaller).item() == 4.0
    assert activation_l1(larger).item() == 1.0


def test_activation_l1_state_round_trip_and_half_precision():
    l1 = ActivationL1()
    l1(torch.ones(2, 4))
    restored = ActivationL1()
    restored.load_state_dict(l1.state_dict())
    assert restored.numel == 8
    assert restored(torch.full((2,), -4.0)).item() == 1.0  # 8 / 8
    # float16: 4096 values of 16 sum to 65536 > float16's max 65504, yet the mean 16 is exact.
    half = ActivationL1()(torch.full((4096,), 16.0, dtype=torch.float16))
    assert half.dtype == torch.float32 and half.item() == 16.0
    fresh = ActivationL1()
    fresh.load_state_dict({"numel": None})
    assert fresh.numel is None


def test_activation_l1_rejects_bad_input():
    with pytest.raises(TypeError, match="h must be a torch.Tensor"):
        ActivationL1()([1.0, 2.0])
    with pytest.raises(TypeError, match="floating-point"):
        activation_l1(torch.ones(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="empty"):
        ActivationL1()(torch.ones(0, 4))
    with pytest.raises(ValueError, match="numel must be an int >= 1"):
        ActivationL1().load_state_dict({"numel": 0})


# ---------------------------------------------------------------------------- RegularizedMTL

def test_regularized_mtl_defaults_are_the_papers_civilcomments_setting():
    loss = RegularizedMTL()
    assert (loss.w_erm, loss.w_mt, loss.w_reg) == (1.0, 1.0, math.exp(-1))


def test_regularized_mtl_hand_case_value_and_gradient():
    end = torch.tensor(0.5, dtype=F64, requires_grad=True)
    aux = torch.tensor(0.25, dtype=F64, requires_grad=True)
    h_end = torch.tensor([[1.0, -2.0], [3.0, -4.0]], dtype=F64, requires_grad=True)  # L1 = 10/4
    h_aux = torch.tensor([-1.0, 1.0, 2.0, 0.0], dtype=F64, requires_grad=True)  # L1 = 4/4
    total = RegularizedMTL(w_erm=1.0, w_mt=0.5, w_reg=0.25)(end, aux, h_end, h_aux)
    # 1·0.5 + 0.5·0.25 + 0.25·(2.5 + 1) = 0.5 + 0.125 + 0.875
    assert total.item() == 1.5
    total.backward()
    assert end.grad.item() == 1.0 and aux.grad.item() == 0.5
    # d/dh of w_reg·|h|/n = w_reg·sign(h)/n = 0.25/4 · sign(h); |h|'s gradient at 0 is 0.
    assert torch.equal(h_end.grad, torch.tensor([[1.0, -1.0], [1.0, -1.0]], dtype=F64) / 16)
    assert torch.equal(h_aux.grad, torch.tensor([-1.0, 1.0, 1.0, 0.0], dtype=F64) / 16)


def _toy_forward(W, x, mask):
    """A linear encoder, an end-task head (sum of features, squared error) and a reconstruction
    auxiliary loss on masked inputs. With the dyadic values below every operation is exact."""
    y = torch.tensor([1.0, -2.0], dtype=F64)
    h_end = x @ W.T
    end_loss = ((h_end.sum(1) - y) ** 2).mean()
    h_aux = (x * mask) @ W.T
    aux_loss = ((h_aux - x) ** 2).mean()
    return end_loss, aux_loss, h_end, h_aux


def test_regularized_mtl_gradient_equals_autograd_of_the_hand_written_sum():
    x = torch.tensor([[1.0, 2.0], [-1.0, 0.5]], dtype=F64)
    mask = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=F64)
    W0 = torch.tensor([[0.5, -1.0], [1.0, 0.25]], dtype=F64)
    w_erm, w_mt, w_reg = 1.0, 0.5, 0.25

    W = W0.clone().requires_grad_()
    loss = RegularizedMTL(w_erm, w_mt, w_reg)
    ours = loss(*_toy_forward(W, x, mask))
    ours.backward()

    V = W0.clone().requires_grad_()
    end_loss, aux_loss, h_end, h_aux = _toy_forward(V, x, mask)
    hand = w_erm * end_loss + w_mt * aux_loss + w_reg * (h_end.abs().sum() / h_end.numel()
                                                         + h_aux.abs().sum() / h_aux.numel())
    hand.backward()
    # Dyadic inputs with a handful of bits: all products and sums here are exact in float64.
    assert ours.item() == hand.item()
    assert torch.equal(W.grad, V.grad)
    assert set(loss.last_terms) == {"end", "aux", "l1_end", "l1_aux"}
    assert not any(t.requires_grad for t in loss.last_terms.values())


def test_regularized_mtl_gradient_on_random_activations_within_a_derived_bound():
    """Random (non-dyadic) values and the default w_reg = e⁻¹. The gradient w.r.t. h is
    w_reg·sign(h)/n: autograd forms it by two roundings (× w_reg, ÷ n) and the oracle by one
    (the quotient w_reg/n; sign is exact), so the two differ by at most 3u relative."""
    gen = torch.Generator().manual_seed(0)
    h_end = torch.randn(5, 7, dtype=F64, generator=gen).requires_grad_()
    h_aux = torch.randn(3, 11, dtype=F64, generator=gen).requires_grad_()
    end = torch.rand((), dtype=F64, generator=gen).requires_grad_()
    aux = torch.rand((), dtype=F64, generator=gen).requires_grad_()
    loss = RegularizedMTL()
    loss(end, aux, h_end, h_aux).backward()
    w_reg = math.exp(-1)
    for h, n in ((h_end, 35), (h_aux, 33)):
        expected = torch.sign(h.detach()) * (w_reg / n)
        assert ((h.grad - expected).abs() <= 3 * U64 * expected.abs()).all()
    assert end.grad.item() == 1.0 and aux.grad.item() == 1.0


def test_regularized_mtl_special_cases():
    end = torch.tensor(0.5, dtype=F64)
    aux = torch.tensor(0.25, dtype=F64)
    h_end = torch.tensor([[1.0, -2.0], [3.0, -4.0]], dtype=F64)  # L1 = 2.5
    h_aux = torch.tensor([-1.0, 1.0, 2.0, 0.0], dtype=F64)  # L1 = 1
    # ERM+L1: no auxiliary forward.
    assert RegularizedMTL(w_mt=0.0, w_reg=0.25)(end, None, h_end).item() == 0.5 + 0.25 * 2.5
    assert RegularizedMTL(w_reg=0.25)(end, h_end=h_end).item() == 0.5 + 0.25 * 2.5
    # MT: w_reg = 0 needs no activations.
    assert RegularizedMTL(w_mt=0.5, w_reg=0.0)(end, aux).item() == 0.5 + 0.5 * 0.25
    # ERM.
    assert RegularizedMTL(w_reg=0.0)(end).item() == 0.5
    # w_mt = 0 leaves the auxiliary loss out (an inf there would make 0·inf = NaN) but keeps its L1.
    inf = torch.tensor(float("inf"), dtype=F64)
    assert RegularizedMTL(w_mt=0.0, w_reg=0.25)(end, inf, h_end, h_aux).item() == 0.5 + 0.25 * 3.5


def test_regularized_mtl_keeps_one_normaliser_per_forward():
    loss = RegularizedMTL(w_erm=0.0, w_mt=1.0, w_reg=1.0)
    zero = torch.tensor(0.0)
    loss(zero, zero, torch.ones(2, 2), torch.ones(2, 4))  # normalisers 4 and 8
    assert (loss.l1_end.numel, loss.l1_aux.numel) == (4, 8)
    total = loss(zero, zero, torch.ones(1, 2), torch.ones(1, 4))  # 2/4 + 4/8
    assert total.item() == 1.0
    restored = RegularizedMTL()
    restored.load_state_dict(loss.state_dict())
    assert (restored.w_erm, restored.w_mt, restored.w_reg) == (0.0, 1.0, 1.0)
    assert restored(zero, zero, torch.ones(1, 2), torch.ones(1, 4)).item() == 1.0


def test_regularized_mtl_option_and_argument_checks():
    assert RegularizedMTL(w_mt=np.float64(0.5), w_reg=np.int64(1)).w_mt == 0.5  # numpy scalars accepted
    with pytest.raises(ValueError, match="w_reg must be >= 0"):
        RegularizedMTL(w_reg=-0.1)
    with pytest.raises(ValueError, match="w_mt must be finite"):
        RegularizedMTL(w_mt=float("nan"))
    with pytest.raises(TypeError, match="w_erm must be a real number"):
        RegularizedMTL(w_erm=True)
    with pytest.raises(TypeError, match="w_erm must be a real number"):
        RegularizedMTL(w_erm="1")
    with pytest.raises(ValueError, match="all 0"):
        RegularizedMTL(0.0, 0.0, 0.0)
    loss, end, h = RegularizedMTL(), torch.tensor(1.0), torch.ones(2, 3)
    with pytest.raises(ValueError, match="h_end .* is required"):
        loss(end, end)
    with pytest.raises(ValueError, match="h_aux .* is required with aux_loss"):
        loss(end, end, h)
    with pytest.raises(ValueError, match="h_aux was given without aux_loss"):
        loss(end, None, h, h)
    with pytest.raises(TypeError, match="end_loss must be a scalar torch.Tensor"):
        loss(1.0, None, h)
    with pytest.raises(ValueError, match="end_loss must be a floating-point scalar"):
        loss(torch.ones(2), None, h)
    with pytest.raises(ValueError, match="aux_loss must be a floating-point scalar"):
        loss(end, torch.ones(3), h, h)


# ----------------------------------------------------------------------------------------- JTT

def _identity_classifier():
    """Linear 2 -> 2 with W = I, b = 0: predicts the index of the larger input."""
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
        model.bias.zero_()
    return model


X = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, 4.0], [1.0, 2.0], [3.0, -1.0]])
Y = torch.tensor([0, 0, 0, 1, 1])  # predictions are 0, 1, 0, 1, 0: examples 1 and 4 are wrong
EXPECTED_ERRORS = [False, True, False, False, True]


def test_jtt_error_set_on_a_known_linear_model():
    model = _identity_classifier()
    before = [p.detach().clone() for p in model.parameters()]
    loader = DataLoader(TensorDataset(X, Y, torch.arange(5)), batch_size=2, shuffle=False)  # (x, y, index)
    errors = jtt_error_set(model, loader)
    assert errors.dtype == torch.bool and errors.tolist() == EXPECTED_ERRORS
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert all(p.grad is None for p in model.parameters())
    # A plain list of (x, y) batches, and device= moving them.
    batches = [(X[:3], Y[:3]), (X[3:], Y[3:])]
    assert jtt_error_set(model, batches, device="cpu").tolist() == EXPECTED_ERRORS


def test_jtt_error_set_single_logit_and_predict():
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():  # logit x0 - x1 > 0 predicts 1: predictions 1, 0, 1, 0, 1
        model.weight.copy_(torch.tensor([[1.0, -1.0]]))
        model.bias.zero_()
    y = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0])  # BCE-style float labels: examples 1 and 4 wrong
    assert jtt_error_set(model, [(X, y)]).tolist() == EXPECTED_ERRORS
    # A logit of exactly 0 predicts class 0 (the rule is logit > 0).
    tie = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    assert jtt_error_set(model, [(tie, torch.tensor([0.0, 1.0]))]).tolist() == [False, True]
    # predict= for a model whose output is not plain logits.
    assert jtt_error_set(model, [(X, y)], predict=lambda m, x: (m(x)[:, 0] < 0).long()).tolist() == \
        [True, False, True, True, False]


def test_jtt_error_set_uses_eval_mode_and_restores_each_module():
    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = _identity_classifier()
            self.frozen = torch.nn.Dropout(0.5)
            self.seen = []

        def forward(self, x):
            self.seen.append((self.training, self.inner.training, torch.is_grad_enabled()))
            return self.inner(x)

    model = Recorder()
    model.train()
    model.frozen.eval()  # a submodule kept in eval mode must stay so
    jtt_error_set(model, [(X, Y)])
    assert model.seen == [(False, False, False)]
    assert model.training and model.inner.training and not model.frozen.training


def test_jtt_error_set_refuses_a_shuffling_loader_and_bad_batches():
    data = TensorDataset(X, Y)
    with pytest.raises(ValueError, match="random order"):
        jtt_error_set(_identity_classifier(), DataLoader(data, batch_size=2, shuffle=True))
    sampler = torch.utils.data.WeightedRandomSampler(torch.ones(5), 5)
    with pytest.raises(ValueError, match="random order"):
        jtt_error_set(_identity_classifier(), DataLoader(data, batch_size=2, sampler=sampler))
    with pytest.raises(ValueError, match="no batches"):
        jtt_error_set(_identity_classifier(), [])
    with pytest.raises(ValueError, match=r"\(x, y\)"):
        jtt_error_set(_identity_classifier(), [X])
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        jtt_error_set(_identity_classifier(), [(X[:3], Y[:2])])
    with pytest.raises(TypeError, match="predict must be a callable"):
        jtt_error_set(_identity_classifier(), [(X, Y)], predict=1)


def test_jtt_weights():
    errors = torch.tensor(EXPECTED_ERRORS)
    assert jtt_weights(errors).tolist() == [1.0, 20.0, 1.0, 1.0, 20.0]  # default λ_up = 20
    assert jtt_weights(errors, np.int64(6)).tolist() == [1.0, 6.0, 1.0, 1.0, 6.0]
    assert jtt_weights(errors, 1.0).tolist() == [1.0] * 5
    assert jtt_weights(errors).dtype == torch.float32
    with pytest.raises(ValueError, match="lambda_up must be >= 1"):
        jtt_weights(errors, 0.5)
    with pytest.raises(TypeError, match="errors must be a bool tensor"):
        jtt_weights(errors.long())
    with pytest.raises(ValueError, match="non-empty 1-D"):
        jtt_weights(torch.zeros(0, dtype=torch.bool))


def test_jtt_sampler_draws_in_proportion_to_the_weights():
    weights = jtt_weights(torch.tensor([False, True, False, False]))  # 1, 20, 1, 1: p = (1, 20, 1, 1)/23
    draws = 23_000
    sampler = jtt_sampler(weights, draws, generator=torch.Generator().manual_seed(0))
    assert sampler.replacement and len(sampler) == draws
    counts = torch.bincount(torch.tensor(list(sampler)), minlength=4).double()
    p = weights.double() / weights.double().sum()
    # Each count is Binomial(draws, p_i): mean draws·p_i, variance draws·p_i(1 - p_i). A correct
    # sampler leaves a 5σ band with probability < 6e-7 per cell (normal approximation; the fixed
    # generator makes the test deterministic), while a sampler ignoring the weights misses the
    # expected 20000 for index 1 by ~14000 ≈ 450σ.
    sigma = (draws * p * (1 - p)).sqrt()
    assert ((counts - draws * p).abs() <= 5 * sigma).all(), counts
    assert len(jtt_sampler(weights)) == 4  # default: one epoch's worth, N draws


def test_jtt_sampler_checks():
    with pytest.raises(TypeError, match="floating-point tensor"):
        jtt_sampler(torch.ones(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="non-empty 1-D"):
        jtt_sampler(torch.ones(2, 2))
    with pytest.raises(ValueError, match="finite, >= 0 and not all 0"):
        jtt_sampler(torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="finite, >= 0 and not all 0"):
        jtt_sampler(torch.zeros(3))
    with pytest.raises(ValueError, match="num_samples must be an int >= 1"):
        jtt_sampler(torch.ones(3), 0)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        jtt_sampler(torch.ones(3), generator=0)


# ---------------------------------------------------------------------------------- Group DRO

def _dro_reference(batches, n_groups, eta):
    """Sagawa et al.'s online Group DRO written out per step with Python floats: the loss, q
    after the step, and the largest |log q_g + η ℓ_g| of the step (for the error bound)."""
    q = [1.0 / n_groups] * n_groups
    out = []
    for losses, groups in batches:
        ell = []
        for g in range(n_groups):
            members = [loss for loss, k in zip(losses, groups) if k == g]
            ell.append(sum(members) / len(members) if members else 0.0)
        x_max = max(abs(math.log(q[g])) + eta * ell[g] for g in range(n_groups))  # |log q + ηℓ|, for the bound
        q = [q[g] * math.exp(eta * ell[g]) if g in groups else q[g] for g in range(n_groups)]
        total = sum(q)
        q = [v / total for v in q]
        out.append((sum(q[g] * ell[g] for g in range(n_groups)), list(q), x_max))
    return out


def _dro_batches():
    # Four groups; group 3 is absent in steps 0 and 2, groups 0 and 2 in step 1, only group 1 in step 3.
    return [
        ([0.5, 1.5, 2.0, 0.25, 3.0], [0, 0, 1, 2, 2]),
        ([4.0, 0.125, 1.0], [1, 3, 3]),
        ([0.75, 2.5, 0.5, 6.0], [2, 1, 0, 0]),
        ([1.25, 3.5], [1, 1]),
        ([0.3, 2.2, 1.7, 0.9, 5.1, 0.4], [3, 0, 1, 2, 3, 0]),
    ]


def test_group_dro_matches_the_hand_written_steps():
    n_groups, eta = 4, 0.7
    reference = _dro_reference(_dro_batches(), n_groups, eta)
    dro = GroupDRO(n_groups, step_size=eta)
    # The implementation works in log space: q_new = softmax(log q + η ℓ). Each step rounds
    # log q (abs error ≤ u|log q|), the sum x = log q + ηℓ and its shift by max x (≤ 3u|x| more),
    # exp (≤ u·|x| + u relative) and a normalising sum of G terms (γ_G); the reference rounds
    # its product, exp and sum of G terms. Per step the relative error is thus at most
    # (4 max|x| + 2G + 6)u; errors in q carry into later steps, so over S steps at most S times
    # that. The loss adds a dot product of G terms (γ_G) and the group means (B terms each).
    steps = len(reference)
    x_max = max(x for _, _, x in reference)
    rtol = steps * (4 * x_max + 2 * n_groups + 6) * U64 + 2 * (n_groups + 6) * U64
    for (losses, groups), (expected_loss, expected_q, _) in zip(_dro_batches(), reference):
        per_sample = torch.tensor(losses, dtype=F64, requires_grad=True)
        loss = dro(per_sample, torch.tensor(groups))
        q = dro.q
        assert torch.allclose(q, torch.tensor(expected_q, dtype=F64), rtol=rtol, atol=0)
        assert abs(loss.item() - expected_loss) <= rtol * expected_loss
        # q is detached: d loss / d loss_i = q_g / n_g for sample i in group g.
        loss.backward()
        counts = [groups.count(g) for g in range(n_groups)]
        expected_grad = torch.tensor([expected_q[g] / counts[g] for g in groups], dtype=F64)
        assert torch.allclose(per_sample.grad, expected_grad, rtol=rtol, atol=0)
        assert not q.requires_grad
    assert torch.allclose(q.sum(), torch.tensor(1.0, dtype=F64), rtol=(n_groups + 2) * U64, atol=0)


def test_group_dro_absent_groups_change_only_by_renormalisation():
    dro = GroupDRO(3, step_size=1.0)
    dro(torch.tensor([2.0, 4.0]), torch.tensor([0, 0]))  # ℓ = (3, 0, 0): q ∝ (e³, 1, 1)
    expected = torch.tensor([math.exp(3.0), 1.0, 1.0], dtype=F64)
    expected /= expected.sum()
    assert torch.allclose(dro.q, expected, rtol=20 * U64, atol=0)
    assert dro.q[1] == dro.q[2]
    group_loss, present = dro.group_losses(torch.tensor([2.0, 4.0]), torch.tensor([0, 0]))
    assert group_loss.tolist() == [3.0, 0.0, 0.0] and present.tolist() == [True, False, False]


def test_group_dro_state_round_trip_and_zero_step():
    batches = _dro_batches()
    dro = GroupDRO(4, step_size=0.3)
    for losses, groups in batches[:3]:
        dro(torch.tensor(losses, dtype=F64), torch.tensor(groups))
    restored = GroupDRO(4)
    restored.load_state_dict(dro.state_dict())
    assert restored.step_size == 0.3 and torch.equal(restored.q, dro.q)
    losses, groups = torch.tensor(batches[3][0], dtype=F64), torch.tensor(batches[3][1])
    assert torch.equal(dro(losses, groups), restored(losses, groups))
    assert torch.equal(dro.q, restored.q)
    # step_size 0: q stays uniform, the loss is the mean over groups of the present groups' means
    # (absent groups count as 0): (1 + 2 + 0) / 3 with exact dyadic values.
    flat = GroupDRO(3, step_size=0.0)
    assert flat(torch.tensor([0.5, 1.5, 2.0], dtype=F64), torch.tensor([0, 0, 1])).item() == 1.0
    assert torch.equal(flat.q, torch.full((3,), 1.0 / 3, dtype=F64))


def test_group_dro_skips_non_finite_steps():
    dro = GroupDRO(2, step_size=0.5)
    dro(torch.tensor([1.0, 2.0]), torch.tensor([0, 1]))
    q = dro.q.clone()
    dro(torch.tensor([float("inf"), 2.0]), torch.tensor([0, 1]))
    assert torch.equal(dro.q, q)
    dro(torch.tensor([1.0, float("nan")]), torch.tensor([0, 1]))
    assert torch.equal(dro.q, q)
    dro(torch.tensor([1.0, 3.0]), torch.tensor([0, 1]))  # and a finite step moves q again
    assert dro.q[1] > q[1]


def test_group_dro_checks():
    with pytest.raises(ValueError, match="n_groups must be an int >= 1"):
        GroupDRO(0)
    with pytest.raises(ValueError, match="step_size must be >= 0"):
        GroupDRO(2, step_size=-1.0)
    with pytest.raises(TypeError, match="n_groups must be an int"):
        GroupDRO(2.0)
    assert GroupDRO(np.int64(3), np.float32(0.5)).n_groups == 3
    dro = GroupDRO(3)
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\), got min 0 and max 3"):
        dro(torch.ones(2), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="must lie in"):
        dro(torch.ones(2), torch.tensor([-1, 0]))
    with pytest.raises(TypeError, match="groups must be an int64"):
        dro(torch.ones(2), torch.tensor([0, 1], dtype=torch.int32))
    with pytest.raises(TypeError, match="1-D floating-point"):
        dro(torch.ones(2, 1), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="same non-empty shape"):
        dro(torch.ones(3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="state q must be a tensor of shape"):
        dro.load_state_dict({"q": torch.ones(2), "n_groups": 3, "step_size": 0.1})
    assert torch.equal(dro.q, torch.full((3,), 1.0 / 3, dtype=F64))  # failed calls left q alone


# ------------------------------------------------------------------------ WorstGroupSelection

def test_worst_group_selection_keeps_the_best_and_the_earlier_on_ties():
    model = torch.nn.Linear(2, 1)
    selection = WorstGroupSelection()
    assert selection.best_state is None and selection.best_wga is None and selection.best_step is None

    def set_weight(value):
        with torch.no_grad():
            model.weight.fill_(value)

    set_weight(1.0)
    assert selection.update(0, 0.5, model)
    set_weight(2.0)
    assert selection.update(1, torch.tensor(0.75), model)  # a 0-d tensor
    set_weight(3.0)
    assert not selection.update(2, 0.75, model)  # a tie: the earlier stays
    set_weight(4.0)
    assert not selection.update(3, np.float64(0.625), model)
    assert (selection.best_step, selection.best_wga) == (1, 0.75)
    assert torch.equal(selection.best_state["weight"], torch.full((1, 2), 2.0))  # a copy, not a view
    selection.load_best(model)
    assert torch.equal(model.weight.detach(), torch.full((1, 2), 2.0))


def test_worst_group_selection_checks():
    selection, model = WorstGroupSelection(), torch.nn.Linear(1, 1)
    with pytest.raises(ValueError, match="no state kept yet"):
        selection.load_best(model)
    with pytest.raises(ValueError, match="wga must be finite"):
        selection.update(0, float("nan"), model)
    with pytest.raises(ValueError, match="0-d tensor"):
        selection.update(0, torch.tensor([0.5, 0.6]), model)
    with pytest.raises(ValueError, match="step must be an int >= 0"):
        selection.update(-1, 0.5, model)
    with pytest.raises(TypeError, match="must have a state_dict"):
        selection.update(0, 0.5, object())
    assert selection.best_state is None
