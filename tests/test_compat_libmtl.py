"""fastmtl.compat.libmtl against LibMTL 1.1.5's own weightings (tests/libmtl_oracle.py loads them
without LibMTL's package __init__), and inside LibMTL's Trainer on MultiDigits-3.

Both classes are mixed into LibMTL's HPS architecture as the Trainer does (a float64 encoder
Linear(6, 8)-tanh-Linear(8, 5), one Linear(5, 1) head per task, B = 16 samples, squared losses
with targets of different scales), built from the same seed, and run ``backward`` on the same
losses after the same ``random.seed`` / ``torch.manual_seed`` (so LibMTL's Python task orders and
RLW's draws coincide). LibMTL's copy zeroes the shared gradients in place (its ``_reset_grad``
needs them to exist: torch >= 2.0's ``zero_grad`` sets them to None, which ours handles, and which
the Trainer test below runs). Tolerances, from error bounds (u = 2⁻⁵³, float64):
* the combination Σ_t w_t g_t of an entry: N = B·H + T terms each side (the gradient entry is a
  sum over B samples and H hidden units, then over T tasks), so |Δ| <= 2 γ_N N Σ_t |w_t| max|g_t|;
* PCGrad, GradVac: the same projections from the same G, ours from K = G Gᵀ, theirs from G. A
  projection (PCGrad's, and GradVac's towards a target: each moves g_iᴾᶜ by a multiple of g_j) is
  computed from a dot product g_iᴾᶜ·g_j, ours as Σ_k A_ik K_kj (A: the coefficients of g_iᴾᶜ over
  the g_k, all >= 0 off the diagonal for both methods, since every step adds a positive multiple
  of a g_j), each within γ_P |g_k||g_j| (P = 101 shared entries): a coefficient within
  γ_P (Σ_k A_ik |g_k| + |g_i|) / |g_j|, and as Σ_i A_ik = w_k, Σ_ik A_ik|g_k| = Σ_k w_k|g_k| =: S_w.
  So |Δw_j| <= 4 γ_P (S_w + Σ_i |g_i|) / |g_j| (a factor 4 of room, GradVac's square roots
  included) and the shared gradient moves by Σ_j |Δw_j| max|g_j| more;
* IMTL's α: ours from the pseudo-inverse of K, LibMTL's from an inverse: both backward stable,
  within 16 T u cond(K) relative (test_libmtl_weightings.py's bound);
* the other weights come from the same float64 numbers by a few roundings (exp, ratios, a softmax
  of T terms): within (T + 8) u relative each (GradNorm's w = T softmax(z) too; its z gradient,
  from the norms |g_t| ours via K, is checked within 1e-9 relative);
* MGDA: LibMTL's Frank-Wolfe stops early, ours (Wolfe's algorithm) is exact: with f(w) = wᵀKw
  strongly convex on the simplex (modulus λ_min(K) > 0 for independent gradients), f(w) - f* >=
  λ_min |w - w*|², so |w_LibMTL - w_ours| <= √((f(w_LibMTL) - f(w_ours)) / λ_min) + rounding;
  the test also checks f(w_ours) <= f(w_LibMTL) (ours is no worse);
* CAGrad: for a simplex point w, cert = F(w) - min_i g_iᵀ d(w) bounds F(w) - F* and |d(w) - d*| <=
  √(2 √φ cert / |g_w|) (methods/cagrad.py); with LibMTL's SLSQP w and ours, |d_LibMTL - d_ours|
  is within the sum of the two plus LibMTL's 1e-8 offsets (c|g0| + 1e-8, √(·+1e-8)), which move d
  by at most 4e-8 (1 + |g0|/|g_w|) for c = 0.5, |g0| ~ 1.
"""

from __future__ import annotations

import math
import random
import subprocess
import sys

import libmtl_oracle
import numpy as np
import pytest
import torch
from conftest import gamma

U = 2.0**-53
B, IN, H, OUT = 16, 6, 8, 5
P_SHARED = IN * H + H + H * OUT + OUT


@pytest.fixture(scope="module")
def lib():
    libmtl_oracle.skip_unless_installed()
    from fastmtl.compat import libmtl as ours

    return ours


@pytest.fixture(autouse=True)
def float64_default():
    with libmtl_oracle.float64():
        yield


