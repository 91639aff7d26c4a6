"""The compiled MGDA solve (torch.ops.fastmtl.mgda_weights, csrc/include/fastmtl/mgda_math.h)
against the torch reference (methods/gram_space.py: mgda_weights), hand-computed cases and
Frank-Wolfe's own optimality certificate; the NaN policy, argument checks, CUDA vs CPU."""

import math

import pytest
import torch

import fastmtl
from fastmtl.methods.gram_space import mgda_weights

pytestmark = [pytest.mark.skipif(not fastmtl.HAS_EXT, reason="fastmtl._C not built"),
              pytest.mark.usefixtures("keep_subnormals")]  # exact scaling and tiny magnitudes need subnormals
EPS = torch.finfo(torch.float64).eps


def op(K, max_iters=100, epsilon=1e-3):
    return torch.ops.fastmtl.mgda_weights(K, max_iters, epsilon)


def gram_of(G):
    return G @ G.T


def families(T, seed):
    """Gram matrices of random, rank-deficient, zero-row, duplicated and opposite task gradients."""
    gen = torch.Generator().manual_seed(seed)
    G = torch.randn(T, 40, generator=gen, dtype=torch.float64)
    yield "random", gram_of(G)
    rank = max(1, T // 3)
    yield "rank-deficient", gram_of(torch.randn(T, rank, generator=gen, dtype=torch.float64)
                                    @ torch.randn(rank, 40, generator=gen, dtype=torch.float64))
    zero = G.clone()
    zero[0] = 0
    yield "zero row", gram_of(zero)
    duplicated = G.clone()
    duplicated[T // 2] = duplicated[0]
    yield "duplicated", gram_of(duplicated)
    opposite = G.clone()
    opposite[T - 1] = -opposite[0]
    yield "opposite", gram_of(opposite)


def path_bound(K, max_iters=100, epsilon=1e-3):
    """The reference's Frank-Wolfe path on K with a first-order bound of how far rounding can move
    the final α: ``(alpha, bound, decisive)``. Two runs of these steps (summing in different orders,
    contracting FMAs or not) take the same branch at every step when each decision clears the
    perturbation of its inputs (``decisive``); their α then differ by at most ``bound``.

    Per step, with M = max|K| and e the bound on |Δα|∞ so far: a = (Kα)_t and b = αᵀKα are sums of
    T and 2T products of entries <= M and weights <= 1, so |Δa| <= M (T e + 2 γ_T) and
    |Δb| <= M (2T e + 2 γ_2T) (both runs' rounding, Higham §3.1); c = K_tt is exact. With
    N = b - a and D = b + c - 2a, γ = N / D moves by |∂γ/∂a| |Δa| + |∂γ/∂b| |Δb| + 4u|γ|
    (∂γ/∂a = (2N - D) / D², ∂γ/∂b = (D - N) / D²), and α' = (1 - γ)α + γ e_t by 2|Δγ| + 4u.
    Decisions: the argmin's margin over the second smallest (Kα)_j, |c - a|, |b - a| and
    |γ - ε| must each exceed the perturbation of what they compare."""
    T = K.shape[0]
    u = EPS / 2
    gamma_ = lambda n: n * u / (1 - n * u)  # noqa: E731 (Higham's γ_n)
    M = float(K.abs().max())
    alpha = torch.full((T,), 1.0 / T, dtype=torch.float64)
    e, decisive = u, True
    for _ in range(max_iters):
        K_alpha = K @ alpha
        order = K_alpha.argsort()
        t = int(order[0])
        delta_a = M * (T * e + 2 * gamma_(T))
        delta_b = M * (2 * T * e + 2 * gamma_(2 * T))
        if T > 1 and float(K_alpha[order[1]] - K_alpha[t]) <= 2 * delta_a:
            decisive = False
        a, b, c = float(K_alpha[t]), float(alpha @ K_alpha), float(K[t, t])
        N, D = b - a, b + c - 2 * a
        if abs(c - a) <= delta_a or abs(b - a) <= delta_a + delta_b:
            decisive = False
        if c <= a:
            gamma, delta_gamma = 1.0, 0.0
        elif b <= a:
            gamma, delta_gamma = 0.0, 0.0
        else:
            gamma = N / D
            delta_gamma = abs(2 * N - D) / D**2 * delta_a + abs(D - N) / D**2 * delta_b + 4 * u * gamma
        if abs(gamma - epsilon) <= delta_gamma:
            decisive = False
        alpha = (1 - gamma) * alpha + gamma * torch.nn.functional.one_hot(torch.tensor(t), T).double()
        e = e + 2 * delta_gamma + 4 * u
        if gamma < epsilon:
            break
    return alpha, e, decisive


@pytest.mark.parametrize("T", [2, 3, 5, 8, 16, 33, 64])  # T = 1: test_hand_computed
def test_matches_reference_path(T):
    # The first steps of Frank-Wolfe (ε ~ 0: no early stop), where every decision of the
    # reference's path clears its rounding (path_bound): the op must follow the same path, α
    # within the bound of the test's replay, and so must the torch reference. (Later steps: the
    # line search divides by ever smaller curvatures, and the bound grows useless; the whole
    # 100-step solve is compared with torchjd's MGDA in tests/test_methods.py.)
    decisive_cases = 0
    for seed in range(3):
        for family, K in families(T, seed):
            for steps in (1, 2, 3):
                replay, bound, decisive = path_bound(K, steps, 1e-300)
                if decisive:
                    decisive_cases += 1
                    assert (op(K, steps, 1e-300) - replay).abs().max() <= bound, (family, seed, steps)
                    assert (mgda_weights(K, steps, 1e-300) - replay).abs().max() <= bound, (family, seed, steps)
    assert decisive_cases >= 5  # the comparison is not vacuous


@pytest.mark.parametrize("T", [1, 2, 3, 5, 8, 16, 33, 64])
def test_a_point_of_the_simplex(T):
    for family, K in families(T, 0):
        alpha = op(K)
        assert alpha.dtype == torch.float64 and alpha.shape == (T,)
        assert (alpha >= 0).all() and abs(float(alpha.sum()) - 1) <= 4 * T * EPS, family


@pytest.mark.parametrize("T", [2, 5, 16])
def test_same_steps_as_reference_on_well_separated_input(T):
    # Orthogonal gradients of distinct norms: the vertex picked at every step is separated from
    # the others by far more than rounding, so both follow one path and agree to rounding:
    # each step is O(T) operations on values <= max K, over <= 100 steps.
    K = torch.diag(torch.arange(1, T + 1, dtype=torch.float64) ** 2)
    alpha = op(K, 100, 1e-9)
    expected = mgda_weights(K, 100, 1e-9)
    assert (alpha - expected).abs().max() <= 100 * 4 * T * EPS


def test_hand_computed():
    # K = diag(1, 4): from (1/2, 1/2), Kα = (1/2, 2), t = 0, a = 1/2, b = 5/4, c = 1:
    # γ = (5/4 - 1/2) / (5/4 + 1 - 1) = 3/5, α = (4/5, 1/5), the exact minimiser (Kα = (4/5, 4/5));
    # the next step has γ = 0 < ε and stops.
    alpha = op(torch.diag(torch.tensor([1.0, 4.0], dtype=torch.float64)))
    assert torch.allclose(alpha, torch.tensor([0.8, 0.2], dtype=torch.float64), rtol=0, atol=4 * EPS)
    # T = 1: the only point of the simplex.
    assert op(torch.tensor([[3.0]], dtype=torch.float64)).tolist() == [1.0]
    # Zero K: every point is optimal; the first step sees c <= a (0 <= 0) and moves to the
    # lowest-index vertex, as the reference and torchjd's MGDA.
    assert op(torch.zeros(3, 3, dtype=torch.float64)).tolist() == [1.0, 0.0, 0.0]
    # A zero gradient among others: the minimum norm is 0, at that vertex.
    K = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    assert op(K).tolist() == [0.0, 1.0]


@pytest.mark.parametrize("scale", [1e-150, 1e150])
def test_scale_free(scale):
    # α depends on K only up to scale; the powers of two keep the scaling exact.
    K = gram_of(torch.randn(6, 20, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    factor = 2.0 ** round(math.log2(scale))
    assert torch.equal(op(K * factor), op(K))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_gram_gives_nan(bad):
    K = torch.eye(4, dtype=torch.float64)
    K[1, 2] = bad
    assert op(K).isnan().all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_any_floating_gram_is_solved_in_float64(dtype):
    K = gram_of(torch.randn(5, 8, generator=torch.Generator().manual_seed(4))).to(dtype)
    assert torch.equal(op(K), op(K.double()))


def test_non_contiguous_gram():
    K = gram_of(torch.randn(6, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64))
    assert torch.equal(op(K.T), op(K.T.contiguous()))


@pytest.mark.parametrize("args, message", [
    ((torch.zeros(2, 3), 10, 1e-3), "square"),
    ((torch.zeros(0, 0), 10, 1e-3), "non-empty"),
    ((torch.zeros(2, 2, dtype=torch.int64), 10, 1e-3), "floating"),
    ((torch.eye(2), 0, 1e-3), "max_iters"),
    ((torch.eye(2), 10, 0.0), "epsilon"),
])
def test_bad_arguments_raise(args, message):
    with pytest.raises(RuntimeError, match=message):
        op(*args)


def test_method_uses_the_op():
    G = torch.randn(5, 30, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    compiled = fastmtl.methods.create("mgda", impl="cpp")
    K = gram_of(G)
    assert torch.equal(compiled.weights(K), op(K))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
@pytest.mark.parametrize("T", [1, 3, 16, 64, 100])  # 100: K in global memory
def test_cuda_matches_cpu(T):
    # The same float64 steps; nvcc may contract a*b+c into an FMA, within path_bound's rounding.
    for seed in range(2):
        for family, K in families(T, seed):
            for steps in (1, 2, 3):
                replay, bound, decisive = path_bound(K, steps, 1e-300)
                if decisive:
                    assert (op(K.cuda(), steps, 1e-300).cpu() - replay).abs().max() <= bound, family
