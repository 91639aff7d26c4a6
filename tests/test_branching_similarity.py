"""Linear CKA (FairBranch, Roy et al. 2024, Eq. 7-9) and the greedy pairing of tasks (Eq. 10-11):
``linear_cka`` / ``parameter_similarity`` vs the formula written out with an explicit centring
matrix and explicit traces (tests/oracles.py), hand-computed cases and CKA's invariances;
``pair_tasks`` vs a brute-force scan of every remaining pair."""

import math

import pytest
import torch
from conftest import ALL_IMPLS, DEVICES, DTYPES, UNIT_ROUNDOFF, gamma
from oracles import linear_cka_direct, pair_tasks_brute

import fastmtl
from fastmtl.branching import linear_cka, pair_tasks, parameter_similarity

F64 = torch.float64


# ----- error bounds -------------------------------------------------------------------------------
#
# Both fastmtl and the oracle compute CKA as the cosine of the two centred kernels k_a, k_b
# (vectors of n² entries). If the kernels are computed with relative errors r_a = |Δk_a| / |k_a|
# and r_b, the cosine moves by at most 2 r_a + 2 r_b (|x'/|x'| - x/|x|| <= 2 |Δx| / |x|, and the
# cosine of unit vectors is 1-Lipschitz in each). The cosine of the computed kernels itself (a
# Gram entry of N = n² products, two diagonal entries, two square roots, a product and a division)
# errs by at most γ_{2N+6} (Higham's γ_n, any summation order; |cos| <= 1).
#
# Kernel error, fastmtl (accumulation dtype u, p columns): the centred θ_c = (θ - θ_0) - mean is
# formed with one rounding for the shift (u M_j, M_j = max_i |θ_ij - θ_0j|; exact for subnormals),
# an exact power-of-two scaling (which CKA ignores), a mean of n terms (γ_n M_j and one rounding
# for the division) and one rounding for the subtraction (u |θ_c| <= 2u M_j): elementwise
# |Δθ_c| <= γ_{n+8} M_j. With ρ = |Δθ_c|_F / |θ_c|_F,
# |θ̂θ̂ᵀ - θθᵀ|_F <= (2ρ + ρ²) |θ_c|_F², the p-term products add γ_{p+1} |θ̂_c|_F² <= γ_{p+1} (1 + ρ)² |θ_c|_F²,
# and |θ_c θ_cᵀ|_F >= |θ_c|_F² / sqrt(r) (r = rank <= min(n, p): Σσ⁴ >= (Σσ²)² / r).
#
# Kernel error, the float64 oracle (H K H with an explicit H, |H|_2 = 1, |H|_F <= sqrt(n)):
# K = θθᵀ errs by γ_{p+1} |θ|_F², each product by H adds γ_{n+1} sqrt(n) |K|_F, so
# |ΔK_c|_F <= (γ_{p+1} + 3 sqrt(n) γ_{n+1}) |θ|_F², relative to |K_c|_F >= |θ_c|_F² / sqrt(r):
# κ = |θ|_F² / |θ_c|_F² (large when the mean row dominates) enters here.
# The float64 evaluation of these norms errs far below the slack in the γ's.


def _kernel_error_fastmtl(theta: torch.Tensor, acc: torch.dtype) -> float:
    theta = theta.detach().double().cpu()
    n, p = theta.shape
    centred = theta - theta.mean(0, keepdim=True)
    norm_c = float(centred.norm())
    if norm_c == 0:
        return math.inf
    M = (theta - theta[:1]).abs().amax(0)
    rho = gamma(n + 8, acc) * math.sqrt(n) * float(M.norm()) / norm_c
    rank = min(n, p)
    return math.sqrt(rank) * (2 * rho + rho**2 + gamma(p + 1, acc) * (1 + rho) ** 2)


def _kernel_error_oracle(theta: torch.Tensor) -> float:
    theta = theta.detach().double().cpu()
    n, p = theta.shape
    centred = theta - theta.mean(0, keepdim=True)
    kappa = float(theta.norm()) ** 2 / float(centred.norm()) ** 2
    return math.sqrt(min(n, p)) * kappa * (gamma(p + 1, F64) + 3 * math.sqrt(n) * gamma(n + 1, F64))