def build(weighting, T, seed=0, rep_grad=False, zero_in_place=False):
    """LibMTL's HPS with ``weighting`` mixed in, as the Trainer builds its model (float64)."""
    HPS = libmtl_oracle.module("architecture.HPS").HPS
    names = [f"t{t}" for t in range(T)]
    torch.manual_seed(seed)
    decoders = torch.nn.ModuleDict({name: torch.nn.Linear(OUT, 1) for name in names})

    def encoder():
        return torch.nn.Sequential(torch.nn.Linear(IN, H), torch.nn.Tanh(), torch.nn.Linear(H, OUT))

    class Model(HPS, weighting):
        def __init__(self):
            super().__init__(names, encoder, decoders, rep_grad, False, torch.device("cpu"))
            self.init_param()
            self.epoch, self.train_loss_buffer = 0, np.random.default_rng(seed).uniform(0.5, 2.0, (T, 10))

        if zero_in_place:
            def zero_grad_share_params(self):
                for p in self.encoder.parameters():
                    if p.grad is not None:
                        p.grad.zero_()

    return Model().double()


def losses_of(model, T, step=0, seed=0):
    g = torch.Generator().manual_seed(1000 * seed + step)
    x = torch.randn(B, IN, generator=g, dtype=torch.float64)
    scales = torch.arange(1, T + 1, dtype=torch.float64).view(-1, 1, 1)
    ys = torch.randn(T, B, 1, generator=g, dtype=torch.float64) * scales
    preds = model(x)
    losses = torch.zeros(T)
    for t in range(T):
        losses[t] = ((preds[f"t{t}"] - ys[t]) ** 2).mean()
    return losses


def shared_grad(model):
    return torch.cat([p.grad.reshape(-1) for p in model.encoder.parameters()])


def head_grad(model):
    return torch.cat([p.grad.reshape(-1) for p in model.decoders.parameters()])


def task_gradients(model, T, step=0, seed=0):
    """The test's own G [T, P] (for tolerances and hand checks)."""
    losses = losses_of(model, T, step, seed)
    shared = list(model.encoder.parameters())
    return torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, shared, retain_graph=True)])
                        for loss in losses])


def combination_bound(G, weights):
    N = B * H + G.shape[0]
    weights = torch.as_tensor(np.asarray(weights, dtype=np.float64))
    return 2 * gamma(N, torch.float64) * N * float((weights.abs() * G.abs().amax(1)).sum())


def weights_bound(name, G, weights):
    """|Δw| per task (see the module docstring)."""
    T = G.shape[0]
    weights = torch.as_tensor(np.asarray(weights, dtype=np.float64))
    norms = G.norm(dim=1)
    if name in ("PCGrad", "GradVac"):
        return 4 * gamma(P_SHARED, torch.float64) * float((weights * norms).sum() + norms.sum()) / norms
    if name == "IMTL":
        eigenvalues = torch.linalg.eigvalsh(G @ G.T)
        return 16 * T * U * float(eigenvalues[-1] / eigenvalues[0]) * weights.abs().max() * torch.ones(T)
    return (T + 8) * U * weights.abs().clamp_min(1.0)


def side_by_side(lib, name, tasks=3, steps=3, seed=0, rep_grad=False, **weight_args):
    """Per step, LibMTL's class and ours on the same model state and losses: both models share
    initial values, and after each step ours is copied into theirs (learnable tensors too)."""
    T = tasks
    theirs = build(libmtl_oracle.weighting_class(name), T, seed, rep_grad, zero_in_place=True)
    mine = build(getattr(lib, name), T, seed, rep_grad)
    opt = torch.optim.SGD(mine.parameters(), lr=0.05)
    records = []
    for step in range(steps):
        with torch.no_grad():
            for a, b in zip(theirs.parameters(), mine.parameters()):
                a.copy_(b)
        theirs.zero_grad(), mine.zero_grad()
        for model in (theirs, mine):
            model.epoch = step
        G = None if rep_grad else task_gradients(mine, T, step, seed)  # (rep_grad: the heads see a detached copy)
        mine.zero_grad()
        random.seed(100 + step), torch.manual_seed(100 + step)
        losses = losses_of(theirs, T, step, seed)
        w_theirs = theirs.backward(losses, **weight_args)
        random.seed(100 + step), torch.manual_seed(100 + step)
        w_mine = mine.backward(losses_of(mine, T, step, seed), **weight_args)
        records.append({"G": G, "losses": losses.detach().clone(), "theirs": theirs, "mine": mine, "w_theirs": w_theirs, "w_mine": w_mine,
                            "shared_theirs": shared_grad(theirs).clone(), "shared_mine": shared_grad(mine).clone(),
                            "heads_theirs": head_grad(theirs).clone(), "heads_mine": head_grad(mine).clone()})
        opt.step()
    return records


