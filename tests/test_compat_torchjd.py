"""fastmtl.compat.torchjd: torchjd 0.18's aggregation classes on fastmtl's methods.

Two checks per class, on the same float64 inputs:

1. The bridge computes nothing of its own: its result equals, bit for bit, the fastmtl method it
   documents (name and options, e.g. Krum's squared=False) called on the same input. This pins
   the argument mapping.
2. The bridge agrees with torchjd's class. The dedicated tests (test_dual_cone.py,
   test_eigen_solvers_op.py, test_methods_torchjd_peers.py, test_cagrad.py, test_nash_mtl_op.py,
   test_pcd_fairgrad.py, test_stochastic_weightings.py, test_gradvac_op.py, test_pcgrad.py) derive
   per-method bounds between fastmtl and torchjd; by 1. they hold for the bridge. Here the
   tolerance is the largest of those bounds on these inputs (random_gradients, T <= 5, P <= 40:
   cond(K) below ~1e3), relative to S = Σ_i |w_i| max|G| (every error reaches d through w · G):
   * exact weights up to a few roundings (Mean, Sum, Constant, Random's same float64 draws, Krum,
     TrimmedMean, PCGrad and GradVac at T = 2 where the order is irrelevant, MoDo, SDMGrad,
     CR-MOGM, ExcessMTL, PCD, MGDA's identical Frank-Wolfe steps): the combination's 2 T u plus
     O(T u cond(K)) from the small solves: 1e-12;
   * exact solves against backward-stable ones (UPGrad, DualProj against quadprog; IMTL-G,
     Aligned-MTL, ConFIG against LAPACK's pinv/eigh/SVD): solve_rtol / spectral_rtol / 16 T u
     cond(K_u) there, below 1e-10 here;
   * torchjd stops an iterative solver at its default tolerance: FairGrad (scipy least_squares,
     1e-8 relative: 1e-6 on x through cond(H)), NashMTL (cvxpy, 1e-8 gap: 1e-6), CAGrad (clarabel
     at 1e-8 on the objective; d's error is the square root of the objective's, test_cagrad.py:
     1e-4).
"""

import subprocess
import sys
import warnings

import pytest
import torch
from conftest import assert_close_rel
from fastmtl import methods
from oracles import random_gradients

torchjd = pytest.importorskip("torchjd")
tj = pytest.importorskip("torchjd.aggregation")
from fastmtl.compat import torchjd as fj

U = torch.finfo(torch.float64).eps / 2
F64 = torch.float64

# name, torchjd arguments, the fastmtl method and options the bridge must equal, tolerance vs torchjd
AGGREGATORS = [
    ("UPGrad", {}, "upgrad", {}, 1e-10),
    ("DualProj", {}, "dualproj", {}, 1e-10),
    ("MGDA", {"epsilon": 1e-3, "max_iters": 50}, "mgda", {"epsilon": 1e-3, "max_iters": 50}, 1e-12),
    ("IMTLG", {}, "imtl_g", {}, 1e-10),
    ("AlignedMTL", {"scale_mode": "median"}, "aligned_mtl", {"scale_mode": "median"}, 1e-10),
    ("CAGrad", {"c": 0.5}, "cagrad", {"c": 0.5, "rescale": 0}, 1e-4),
    ("ConFIG", {}, "config", {}, 1e-10),
    ("Mean", {}, "mean", {}, 1e-12),
    ("Sum", {}, "sum", {}, 1e-12),
    ("Krum", {"n_byzantine": 0, "n_selected": 2}, "krum", {"n_byzantine": 0, "n_selected": 2, "squared": False},
     1e-12),
    ("TrimmedMean", {"trim_number": 0}, "trimmed_mean", {"trim_number": 0}, 1e-12),
    ("PCD", {"tau": 0.3}, "pcd", {"tau": 0.3}, 1e-12),
    ("FairGrad", {"alpha": 1.0}, "fairgrad", {"alpha": 1.0, "max_iters": 100}, 1e-6),
    ("ExcessMTL", {"robust_step_size": 0.5}, "excess_mtl", {"robust_step_size": 0.5}, 1e-12),
]
SHAPES = [(2, 9), (3, 10), (5, 40)]


