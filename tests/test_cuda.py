"""CUDA kernels against the CPU reference and the per-vector oracles, on a GPU. Every test
skips cleanly without one (or with a CPU-only build). Run on a GPU by scripts/gpu_suite.sh."""

import pytest
import torch
from conftest import (
    DTYPES,
    assert_close_rel,
    assert_within,
    gamma,
    gram_error_bound,
    pcgrad_coefficients,
    pcgrad_error_bound,
    pcgrad_per_vector_error_bound,
    weighted_sum_error_bound,
)
from oracles import graddrop_per_vector, pcgrad_per_vector, random_gradients

import fastmtl
from fastmtl import functional, reference

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
    pytest.mark.skipif(not fastmtl.HAS_CUDA, reason="fastmtl._C built without CUDA kernels"),
]
SHAPES = [(1, 1), (2, 7), (3, 1000), (5, 4099), (8, 65_537), (16, 33_000), (33, 2049), (64, 1000), (80, 300)]


def cuda(tensor):
    return tensor.to("cuda")


def integer_gradients(T: int, P: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    """Gradients in {-8, ..., 8}: every partial sum of their Gram matrix is an integer below 2^24,
    exact in every accumulation dtype (cuBLAS's too), so every path sees the same K."""
    return torch.randint(-8, 9, (T, P), generator=torch.Generator().manual_seed(seed)).to(dtype)


def bound_vs_per_vector(G, orders=None, reduction="sum", **dtypes):
    """How far a fastmtl PCGrad result may lie from pcgrad_per_vector: both error bounds."""
    A = pcgrad_coefficients(G.double() @ G.double().T, orders)
    return pcgrad_error_bound(G, A, reduction=reduction, **dtypes) + pcgrad_per_vector_error_bound(G, reduction)


def seed_words(seed: int) -> torch.Tensor:
    return torch.randint(0, 2**62, (2,), generator=torch.Generator().manual_seed(seed), dtype=torch.int64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,P", SHAPES)
def test_gram_matches_cpu(dtype, T, P):
    G = random_gradients(T, P, seed=T + P, dtype=dtype)
    K = fastmtl.gram(cuda(G), impl="cuda")
    assert K.is_cuda and K.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert torch.equal(K, K.T)
    truth = G.double() @ G.double().T
    assert_within(K, truth, gram_error_bound(G) + gram_error_bound(G, torch.float64), f"{dtype}")


@pytest.mark.parametrize("layout", ["strided_columns", "column_major", "unaligned_rows", "aligned_ragged_end"])
def test_gram_non_contiguous_and_unaligned(layout):
    base = cuda(random_gradients(6, 20_008, seed=1))
    G = {
        "strided_columns": base[:, ::2],
        "column_major": base.T.contiguous().T,
        "unaligned_rows": base[:, 1:],
        "aligned_ragged_end": base[:, :20_001],  # packed loads with a partial last pack
    }[layout]
    bound = gram_error_bound(G.cpu()) + gram_error_bound(G.cpu(), torch.float64)
    assert_within(fastmtl.gram(G, impl="cuda"), (G.double() @ G.double().T).cpu(), bound, layout)


@pytest.mark.parametrize("T", [1, 2, 5, 16, 70, 257, 1024])  # past one block of 256 threads too
def test_pcgrad_weights_match_cpu(T):
    G = random_gradients(T, 500, seed=T, dtype=torch.float64)
    K = G @ G.T
    order = functional.pcgrad_order(T, shuffle=True, generator=torch.Generator().manual_seed(T), device="cpu")
    for o in (None, order):
        expected = functional.pcgrad_weights(K, o, impl="cpp" if fastmtl.HAS_EXT else "torch")
        got = functional.pcgrad_weights(cuda(K), None if o is None else cuda(o), impl="cuda")
        # Compared where it matters, w . G: each within pcgrad_error_bound of the exact result.
        bound = 2 * pcgrad_error_bound(G, pcgrad_coefficients(K, o))
        assert_within(got.cpu() @ G, expected @ G, bound)


def test_pcgrad_weights_nan_gram_gives_nan():
    K = torch.eye(3, device="cuda")
    K[1, 2] = float("nan")
    assert torch.isnan(functional.pcgrad_weights(K, None, impl="cuda")).all()


@pytest.mark.parametrize("T", [1, 2, 3, 8, 16])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_project_conflicts_matches_per_vector(T, reduction):
    G = random_gradients(T, 3001, seed=T, dtype=torch.float64)
    out = fastmtl.project_conflicts(cuda(G), shuffle=False, reduction=reduction, impl="cuda")
    assert_within(out, pcgrad_per_vector(G, reduction=reduction), bound_vs_per_vector(G, reduction=reduction))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,P", SHAPES)
def test_project_conflicts_matches_reference(dtype, T, P):
    # Integer gradients: the same exact K on both paths, which then differ only by their float64
    # solves and combine passes, each within pcgrad_error_bound of the exact result.
    G = integer_gradients(T, P, seed=P, dtype=dtype)
    out = fastmtl.project_conflicts(cuda(G), shuffle=False, impl="cuda")
    ref = fastmtl.project_conflicts(G, shuffle=False, impl="torch")
    assert out.dtype == dtype
    A = pcgrad_coefficients(G.double() @ G.double().T)
    assert_within(out, ref, 2 * pcgrad_error_bound(G, A, exact_gram=True), f"{dtype}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_low_precision_error_is_the_combine_rounding(dtype):
    # With an exact K, the only low-precision error is the float32 w . G and the output rounding.
    G = integer_gradients(8, 20_000, seed=5, dtype=dtype)
    truth = pcgrad_per_vector(G.double(), None)
    out = fastmtl.project_conflicts(cuda(G), shuffle=False, impl="cuda")
    A = pcgrad_coefficients(G.double() @ G.double().T)
    bound = pcgrad_error_bound(G, A, exact_gram=True) + pcgrad_per_vector_error_bound(G.double())
    assert_within(out, truth, bound, f"{dtype}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,P", SHAPES)
def test_combine_matches_reference(dtype, T, P):
    G = random_gradients(T, P, seed=3, dtype=dtype)
    w = torch.rand(T)
    out = functional.combine(cuda(G), cuda(w), impl="cuda")
    # Two accumulations of the same T products, each within weighted_sum_error_bound.
    assert_within(out, reference.combine(G, w), 2 * weighted_sum_error_bound(G, w), f"{dtype}")


def test_combine_into_unaligned_and_strided_out():
    w = cuda(torch.rand(4))
    for G in (cuda(random_gradients(4, 10_001, seed=2)), cuda(random_gradients(4, 10_008, seed=2))[:, :10_001]):
        expected = reference.combine(G.cpu(), w.cpu())
        bound = 2 * weighted_sum_error_bound(G.cpu(), w)
        for out in (torch.zeros(10_001, device="cuda"), torch.zeros(20_002, device="cuda")[::2],
                    torch.zeros(10_002, device="cuda")[1:]):
            functional.combine(G, w, out=out, impl="cuda")
            assert_within(out, expected, bound)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,P", [(1, 1), (2, 255), (3, 257), (7, 32_774), (16, 70_001), (64, 700)])
@pytest.mark.parametrize("with_signs", [False, True])
def test_graddrop_same_masks_as_reference(dtype, T, P, with_signs):
    # Small integers and leaks in {0, 1/2, 1}: exact arithmetic, so equal outputs <=> equal masks.
    gen = torch.Generator().manual_seed(T * P)
    G = torch.randint(-8, 9, (T, P), generator=gen).to(dtype)
    leak = torch.randint(0, 3, (T,), generator=gen).float() / 2
    signs = torch.randint(-2, 3, (P,), generator=gen).to(dtype) if with_signs else None
    seed = seed_words(T)
    out = torch.ops.fastmtl.graddrop(cuda(G), cuda(leak), None if signs is None else cuda(signs), cuda(seed))
    ref = reference.graddrop(G, leak, signs, reference.philox_uniform(seed, P))
    assert torch.equal(out.cpu(), ref)


def test_graddrop_float_matches_paper_algorithm():
    G = random_gradients(5, 5000, seed=5, dtype=torch.float64)
    leak = torch.linspace(0, 0.5, 5, dtype=torch.float64)
    seed = seed_words(3)
    out = torch.ops.fastmtl.graddrop(cuda(G), cuda(leak), None, cuda(seed))
    # The same masks: fastmtl's sum of factors in {1, leak_i} times g_i, and the oracle's factors
    # leak + (1 - leak) M (within 2u of 1, or exactly leak) in the same sum: γ_{T+2}.
    bound = weighted_sum_error_bound(G) + gamma(G.shape[0] + 2, torch.float64) * G.abs().sum(0)
    assert_within(out, graddrop_per_vector(G, reference.philox_uniform(seed, 5000), leak=leak), bound)


def test_graddrop_keep_frequency_matches_cpu_statistics():
    P = 400_000
    G = torch.tensor([3.0, -1.0], device="cuda")[:, None].expand(2, P).contiguous()  # purity 0.75
    out = fastmtl.graddrop(G, generator=torch.Generator("cuda").manual_seed(7), impl="cuda")
    kept = (out == 3.0).double().mean().item()
    # A binomial frequency within 5 standard deviations (not an arithmetic tolerance).
    assert abs(kept - 0.75) < 5 * (0.75 * 0.25 / P) ** 0.5


def test_graddrop_nan_propagates():
    G = cuda(random_gradients(3, 1000, seed=5))
    G[1, 10] = float("nan")
    signs = torch.randn(1000, device="cuda")
    signs[30] = float("nan")
    out = fastmtl.graddrop(G, signs=signs, impl="cuda")
    assert torch.isnan(out[10]) and torch.isnan(out[30])
    assert torch.isfinite(out[:10]).all()


def test_seeded_calls_reproduce():
    G = cuda(random_gradients(4, 50_000, seed=1))
    a = fastmtl.graddrop(G, generator=torch.Generator("cuda").manual_seed(3), impl="cuda")
    b = fastmtl.graddrop(G, generator=torch.Generator("cuda").manual_seed(3), impl="cuda")
    c = fastmtl.graddrop(G, generator=torch.Generator("cuda").manual_seed(4), impl="cuda")
    assert torch.equal(a, b) and not torch.equal(a, c)
    p = fastmtl.project_conflicts(G, generator=torch.Generator("cuda").manual_seed(3), impl="cuda")
    q = fastmtl.project_conflicts(G, generator=torch.Generator("cuda").manual_seed(3), impl="cuda")
    assert torch.equal(p, q)


def test_no_host_synchronisation():
    G = cuda(random_gradients(8, 100_000, seed=2))
    leak = torch.full((8,), 0.1, device="cuda")
    fastmtl.project_conflicts(G)  # warm up (lazy init may sync once)
    fastmtl.graddrop(G, leak=leak)
    torch.cuda.set_sync_debug_mode("error")
    try:
        fastmtl.project_conflicts(G)
        fastmtl.project_conflicts(G, shuffle=False, reduction="mean")
        fastmtl.graddrop(G, leak=0.2)
        fastmtl.gram(G)
        functional.gram_for_weights(G)
        functional.gram_for_weights(2e19 * G)  # the rescue pass, chosen on the device
        fastmtl.aggregate(G, "sum")
    finally:
        torch.cuda.set_sync_debug_mode("default")


# Options for T = 4 tasks: required ones (torchjd's aggregators), and a shorter MGDA.
SYNC_FREE_OPTIONS = {"mgda": {"max_iters": 50}, "constant": {"weights": [1.0, 2.0, 3.0, 4.0]}, "crmogm": {"base": "mgda"},
                     "uw": {"n_tasks": 4}, "gradnorm": {"n_tasks": 4}, "imtl": {"n_tasks": 4}, "famo": {"n_tasks": 4},
                     "stch": {"warmup_steps": 1}, "fairgrad": {"alpha": 1.0},
                     "krum": {"n_byzantine": 0}, "trimmed_mean": {"trim_number": 1}}
# ConFIG solves with torch.linalg.pinv, whose error check syncs (documented in its module).
SYNCING = {"config"}


@pytest.mark.parametrize("method", [m for m in fastmtl.methods.available() if m not in SYNCING])
def test_every_method_and_the_optimizer_without_host_sync(method):
    # Every Gram-space solve is one compiled op (IMTL-G's pinv and Aligned-MTL's eigh included).
    options = SYNC_FREE_OPTIONS.get(method, {})
    if fastmtl.methods.method_class(method).family != "loss":  # loss-side methods have no aggregate(G)
        G = cuda(random_gradients(4, 10_000, seed=3))
        if fastmtl.methods.method_class(method).needs_losses:
            options = {**options, "losses": torch.linspace(0.5, 2.0, 4, device="cuda")}
        fastmtl.aggregate(G, method, **options)  # warm up
        torch.cuda.set_sync_debug_mode("error")
        try:
            fastmtl.aggregate(G, method, **options)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    options.pop("losses", None)
    net = torch.nn.Linear(8, 4).cuda()
    opt = fastmtl.MTLOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), method if method != "graddrop" else "pcgrad",
                               shared=net.parameters(), **options)
    x = torch.randn(16, 8, device="cuda")
    for step in range(3):
        if step == 2:
            torch.cuda.set_sync_debug_mode("error")
        try:
            out = net(x)
            opt.zero_grad()
            opt.backward([out[:, t].pow(2).mean() for t in range(4)])
            opt.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")


def test_cuda_graph_capture_and_replay():
    G = cuda(random_gradients(8, 100_000, seed=6))
    static_out = torch.empty(100_000, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up off the default stream, as torch requires
        for _ in range(2):
            fastmtl.project_conflicts(G, out=static_out)
            fastmtl.graddrop(G, leak=1.0)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fastmtl.project_conflicts(G, shuffle=False, out=static_out)
        summed = fastmtl.graddrop(G, leak=1.0)
        shuffled = fastmtl.project_conflicts(G)
    new = cuda(integer_gradients(8, 100_000, seed=7, dtype=torch.float32))  # an exact K: a tight bound
    G.copy_(new)
    graph.replay()
    torch.cuda.synchronize()
    assert_within(static_out, pcgrad_per_vector(new.cpu()), bound_vs_per_vector(new.cpu(), exact_gram=True))
    assert_within(summed, new.sum(0), 2 * weighted_sum_error_bound(new.cpu()))
    assert torch.isfinite(shuffled).all()


def test_mixed_devices_and_dtypes_are_rejected():
    G = cuda(torch.randn(3, 10))
    with pytest.raises(ValueError, match="cpu"):
        fastmtl.graddrop(G, signs=torch.randn(10))
    with pytest.raises(ValueError, match="cpu"):
        fastmtl.graddrop(G, leak=torch.zeros(3))
    with pytest.raises(TypeError, match="dtype"):
        fastmtl.graddrop(G, signs=torch.randn(10, device="cuda", dtype=torch.float64))
    with pytest.raises(ValueError, match="generator"):
        fastmtl.project_conflicts(G, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="impl='cpp'"):
        fastmtl.gram(G, impl="cpp")
    with pytest.raises(RuntimeError, match="same device|is on"):
        torch.ops.fastmtl.combine(G, torch.ones(3))
    with pytest.raises(RuntimeError, match="seed"):
        torch.ops.fastmtl.graddrop(G, torch.zeros(3, device="cuda"), None, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="impl='cuda'"):  # no CUDA clustering kernel: refused, not run on the host
        fastmtl.cluster_tasks(torch.eye(3, device="cuda"), n_groups=2, impl="cuda")


def test_out_overlapping_G_is_rejected():
    G = cuda(torch.randn(5, 5000))
    with pytest.raises(ValueError, match="out overlaps G"):
        functional.combine(G, torch.ones(5, device="cuda"), out=G[0], impl="cuda")
    with pytest.raises(ValueError, match="out overlaps G"):
        fastmtl.project_conflicts(G, out=G[2])
    with pytest.raises(RuntimeError, match="overlaps grads"):
        torch.ops.fastmtl.combine_into(G, torch.ones(5, device="cuda"), G[1])


@pytest.mark.parametrize("impl", ["cuda", "torch"])
def test_gram_rescue_on_the_device(impl):
    # |g| ~ 2e19 overflows the float32 Gram; the float64 one is chosen on the device (no sync).
    G = 2e19 * random_gradients(3, 1000, seed=0)
    K = functional.gram_for_weights(cuda(G), impl=impl)
    assert K.is_cuda and K.dtype == torch.float64 and torch.equal(K, K.T)
    assert_within(K, G.double() @ G.double().T, 2 * gram_error_bound(G, torch.float64))
    small = random_gradients(3, 1000, seed=0)  # finite: the float32 K itself, in float64
    K_small = functional.gram_for_weights(cuda(small), impl=impl)
    assert torch.equal(K_small, fastmtl.gram(cuda(small), impl=impl).double())
    nan = small.clone()
    nan[1, 3] = float("nan")
    assert not torch.isfinite(functional.gram_for_weights(cuda(nan), impl=impl)).all()
    out = fastmtl.project_conflicts(cuda(G), shuffle=False, impl=impl)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert_within(out, pcgrad_per_vector(G), bound_vs_per_vector(G, gram_dtype=torch.float64))
    wide = cuda(2e19 * random_gradients(80, 300, seed=1))  # T > 64: the Gram kernel's cuBLAS path
    assert torch.isfinite(functional.gram_for_weights(wide, impl=impl)).all()


@pytest.mark.parametrize("impl", ["cuda", "torch"])
def test_leak_out_of_range_on_device_poisons_the_result(impl):
    # Not read back to the host (no sync), so not an exception: the whole result is NaN.
    G = cuda(torch.randn(3, 10))
    out = fastmtl.graddrop(G, leak=torch.tensor([0.1, 2.0, 0.0], device="cuda"), impl=impl)
    assert torch.isnan(out).all()


def test_opcheck_cuda():
    G = cuda(torch.randn(4, 1000))
    K = G @ G.T
    order = torch.rand(4, 4, device="cuda").argsort(1)
    seed = cuda(seed_words(1))
    cases = [
        (torch.ops.fastmtl.gram.default, (G,)),
        (torch.ops.fastmtl.gram_rescue.default, (G, K)),
        (torch.ops.fastmtl.gram_rescue.default, (2e19 * G, (2e19 * G) @ (2e19 * G).T)),
        (torch.ops.fastmtl.pcgrad_weights.default, (K, order)),
        (torch.ops.fastmtl.combine.default, (G, torch.rand(4, device="cuda"))),
        (torch.ops.fastmtl.combine_into.default, (G, torch.rand(4, device="cuda"), torch.empty(1000, device="cuda"))),
        (torch.ops.fastmtl.graddrop.default, (G, torch.rand(4, device="cuda"), None, seed)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("fbgrad, lambda_lag", [("merged", 0), ("merged", 1), ("within_branch", 0)])
def test_fairbranch_step_without_host_sync(fbgrad, lambda_lag):
    """A FairBranch training step on a branched model (forward, accuracy and fairness losses with
    num_groups given, λ, FBGrad, the optimizer step) never reads a value back from the GPU; the
    branching check, a host decision by nature, runs outside the watched step."""
    torch.manual_seed(0)
    trunk = [torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU()) for _ in range(1)]
    trunk += [torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU()) for _ in range(3)]
    fb = fastmtl.FairBranch(trunk, [torch.nn.Linear(8, 2) for _ in range(4)], tau=0.0, branch_every=1,
                            fbgrad=fbgrad, lambda_lag=lambda_lag).cuda()
    opt = fb.make_optimizer(torch.optim.AdamW(fb.parameters(), lr=1e-2))
    x = torch.randn(64, 6, device="cuda")
    y, s = torch.randint(0, 2, (64, 4), device="cuda"), torch.randint(0, 2, (64,), device="cuda")

    def step():
        outs = fb(x)
        opt.zero_grad()
        fb.backward([torch.nn.functional.cross_entropy(o, y[:, t]) for t, o in enumerate(outs)],
                    [fastmtl.fairness_loss(o, y[:, t], s, num_groups=2) for t, o in enumerate(outs)])
        opt.step()

    for _ in range(3):  # warm up, and branch (layers 3 and 2: merges whose children FBGrad projects)
        step()
        fb.after_step()
    assert len(fb.events) >= 2
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_branching_ops_match_the_cpu():
    """parameter_similarity (on the CUDA Gram kernel), fbgrad and fairness_loss on the GPU against
    the CPU: float64 input, so both sides agree to a few float64 roundings. Bound: each side's error
    is within a few γ_n of its value (Higham §3; n ≤ 1024 terms per dot product: the 32×32 kernels),
    γ_1024 ≈ 1.1e-13 in float64, so 1e-12 (about 9 γ_1024, relative to values of order 1) holds
    on any GPU and summation order."""
    gen = torch.Generator().manual_seed(4)
    thetas = [torch.randn(32, 5, generator=gen, dtype=torch.float64) for _ in range(6)]
    cpu = fastmtl.parameter_similarity(thetas)
    assert torch.allclose(fastmtl.parameter_similarity([cuda(t) for t in thetas]).cpu(), cpu, rtol=0, atol=1e-12)
    G, F = torch.randn(2, 300, generator=gen, dtype=torch.float64), torch.randn(2, 7, generator=gen, dtype=torch.float64)
    G[1] = -G[0] + 0.1 * G[1]  # a conflict: the projection fires
    for a, b in zip(fastmtl.fbgrad(cuda(G), cuda(F)), fastmtl.fbgrad(G, F)):
        assert torch.allclose(a.cpu(), b, rtol=0, atol=1e-12 * float(G.abs().max() + F.abs().max()))
    logits = torch.randn(50, 2, generator=gen, dtype=torch.float64)
    y, s = torch.randint(0, 2, (50,), generator=gen), torch.randint(0, 3, (50,), generator=gen)
    expected = fastmtl.fairness_loss(logits, y, s, num_groups=3)
    assert torch.allclose(fastmtl.fairness_loss(cuda(logits), cuda(y), cuda(s), num_groups=3).cpu(), expected,
                          rtol=1e-12, atol=0)


# The Gram-space methods with a compiled solve (tests/test_solver_dispatch.py lists them).
GRAM_METHODS = ["pcgrad", "mgda", "upgrad", "dualproj", "imtl_g", "aligned_mtl", "nash_mtl", "cagrad", "gradvac"]


@pytest.mark.parametrize("method", GRAM_METHODS)
@pytest.mark.parametrize("T", [1, 5, 64, 70])  # 70: K read from global memory
def test_every_gram_solve_matches_the_cpu(method, T):
    # The same float64 maths on both devices (nvcc may contract a*b+c into an FMA: one rounding
    # difference per operation). The weights are compared through the direction they give: for
    # these G (T ≤ 70 rows of 200 Gaussians, cond(K) < 20) a backward-stable solve moves w·G by
    # about T² u cond(K) |G| ≈ 1e-11 |G|, and 1e-9 is far below any difference of algorithm or
    # task order. An iterative solver's stopping test (MGDA's γ < ε, an early exit) that rounding
    # flipped would move w by up to its tolerance instead: the inputs are fixed, so that would be
    # a reproducible failure to look into (tests/test_mgda_op.py bounds MGDA's path exactly).
    G = random_gradients(T, 200, seed=T).double()
    K = G @ G.T
    options = {"shuffle": False} if method in ("pcgrad", "gradvac") else {}  # the same order on both
    cpu = fastmtl.methods.create(method, impl="cpp", **options).weights(K)
    on_gpu = fastmtl.methods.create(method, impl="cuda", **options).weights(K.cuda()).cpu()
    assert torch.isfinite(on_gpu).all() == torch.isfinite(cpu).all()
    assert_close_rel(on_gpu @ G, cpu @ G, 1e-9, method, scale=G.abs().max() * T)