def assert_within(actual, expected, bound, what):
    error = float((torch.as_tensor(actual, dtype=torch.float64) - torch.as_tensor(expected, dtype=torch.float64))
                  .abs().max())
    assert error <= bound, f"{what}: max error {error:.3g} > bound {bound:.3g}"


@pytest.mark.parametrize("name, args", [("EW", {}), ("UW", {}), ("DWA", {"T": 2.0}), ("RLW", {"dist": "Normal"}),
                                        ("PCGrad", {}), ("GradVac", {"beta": 0.5}), ("IMTL", {}),
                                        ("GradNorm", {"alpha": 1.5})])
def test_same_gradients_as_libmtl(lib, name, args):
    for r in side_by_side(lib, name, tasks=3, steps=4, **args):
        G = r["G"]
        dw = weights_bound(name, G, r["w_theirs"])
        errors = (torch.as_tensor(r["w_mine"]) - torch.as_tensor(r["w_theirs"])).abs()
        assert (errors <= dw).all(), f"{name} weights: errors {errors.tolist()} > bounds {dw.tolist()}"
        bound = combination_bound(G, r["w_theirs"]) + float((dw * G.abs().amax(1)).sum())
        assert_within(r["shared_mine"], r["shared_theirs"], bound, f"{name} shared gradient")
        assert_within(r["heads_mine"], r["heads_theirs"], bound + 64 * U * float(r["heads_theirs"].abs().max()),
                      f"{name} head gradients")
    for attr in ("loss_scale",):
        if hasattr(r["theirs"], attr) and r["theirs"].loss_scale.grad is not None:
            assert_within(r["mine"].loss_scale.grad, r["theirs"].loss_scale.grad,
                          1e-9 * float(r["theirs"].loss_scale.grad.abs().max()) + 1e-12, f"{name} loss_scale grad")


def test_pcgrad_changes_something(lib):
    """The comparison above is not vacuous: some projection happens (w != 1) and the LibMTL scale
    is the sum: with no conflict at all the update is Σ_t g_t."""
    records = side_by_side(lib, "PCGrad", tasks=3, steps=4)
    assert any(np.abs(r["w_mine"] - 1).max() > 1e-3 for r in records)
    r = records[0]
    assert_within(r["shared_mine"], torch.as_tensor(r["w_mine"]) @ r["G"], combination_bound(r["G"], r["w_mine"]),
                  "w . G")


@pytest.mark.parametrize("gn", ["none", "l2", "loss", "loss+"])
def test_mgda_within_libmtl_solver_error(lib, gn):
    for r in side_by_side(lib, "MGDA", tasks=3, steps=3, mgda_gn=gn):
        G, losses = r["G"], r["losses"]
        norms = G.norm(dim=1)
        scale = {"none": torch.ones(3), "l2": norms, "loss": losses, "loss+": losses * norms}[gn]
        Kn = (G / scale[:, None]) @ (G / scale[:, None]).T
        w_lib, w_ours = torch.as_tensor(r["w_theirs"]), torch.as_tensor(r["w_mine"])
        f_lib, f_ours = float(w_lib @ Kn @ w_lib), float(w_ours @ Kn @ w_ours)
        assert f_ours <= f_lib * (1 + 1e-12) + 1e-300
        lam = float(torch.linalg.eigvalsh(Kn)[0])
        bound = math.sqrt(max(f_lib - f_ours, 0.0) / lam) + 1e-10
        assert_within(w_ours, w_lib, bound, "MGDA sol")
        assert abs(float(w_ours.sum()) - 1) < 1e-12 and float(w_ours.min()) >= 0
        shared_bound = combination_bound(G, w_lib / scale) + float(((bound / scale) * G.abs().amax(1)).sum())
        assert_within(r["shared_mine"], r["shared_theirs"], shared_bound, "MGDA shared gradient")