def peer(name, kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cvxpy's notices inside torchjd
        return getattr(tj, name)(**kwargs)


def scale_of(method, G):
    """S = Σ_i |w_i| max|G| with the method's weights (ones for an element-wise method)."""
    if isinstance(method, methods.GramWeighting):
        w = method.fresh().weights(G.double() @ G.double().T)
    else:
        w = torch.ones(G.shape[0], dtype=F64)
    return float(w.abs().sum()) * float(G.abs().max())


@pytest.mark.parametrize("name,kwargs,method,options,rtol", AGGREGATORS, ids=[a[0] for a in AGGREGATORS])
@pytest.mark.parametrize("T,P", SHAPES)
def test_aggregator_is_fastmtl_and_matches_torchjd(name, kwargs, method, options, rtol, T, P):
    if name == "Krum" and T == 2:  # Krum needs T >= n_byzantine + 3: both refuse
        G = random_gradients(T, P, dtype=F64)
        for aggregator in (fj.Krum(**kwargs), peer(name, kwargs)):
            with pytest.raises(ValueError):
                aggregator(G)
        return
    ours, theirs, reference = fj.__dict__[name](**kwargs), peer(name, kwargs), methods.create(method, **options)
    for step in range(3):  # stateful ones (PCD, ExcessMTL) carry their state over the steps
        G = random_gradients(T, P, seed=10 * T + step, dtype=F64)
        got = ours(G)
        assert torch.equal(got, reference(G)), f"{name}: not fastmtl's {method}({options}) at step {step}"
        assert_close_rel(got, theirs(G), rtol, f"{name} T={T} step={step}", scale=scale_of(reference, G))


@pytest.mark.parametrize("T,P", SHAPES)
def test_pcgrad_gradvac_graddrop_where_their_randomness_cannot_matter(T, P):
    G = random_gradients(2, P, seed=T, dtype=F64)
    scale = 4 * float(G.abs().max())
    # Two tasks: each projects on the other only, so the random order is irrelevant.
    for name in ("PCGrad", "GradVac"):
        ours, theirs = fj.__dict__[name](), peer(name, {})
        reference = methods.create(name.lower(), **({"reduction": "sum"} if name == "PCGrad" else {}))
        for step in range(3):  # GradVac's targets carry over
            H = G * (1 + step)
            got = ours(H)
            assert torch.equal(got, reference(H)), name
            assert_close_rel(got, theirs(H), 1e-12, f"{name} step={step}", scale=scale * (1 + step))
    # GradDrop with leak 1 keeps every gradient whatever the draws: the sum.
    G = random_gradients(T, P, seed=T, dtype=F64)
    leak = torch.ones(T, dtype=F64)
    assert_close_rel(fj.GradDrop(leak=leak)(G), peer("GradDrop", {"leak": leak})(G), 1e-12,
                     scale=2 * T * float(G.abs().max()))
    assert torch.equal(fj.GradDrop(leak=leak)(G), methods.create("graddrop", leak=leak)(G))


@pytest.mark.parametrize("T", [2, 3, 5])
def test_random_matches_with_the_same_seed(T):
    G = random_gradients(T, 20, seed=T, dtype=F64)
    torch.manual_seed(T)
    expected = peer("Random", {})(G)
    torch.manual_seed(T)
    got = fj.Random()(G)
    assert_close_rel(got, expected, 1e-12, scale=T * float(G.abs().max()))


@pytest.mark.parametrize("T", [2, 3, 5])
def test_constant_and_preference_vectors(T):
    G = random_gradients(T, 30, seed=T, dtype=F64)
    p = torch.linspace(0.2, 1.0, T, dtype=F64)
    scale = float(p.sum()) * float(G.abs().max())
    assert_close_rel(fj.Constant(p)(G), tj.Constant(p)(G), 1e-12, "Constant", scale=scale)
    assert torch.equal(fj.Constant(p)(G), methods.create("constant", weights=p)(G))
    for name, tolerance in (("UPGrad", 1e-10), ("DualProj", 1e-10), ("AlignedMTL", 1e-10), ("ConFIG", 1e-10)):
        got, expected = fj.__dict__[name](pref_vector=p)(G), peer(name, {"pref_vector": p})(G)
        assert_close_rel(got, expected, tolerance, f"{name} pref", scale=T * scale)
        # The preference changes the result (a test that could not fail otherwise).
        assert not torch.allclose(got, fj.__dict__[name]()(G), rtol=1e-6, atol=0)


def test_krum_uses_torchjds_plain_distances():
    # The paper sums squared distances, torchjd plain ones (tests/test_methods_torchjd_peers.py):
    # where the two choose differently, the bridge must choose torchjd's.
    differ = 0
    for seed in range(20):
        G = torch.randn(5, 2, generator=torch.Generator().manual_seed(seed), dtype=F64)
        K = G @ G.T
        squared = methods.create("krum", n_byzantine=0, squared=True).weights(K)
        plain = methods.create("krum", n_byzantine=0, squared=False).weights(K)
        got = fj.KrumWeighting(n_byzantine=0)(K)
        assert torch.equal(got, tj.KrumWeighting(n_byzantine=0)(K))
        assert torch.equal(got, plain)
        differ += not torch.equal(squared, plain)
    assert differ > 0, "no case told the two apart"


# ----- weightings ------------------------------------------------------------------------------


WEIGHTINGS = [
    ("UPGradWeighting", {}, 1e-10), ("DualProjWeighting", {}, 1e-10), ("MGDAWeighting", {}, 1e-12),
    ("IMTLGWeighting", {}, 1e-10), ("AlignedMTLWeighting", {}, 1e-10), ("CAGradWeighting", {"c": 0.4}, 1e-4),
    ("KrumWeighting", {"n_byzantine": 1}, 0.0), ("FairGradWeighting", {"alpha": 2.0}, 1e-6),
    ("PCDWeighting", {}, 1e-12), ("MoDoWeighting", {"gamma": 0.5}, 1e-12), ("SDMGradWeighting", {}, 1e-12),
]


@pytest.mark.parametrize("name,kwargs,rtol", WEIGHTINGS, ids=[w[0] for w in WEIGHTINGS])
@pytest.mark.parametrize("T", [4, 5])
def test_weighting_matches_torchjd_and_is_the_methods_weights(name, kwargs, rtol, T):
    ours, theirs = fj.__dict__[name](**kwargs), peer(name, kwargs)
    reference = ours.method.fresh()
    for step in range(3):
        G = random_gradients(T, 30, seed=T + step, dtype=F64)
        K = G @ G.T
        got = ours(K)
        assert torch.equal(got, reference.weights(K)), name
        assert_close_rel(got, theirs(K), rtol, f"{name} step={step}", scale=float(got.abs().max()))


@pytest.mark.parametrize("base", ["UPGradWeighting", "MGDAWeighting", "MeanWeighting"])
def test_crmogm_matches_torchjd_and_advances_the_wrapped_weighting(base):
    ours, theirs = fj.CRMOGMWeighting(fj.__dict__[base](), alpha=0.7), tj.CRMOGMWeighting(peer(base, {}), alpha=0.7)
    for step in range(4):
        G = random_gradients(4, 20, seed=step, dtype=F64)
        stat = G if base == "MeanWeighting" else G @ G.T  # MeanWeighting takes the matrix
        assert_close_rel(ours(stat), theirs(stat), 1e-10, f"step {step}")
    with pytest.raises(ValueError, match="number of objectives"):
        ours(torch.eye(3, dtype=F64))
    ours.reset()
    ours(torch.eye(3, dtype=F64))  # after reset() a new T is fine
    with pytest.raises(TypeError, match="weighting"):
        fj.CRMOGMWeighting(tj.MGDAWeighting())
    # reset() propagates to a stateful wrapped weighting, as torchjd's.
    inner = fj.GradVacWeighting()
    smoothed = fj.CRMOGMWeighting(inner)
    K = random_gradients(3, 10, dtype=F64) @ random_gradients(3, 10, dtype=F64).T
    smoothed(K)
    assert inner.method.targets is not None
    smoothed.reset()
    assert inner.method.targets is None and smoothed.method.lam is None


def test_matrix_weightings_and_excess_mtl_weighting():
    G = random_gradients(3, 12, seed=1, dtype=F64)
    for name in ("MeanWeighting", "SumWeighting"):
        assert torch.equal(fj.__dict__[name]()(G), peer(name, {})(G))
    ours, theirs = fj.ExcessMTLWeighting(), tj.ExcessMTLWeighting()
    for step in range(3):
        assert_close_rel(ours(G * (step + 1)), theirs(G * (step + 1)), 1e-12, f"step {step}")


def test_nash_mtl_reuses_its_weights_and_caps_every_call():
    T = 3
    Gs = [random_gradients(T, 50, seed=s, dtype=F64) for s in range(4)]
    ours, theirs = fj.NashMTL(n_tasks=T, update_weights_every=2), peer("NashMTL", {"n_tasks": T,
                                                                                     "update_weights_every": 2})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for step, G in enumerate(Gs):
            assert_close_rel(ours(G), theirs(G), 1e-6, f"step {step}")
    # Step 1 reused step 0's α (capped on step 1's G): not the fresh solve on that G.
    fresh = fj.NashMTL(n_tasks=T)(Gs[1])
    ours.reset()
    ours(Gs[0])
    assert not torch.allclose(ours(Gs[1]), fresh, rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="n_tasks"):
        ours(random_gradients(2, 50, dtype=F64))
    with pytest.raises(ValueError, match="update_weights_every"):
        fj.NashMTL(n_tasks=2, update_weights_every=0)


# ----- the torchjd machinery accepts them --------------------------------------------------------


def test_mtl_backward_and_jac_to_grad_give_torchjds_grads():
    from torchjd.autojac import backward, jac_to_grad, mtl_backward

    def run(aggregator, optimize):
        torch.manual_seed(0)
        shared = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4)).double()
        heads = [torch.nn.Linear(4, 1).double() for _ in range(3)]
        x = torch.randn(16, 5, dtype=F64)
        features = shared(x)
        losses = [(head(features).squeeze(1) - k).pow(2).mean() for k, head in enumerate(heads)]
        mtl_backward(losses, features)
        jac_to_grad(list(shared.parameters()), aggregator, optimize_gramian_computation=optimize)
        return torch.cat([p.grad.flatten() for p in shared.parameters()]), heads[0].weight.grad.clone()

    for optimize in (False, True):  # True: torchjd calls the Gramian weighting itself
        (ours, head), (theirs, their_head) = run(fj.UPGrad(), optimize), run(tj.UPGrad(), optimize)
        assert_close_rel(ours, theirs, 1e-10, f"optimize={optimize}", scale=float(theirs.abs().max()))
        assert torch.equal(head, their_head)  # the task heads get their own gradients, untouched
        assert ours.abs().max() > 0
    # backward() with a plain Jacobian too.
    w = torch.randn(6, dtype=F64, requires_grad=True)
    backward([(w ** 2).sum(), (w - 1).pow(2).sum(), w.sum()])
    jac_to_grad([w], fj.MGDA())
    assert w.grad is not None and w.grad.shape == (6,)