def cka_bound(A: torch.Tensor, B: torch.Tensor, acc: torch.dtype) -> float:
    """Bound on |parameter_similarity([A, B])[0, 1] - linear_cka_direct(A, B)| (see above)."""
    N = A.shape[0] ** 2 + 1
    fast = 2 * (_kernel_error_fastmtl(A, acc) + _kernel_error_fastmtl(B, acc)) + gamma(2 * N + 6, acc)
    oracle = 2 * (_kernel_error_oracle(A) + _kernel_error_oracle(B)) + gamma(2 * N + 6, F64)
    return fast + oracle


def acc_of(*dtypes) -> torch.dtype:
    return F64 if F64 in dtypes else torch.float32


def random_theta(n: int, p: int, seed: int, dtype=F64, offset: float = 1.5) -> torch.Tensor:
    """Random parameters with a common mean row (so that centring matters)."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, p, generator=gen, dtype=F64) + offset * torch.randn(1, p, generator=gen, dtype=F64)).to(dtype)


# ----- linear CKA vs the formula ------------------------------------------------------------------


@pytest.mark.parametrize("impl", ALL_IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_parameter_similarity_matches_the_formula(impl, dtype):
    for seed, (n, ps) in enumerate([(5, [3, 1, 4, 2]), (8, [2, 8, 5]), (3, [1, 2]), (16, [4, 9, 2, 3, 7])]):
        thetas = [random_theta(n, p, 10 * seed + t, dtype) for t, p in enumerate(ps)]
        S = parameter_similarity(thetas, impl=impl)
        acc = acc_of(dtype)
        assert S.dtype == acc and S.shape == (len(ps), len(ps))
        for a in range(len(ps)):
            for b in range(len(ps)):
                expected = linear_cka_direct(thetas[a], thetas[b])
                bound = cka_bound(thetas[a], thetas[b], acc)
                assert abs(float(S[a, b]) - float(expected)) <= bound, (seed, a, b, float(S[a, b]), float(expected))
        # 1 on the diagonal, within the same bound (the exact CKA of a matrix with itself is 1).
        for a in range(len(ps)):
            assert abs(float(S[a, a]) - 1.0) <= cka_bound(thetas[a], thetas[a], acc)
        # The matrices differ: CKA is not trivially 1 (the test can fail).
        assert float(S.min()) < 0.9


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_cka_is_the_off_diagonal_entry(dtype):
    A, B = random_theta(6, 3, 1, dtype), random_theta(6, 5, 2, dtype)
    cka = linear_cka(A, B)
    assert cka.dim() == 0
    assert abs(float(cka) - float(linear_cka_direct(A, B))) <= cka_bound(A, B, acc_of(dtype))
    assert torch.equal(cka, parameter_similarity([A, B])[0, 1])


def test_mixed_dtypes_accumulate_in_float64():
    A, B = random_theta(6, 3, 1, torch.float32), random_theta(6, 2, 2, F64)
    S = parameter_similarity([A, B])
    assert S.dtype == F64
    assert abs(float(S[0, 1]) - float(linear_cka_direct(A, B))) <= cka_bound(A, B, F64)


def test_non_contiguous_input():
    # θ = Wᵀ of an nn.Linear's weight: a transposed view.
    torch.manual_seed(0)
    heads = [torch.nn.Linear(7, 3), torch.nn.Linear(7, 2)]
    thetas = [head.weight.T for head in heads]
    assert not thetas[0].is_contiguous()
    S = parameter_similarity(thetas)
    expected = linear_cka_direct(*thetas)
    assert abs(float(S[0, 1]) - float(expected)) <= cka_bound(*thetas, torch.float32)
    assert not S.requires_grad  # the similarity measures parameters, it is not differentiated


@pytest.mark.parametrize("device", DEVICES)
def test_devices(device):
    thetas = [random_theta(6, p, p, torch.float32).to(device) for p in (2, 3, 4)]
    S = parameter_similarity(thetas)
    assert S.device.type == torch.device(device).type
    for a in range(3):
        for b in range(3):
            assert abs(float(S[a, b]) - float(linear_cka_direct(thetas[a], thetas[b]))) <= cka_bound(
                thetas[a], thetas[b], torch.float32)


# ----- hand-computed cases and properties ---------------------------------------------------------


def test_hand_computed_cases():
    # n = 3, p = 1: θ_a = e_1, θ_b = e_2. Centred: a = (2, -1, -1)/3, b = (-1, 2, -1)/3; rank-one
    # kernels, so CKA = cos²(a, b) = ((-2 - 2 + 1)/9)² / ((6/9)²) = 1/4.
    a = torch.tensor([[1.0], [0.0], [0.0]], dtype=F64)
    b = torch.tensor([[0.0], [1.0], [0.0]], dtype=F64)
    assert abs(float(linear_cka_direct(a, b)) - 0.25) <= 1e-15  # the oracle itself: 0.25 up to a few roundings
    for dtype in DTYPES:
        assert abs(float(linear_cka(a.to(dtype), b.to(dtype))) - 0.25) <= cka_bound(a, b, acc_of(dtype)) / 2
    # Orthogonal centred columns: CKA 0. (1, -1, 0, 0) and (0, 0, 1, -1) already have zero mean.
    c = torch.tensor([[1.0], [-1.0], [0.0], [0.0]])
    d = torch.tensor([[0.0], [0.0], [1.0], [-1.0]])
    assert float(linear_cka(c, d)) == 0.0  # every value on the way is a small integer: exact
    # n = 2: each centred kernel is a multiple of [[1, -1], [-1, 1]], so CKA = 1 for any two
    # matrices with two different rows.
    e, f = random_theta(2, 3, 5), random_theta(2, 1, 6)
    assert abs(float(linear_cka(e, f)) - 1.0) <= cka_bound(e, f, F64)
    # Identical matrices: 1.
    g = random_theta(5, 3, 7)
    assert abs(float(linear_cka(g, g.clone())) - 1.0) <= cka_bound(g, g, F64)


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_centred_kernel_has_similarity_zero(dtype):
    # Every row equal (including rows whose mean does not round exactly, 0.1 three times), or one row.
    for constant in (torch.full((3, 2), 0.1, dtype=dtype), torch.ones(4, 3, dtype=dtype) * torch.tensor([1.0, -3.0, 7.0]).to(dtype)):
        other = random_theta(constant.shape[0], 2, 3, dtype)
        S = parameter_similarity([constant, other, constant])
        assert torch.isfinite(S).all()
        assert S[0].eq(0).all() and S[:, 0].eq(0).all() and S[2].eq(0).all() and S[:, 2].eq(0).all()
        assert abs(float(S[1, 1]) - 1.0) <= cka_bound(other, other, acc_of(dtype))
        # (The float64 oracle, centring with an explicit H, gets only ~1e-17 here instead of 0: a
        # matrix of equal rows is where fastmtl's exact shift by the first row matters.)
    single = parameter_similarity([torch.randn(1, 3).to(dtype), torch.randn(1, 2).to(dtype)])
    assert torch.equal(single, torch.zeros(2, 2, dtype=single.dtype))


def test_extreme_magnitudes_neither_overflow_nor_underflow(keep_subnormals):
    # float32 kernels of entries ~1e30 would overflow (1e60), of ~1e-30 underflow; the power-of-two
    # scaling makes them as accurate as at magnitude 1. 1e-41: subnormal float32 entries (the shift
    # by the first row is exact there, the scaling too, so the same bound holds for the stored values).
    # The float64 oracle would itself overflow or underflow (it squares kernels: θ⁴), so it sees
    # the stored values times 2^k, exactly, which leaves CKA as it is.
    check_extreme_magnitudes()


def check_extreme_magnitudes():
    base = [random_theta(6, 3, 1, F64), random_theta(6, 2, 2, F64), random_theta(6, 4, 3, F64)]
    for scale in (1e30, 1e-30, 1e-41):
        thetas = [(theta * scale).float() for theta in base]
        S = parameter_similarity(thetas)
        back = 2.0 ** -round(math.log2(scale))
        for a in range(3):
            for b in range(3):
                expected = linear_cka_direct(thetas[a].double() * back, thetas[b].double() * back)
                bound = cka_bound(thetas[a].double() * back, thetas[b].double() * back, torch.float32)
                assert abs(float(S[a, b]) - float(expected)) <= bound, (scale, a, b)
        assert float(S[0, 1]) < 0.9  # not trivially 1


@pytest.mark.parametrize("dtype", DTYPES)
def test_invariances(dtype):
    # Inputs on a dyadic grid, and an exactly orthogonal Q (a 4x4 Hadamard matrix / 2, entries ±1/2):
    # θQ is exact in float64 and representable in every dtype tested (integers below 2^7, / 8).
    gen = torch.Generator().manual_seed(3)
    A = torch.randint(-8, 9, (6, 4), generator=gen).double() / 4
    B = torch.randint(-8, 9, (6, 3), generator=gen).double() / 4
    H2 = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=F64)
    Q = torch.kron(H2, H2) / 2
    assert torch.equal(Q @ Q.T, torch.eye(4, dtype=F64))
    AQ = A @ Q
    assert not torch.allclose(AQ, A)
    A_, B_, AQ_ = A.to(dtype), B.to(dtype), AQ.to(dtype)
    assert torch.equal(AQ_.double(), AQ) and torch.equal(A_.double(), A)
    acc = acc_of(dtype)
    s = float(linear_cka(A_, B_))
    assert abs(float(linear_cka(AQ_, B_)) - s) <= cka_bound(A, B, acc) + cka_bound(AQ, B, acc)
    # Isotropic scaling: by 3 (exact on this grid) within the bounds; by a power of two, bit for bit
    # (the centring is the same up to an exact factor, which the normalisation removes).
    assert abs(float(linear_cka((3 * A).to(dtype), B_)) - s) <= cka_bound(A, B, acc) + cka_bound(3 * A, B, acc)
    assert float(linear_cka((4 * A).to(dtype), B_)) == s
    # Symmetry: the same pair either way round.
    assert abs(float(linear_cka(B_, A_)) - s) <= 2 * cka_bound(A, B, acc)
    # A permutation of the rows (input units) of both: the kernels are permuted alike.
    perm = torch.randperm(6, generator=gen)
    assert abs(float(linear_cka(A_[perm], B_[perm])) - s) <= 2 * cka_bound(A, B, acc)
    # The oracle agrees about the invariances too.
    assert abs(float(linear_cka_direct(AQ, B)) - float(linear_cka_direct(A, B))) <= 2 * cka_bound(A, B, acc)


def test_nan_and_inf_propagate_to_their_row_and_column():
    thetas = [random_theta(5, p, p) for p in (2, 3, 4)]
    for bad in (float("nan"), float("inf")):
        for row in (0, 2):  # the first row (the one subtracted) and another
            broken = [theta.clone() for theta in thetas]
            broken[1][row, 1] = bad
            S = parameter_similarity(broken)
            assert S[1].isnan().all() and S[:, 1].isnan().all()
            keep = [0, 2]
            assert torch.isfinite(S[keep][:, keep]).all()
            assert abs(float(S[0, 2]) - float(linear_cka_direct(thetas[0], thetas[2]))) <= cka_bound(
                thetas[0], thetas[2], F64)


def test_bad_input_errors():
    A = torch.randn(4, 2)
    with pytest.raises(ValueError, match="same number of rows"):
        parameter_similarity([A, torch.randn(5, 2)])
    with pytest.raises(ValueError, match="2-D"):
        parameter_similarity([A, torch.randn(4)])
    with pytest.raises(ValueError, match="2-D"):
        parameter_similarity([A, torch.randn(4, 2, 1)])
    with pytest.raises(ValueError, match="2-D"):
        parameter_similarity([A, torch.randn(4, 0)])
    with pytest.raises(ValueError, match="empty"):
        parameter_similarity([])
    with pytest.raises(TypeError):
        parameter_similarity(A)  # a tensor, not a list of them
    with pytest.raises(TypeError):
        parameter_similarity([A, A.numpy()])
    with pytest.raises(TypeError):
        parameter_similarity([A, torch.ones(4, 2, dtype=torch.int64)])
    with pytest.raises(TypeError):
        parameter_similarity(3)
    with pytest.raises(ValueError, match="one device"):
        parameter_similarity([A, torch.empty(4, 2, device="meta")])
    with pytest.raises(ValueError, match="same number of rows"):
        linear_cka(A, torch.randn(3, 2))


# ----- pairing --------------------------------------------------------------------------------


def grid_similarity(T: int, seed: int, levels: int = 5) -> torch.Tensor:
    """A symmetric matrix of values on a coarse grid {0, 1/(levels-1), ..., 1} (many ties), with an
    arbitrary diagonal (pair_tasks ignores it)."""
    gen = torch.Generator().manual_seed(seed)
    values = torch.randint(0, levels, (T, T), generator=gen).double() / (levels - 1)
    S = torch.triu(values, 1)
    S = S + S.T
    S.diagonal().copy_(torch.rand(T, generator=gen, dtype=F64) * 3)
    return S


def test_pair_tasks_matches_brute_force():
    fired = ties = 0
    for seed in range(300):
        T = 1 + seed % 8
        S = grid_similarity(T, seed)
        for tau in (0.0, 0.25, 0.5, 0.6, 0.75, 1.0):
            expected = pair_tasks_brute(S, tau)
            assert pair_tasks(S, tau) == expected, (seed, tau, S)
            fired += any(len(g) == 2 for g in expected)
        upper = S[torch.triu_indices(T, T, 1).unbind()]
        ties += int(upper.numel() != upper.unique().numel())
    assert fired > 500 and ties > 100  # pairs were formed, and ties were broken, many times


def test_pair_tasks_on_cka_matrices_and_float32():
    # The real input: float32 CKA matrices (compared with tau as float64 values).
    for seed in range(40):
        thetas = [random_theta(6, 2, 100 * seed + t, torch.float32, offset=0.0) for t in range(6)]
        S = parameter_similarity(thetas)
        for tau in (0.1, 0.3, 0.5):
            assert pair_tasks(S, tau) == pair_tasks_brute(S.double(), tau)


def test_pair_tasks_hand_cases():
    S = torch.tensor([[1.0, 0.9, 0.1, 0.0],
                      [0.9, 1.0, 0.2, 0.95],
                      [0.1, 0.2, 1.0, 0.8],
                      [0.0, 0.95, 0.8, 1.0]])
    # (1, 3) first (0.95), then (0, 2) at 0.1 only if tau <= 0.1; (2, 3) is gone with 3.
    assert pair_tasks(S, 0.5) == [(0,), (1, 3), (2,)]
    assert pair_tasks(S, 0.05) == [(0, 2), (1, 3)]
    assert pair_tasks(S, 0.96) == [(0,), (1,), (2,), (3,)]
    # Ties go to the pair first in index order: (0, 1) before (0, 2) before (1, 2).
    ones = torch.ones(3, 3)
    assert pair_tasks(ones, 0.5) == [(0, 1), (2,)]
    tie = torch.tensor([[1.0, 0.3, 0.7, 0.7], [0.3, 1.0, 0.7, 0.7], [0.7, 0.7, 1.0, 0.2], [0.7, 0.7, 0.2, 1.0]])
    assert pair_tasks(tie, 0.5) == [(0, 2), (1, 3)]
    # tau = 0 pairs every non-negative pair greedily; tau = 1 only pairs of similarity 1; T = 1.
    assert pair_tasks(torch.zeros(4, 4), 0.0) == [(0, 1), (2, 3)]
    negative = -torch.ones(3, 3)
    assert pair_tasks(negative, 0.0) == [(0,), (1,), (2,)]
    assert pair_tasks(torch.tensor([[1.0, 1.0, 0.99], [1.0, 1.0, 0.99], [0.99, 0.99, 1.0]]), 1.0) == [(0, 1), (2,)]
    assert pair_tasks(torch.ones(1, 1), 0.5) == [(0,)]
    # numpy / int tau accepted (a real number).
    assert pair_tasks(S, 1) == [(0,), (1,), (2,), (3,)]


def test_pair_tasks_errors():
    S = torch.eye(3)
    for tau in (-0.1, 1.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="tau"):
            pair_tasks(S, tau)
    with pytest.raises(TypeError):
        pair_tasks(S, True)
    with pytest.raises(TypeError):
        pair_tasks(S, "0.5")
    with pytest.raises(ValueError, match="symmetric"):
        pair_tasks(torch.tensor([[1.0, 0.2], [0.8, 1.0]]), 0.5)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="NaN or Inf"):
            pair_tasks(torch.tensor([[1.0, bad], [bad, 1.0]]), 0.5)
    with pytest.raises(ValueError, match="square"):
        pair_tasks(torch.ones(2, 3), 0.5)
    with pytest.raises(ValueError, match="square"):
        pair_tasks(torch.ones(3), 0.5)
    with pytest.raises(ValueError, match="empty"):
        pair_tasks(torch.ones(0, 0), 0.5)
    with pytest.raises(TypeError):
        pair_tasks([[1.0, 0.5], [0.5, 1.0]], 0.5)
    with pytest.raises(TypeError):
        pair_tasks(torch.ones(2, 2, dtype=torch.int64), 0.5)


def test_unit_roundoff_table_is_what_the_bounds_assume():
    # The bounds above take u from conftest: float32 accumulation for every non-float64 input.
    assert UNIT_ROUNDOFF[torch.float32] == 2.0**-24 and fastmtl.parameter_similarity is parameter_similarity