def _cagrad_cert(G, w, c_phi):
    g0 = G.mean(0)
    g_w = w @ G
    d = g0 + c_phi * g_w / g_w.norm()
    F = float(g_w @ g0 + c_phi * g_w.norm())
    return F - float((G @ d).min()), float(g_w.norm())


def test_cagrad_within_libmtl_solver_error(lib):
    for r in side_by_side(lib, "CAGrad", tasks=3, steps=3, calpha=0.5, rescale=1):
        G = r["G"]
        g0 = G.mean(0)
        c_phi = 0.5 * float(g0.norm())
        bound = 0.0
        w_lib = torch.as_tensor(r["w_theirs"])  # LibMTL returns the simplex point
        for w in (w_lib, ):
            cert, gw = _cagrad_cert(G, w, c_phi)
            bound += math.sqrt(2 * c_phi * max(cert, 0.0) / gw)
        # ours: recover the simplex point from the update's weights (rescale 1: divided by 1 + c²)
        lam_w = torch.as_tensor(r["w_mine"]) * 1.25 - 1 / 3
        cert, gw = _cagrad_cert(G, lam_w / lam_w.sum(), c_phi)
        assert cert <= 1e-10 * float(G.norm()) ** 2, "ours is optimal to rounding"
        bound += math.sqrt(2 * c_phi * max(cert, 0.0) / gw) + 4e-8 * (1 + float(g0.norm()) / gw)
        bound = bound / 1.25 + combination_bound(G, r["w_mine"])
        assert_within(r["shared_mine"], r["shared_theirs"], bound, "CAGrad shared gradient")


def test_gls_and_graddrop(lib):
    """GLS: LibMTL's gradient, our true weights GLS / (T L_t); GradDrop with leak = 1 keeps every
    gradient (the sum, on the representation), with leak = 0 it differs from EW."""
    r = side_by_side(lib, "GLS", tasks=3, steps=1)[0]
    losses = r["losses"]
    gls = float(losses.prod() ** (1 / 3))
    assert_within(r["w_mine"], gls / (3 * losses), 16 * U * gls / float(losses.min()), "GLS weights")
    assert_within(r["shared_mine"], r["shared_theirs"], combination_bound(r["G"], r["w_mine"]) * 4, "GLS gradient")
    ew = side_by_side(lib, "EW", tasks=3, steps=1)[0]
    kept = side_by_side(lib, "GradDrop", tasks=3, steps=1, rep_grad=True, leak=1.0)[0]
    assert_within(kept["shared_mine"], ew["shared_mine"], combination_bound(ew["G"], np.ones(3)) * 4, "leak=1")
    assert_within(kept["shared_mine"], kept["shared_theirs"], combination_bound(ew["G"], np.ones(3)) * 4,
                  "leak=1 vs LibMTL")
    dropped = side_by_side(lib, "GradDrop", tasks=3, steps=1, rep_grad=True, leak=0.0)[0]
    assert float((dropped["shared_mine"] - ew["shared_mine"]).abs().max()) > 1e-6
    params = build(lib.GradDrop, 3)  # rep_grad=False: parameter-level GradDrop (LibMTL refuses it)
    params.backward(losses_of(params, 3), leak=1.0)
    assert_within(shared_grad(params), ew["shared_mine"], combination_bound(ew["G"], np.ones(3)) * 4, "parameters")


def test_options_checked(lib):
    model = build(lib.MGDA, 3)
    with pytest.raises(ValueError, match="MGDA.*mgda_gn"):
        model.backward(losses_of(model, 3), mgda_gn="l1")
    model = build(lib.CAGrad, 3)
    with pytest.raises(ValueError, match="CAGrad.*rescale"):
        model.backward(losses_of(model, 3), calpha=0.5, rescale=3)
    model = build(lib.PCGrad, 3, rep_grad=True)
    with pytest.raises(ValueError, match="PCGrad does not support representation gradients"):
        model.backward(losses_of(model, 3))
    model = build(lib.GradVac, 3)
    with pytest.raises(ValueError, match="GradVac.*beta"):
        model.backward(losses_of(model, 3), beta=1.5)