def test_isinstance_repr_and_str():
    p = torch.tensor([1.0, 2.0, 3.0])
    cases = [(fj.UPGrad(), tj.UPGrad()), (fj.UPGrad(pref_vector=p), tj.UPGrad(pref_vector=p)),
             (fj.DualProj(), tj.DualProj()), (fj.MGDA(), tj.MGDA()), (fj.IMTLG(), tj.IMTLG()),
             (fj.AlignedMTL(), tj.AlignedMTL()), (fj.CAGrad(c=0.5), tj.CAGrad(c=0.5)), (fj.ConFIG(), tj.ConFIG()),
             (fj.Constant(p), tj.Constant(p)), (fj.Mean(), tj.Mean()), (fj.Sum(), tj.Sum()),
             (fj.Random(), tj.Random()), (fj.Krum(1, 2), tj.Krum(1, 2)), (fj.TrimmedMean(1), tj.TrimmedMean(1)),
             (fj.PCGrad(), tj.PCGrad()), (fj.GradVac(), tj.GradVac()), (fj.PCD(), tj.PCD()),
             (fj.FairGrad(alpha=0.5), tj.FairGrad(alpha=0.5)), (fj.ExcessMTL(), tj.ExcessMTL()),
             (fj.NashMTL(n_tasks=3), peer("NashMTL", {"n_tasks": 3})), (fj.GradDrop(leak=p), tj.GradDrop(leak=p)),
             (fj.MGDAWeighting(), tj.MGDAWeighting()), (fj.UPGradWeighting(), tj.UPGradWeighting()),
             (fj.MoDoWeighting(), tj.MoDoWeighting()), (fj.SDMGradWeighting(), tj.SDMGradWeighting()),
             (fj.GradVacWeighting(), tj.GradVacWeighting()), (fj.PCDWeighting(), tj.PCDWeighting())]
    for ours, theirs in cases:
        # The same torchjd bases: every class of torchjd's MRO up to the concrete one.
        for base in type(theirs).__mro__[1:]:
            if base.__module__.startswith("torchjd") and not base.__name__.startswith("_N"):
                assert isinstance(ours, base), (type(ours).__name__, base)
        # Most of torchjd's weightings keep nn.Module's repr; ours show their arguments.
        own_repr = type(theirs).__repr__ is not torch.nn.Module.__repr__
        if own_repr:
            assert repr(ours) == repr(theirs)
        if own_repr or type(theirs).__str__ is not object.__str__:
            assert str(ours) == str(theirs)
    assert set(fj.__all__) == set(tj.__all__)  # every torchjd 0.18 aggregation name
    for name in fj.__all__:
        assert getattr(fj, name) is getattr(tj, name) or getattr(fj, name).__module__ == fj.__name__