def test_cagrad_any_number_of_tasks_and_subclassing(lib):
    """LibMTL 1.1.5's CAGrad only runs with 3 tasks; ours with any. Every class is an AbsWeighting."""
    AbsWeighting = libmtl_oracle.module("weighting.abstract_weighting").AbsWeighting
    for name in lib.__all__[1:]:
        assert issubclass(getattr(lib, name), AbsWeighting)
    for T in (2, 4):
        model = build(lib.CAGrad, T)
        w = model.backward(losses_of(model, T), calpha=0.5, rescale=0)
        assert w.shape == (T,) and np.isfinite(w).all()


def test_import_error_without_libmtl():
    code = ("import sys; sys.modules['LibMTL'] = None\n"
            "try:\n    import fastmtl.compat.libmtl\nexcept ImportError as e:\n    print('ImportError:', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "ImportError: fastmtl.compat.libmtl needs LibMTL" in out


class _Loader:
    """A DataLoader stand-in for LibMTL 1.1.5's Trainer, whose ``_process_data`` calls the
    Python 2 iterator method ``.next()`` (torch's DataLoader iterators no longer have it)."""

    def __init__(self, x, y, batch):
        self.x, self.y, self.batch = x, y, batch

    def __len__(self):
        return (len(self.x) + self.batch - 1) // self.batch

    def __iter__(self):
        return _LoaderIterator(self)

    def _batch(self, i):
        s = slice(i * self.batch, (i + 1) * self.batch)
        return self.x[s], {f"t{k}": self.y[s, k] for k in range(self.y.shape[1])}


class _LoaderIterator:
    def __init__(self, loader):
        self.loader, self.i = loader, 0

    def next(self):
        if self.i >= len(self.loader):
            raise StopIteration
        self.i += 1
        return self.loader._batch(self.i - 1)

    __next__ = next


@pytest.mark.parametrize("name", ["PCGrad", "MGDA"])
def test_trainer_on_multidigits(lib, name, capsys):
    """LibMTL's own Trainer (loaded without LibMTL's __init__) trains HPS on MultiDigits-3 with
    our weighting. Two stand-ins, both outside the training loop: a CPU device (the Trainer
    hard-codes cuda:0) and loaders with ``.next()`` (see _Loader)."""
    from fastmtl.datasets import multi_digits3

    Trainer = libmtl_oracle.module("trainer").Trainer
    CELoss, AccMetric = libmtl_oracle.module("loss").CELoss, libmtl_oracle.module("metrics").AccMetric
    HPS = libmtl_oracle.module("architecture.HPS").HPS

    class CPUTrainer(Trainer):
        def _prepare_model(self, *args):
            self.device = torch.device("cpu")
            super()._prepare_model(*args)

    torch.set_default_dtype(torch.float32)  # the images' dtype; the autouse fixture restores float64's previous
    data = multi_digits3(train_pairs=256, test_pairs=128, seed=0)
    torch.manual_seed(0), random.seed(0)
    tasks = {f"t{k}": {"metrics": ["Acc"], "metrics_fn": AccMetric(), "loss_fn": CELoss(), "weight": [1]}
             for k in range(3)}
    decoders = torch.nn.ModuleDict({"t0": torch.nn.Linear(32, 10), "t1": torch.nn.Linear(32, 10),
                                    "t2": torch.nn.Linear(32, 2)})
    trainer = CPUTrainer(task_dict=tasks, weighting=getattr(lib, name), architecture=HPS,
                         encoder_class=lambda: torch.nn.Sequential(torch.nn.Linear(128, 32), torch.nn.ReLU()),
                         decoders=decoders, rep_grad=False, multi_input=False,
                         optim_param={"optim": "adam", "lr": 1e-2}, scheduler_param=None,
                         weight_args={} if name == "PCGrad" else {"mgda_gn": "none"}, arch_args={})
    weights = trainer.train(_Loader(data.x_train, data.y_train, 64), _Loader(data.x_test, data.y_test, 64),
                            epochs=3, return_weight=True)
    assert weights.shape == (3, 3, 4) and np.isfinite(weights).all()
    if name == "MGDA":
        assert np.allclose(weights.sum(0), 1.0)
    losses = trainer.model.train_loss_buffer
    assert (losses[:, -1] < losses[:, 0]).all(), f"the training loss did not fall: {losses}"
    assert "Epoch: 0002" in capsys.readouterr().out