def test_options_are_settable_checked_and_keep_the_state():
    A = fj.PCD(tau=0.1)
    G = random_gradients(3, 20, dtype=F64)
    A(G)
    steps = int(A.method.n_steps)
    A.beta = 0.9  # torchjd lets arguments be set later; the EMA state is kept
    assert A.beta == 0.9 and A.gramian_weighting.beta == 0.9 and A.method.options["beta"] == 0.9
    assert int(A.method.n_steps) == steps
    with pytest.raises(ValueError, match="pcd: beta"):
        A.beta = 1.5
    assert A.beta == 0.9  # a refused value changes nothing
    A.reset()
    assert A.method.n_steps is None
    with pytest.raises(ValueError, match="mgda"):
        fj.MGDA(max_iters=0)
    with pytest.raises(ValueError, match="graddrop: f"):
        fj.GradDrop(f=lambda P: P ** 2)


def test_empty_input_raises_instead_of_returning_zeros():
    # A documented convention: fastmtl refuses empty input (torchjd returns zeros).
    for aggregator in (fj.UPGrad(), fj.Mean(), fj.GradDrop(), fj.TrimmedMean(0)):
        for shape in ((0, 4), (3, 0)):
            with pytest.raises(ValueError, match="empty"):
                aggregator(torch.zeros(shape))
    with pytest.raises(ValueError, match="non-empty"):
        fj.UPGradWeighting()(torch.zeros(0, 0))


def test_float32_keeps_dtype_and_rank_deficient_config_stays_finite():
    # ConFIG on a rank-2 float32 Jacobian: its pinv threshold follows K's float32 accumulation
    # (before, noise eigenvalues of K were inverted and d reached 1e30). torchjd's SVD of the float32
    # unit rows is accurate to ~1e-6 there (n u σ_max/σ_min with its threshold).
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        G = (torch.randn(6, 2, generator=g) @ torch.randn(2, 30, generator=g)).float()
        got, expected = fj.ConFIG()(G), tj.ConFIG()(G)
        assert got.dtype == torch.float32 and got.isfinite().all()
        assert_close_rel(got, expected, 1e-5, f"seed {seed}")
    G = random_gradients(4, 10, dtype=torch.float32)
    assert fj.UPGrad()(G).dtype == torch.float32
    assert fj.UPGradWeighting()(G @ G.T).dtype == torch.float32


def test_import_without_torchjd_names_the_extra():
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'torchjd' or name.startswith('torchjd.'):\n"
            "            raise ImportError('blocked: ' + name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "import fastmtl.compat\n"  # the package itself imports nothing heavy
            "try:\n"
            "    import fastmtl.compat.torchjd\n"
            "except ImportError as error:\n"
            "    print(error)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert 'pip install "fastmtl[torchjd]"' in out.stdout, out.stdout + out.stderr


def test_weighting_hooks_fire_and_state_dict_carries_the_state():
    # torchjd's way to watch the weights: a forward hook on the aggregator's weighting. It fires
    # here too, with the same result as the fused path; and nn.Module's state_dict carries the
    # method's state, so a checkpoint resumes GradVac's targets.
    seen = []
    hooked, plain = fj.UPGrad(), fj.UPGrad()
    hooked.gramian_weighting.register_forward_hook(lambda module, args, out: seen.append(out))
    J = torch.randn(4, 30, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.equal(hooked(J), plain(J)) and len(seen) == 1 and seen[0].shape == (4,)
    first = fj.GradVac()
    first(J)
    second = fj.GradVac()
    second.load_state_dict(first.state_dict())
    assert torch.equal(second.method.state_dict()["targets"], first.method.state_dict()["targets"])
    assert torch.equal(second(J), first(J))
    with pytest.raises(ValueError, match="computes 'upgrad'"):
        fj.UPGrad().load_state_dict({"gramian_weighting._extra_state": {"method": "gradvac", "state": {}}})
