"""GradDrop: kernels vs reference (same Philox stream), reference vs the per-task paper
algorithm and torchjd, and the properties the paper's construction implies."""

from itertools import pairwise

import pytest
import torch
from conftest import ALL_IMPLS, COMPILED_IMPLS, DTYPES, assert_within, gamma, weighted_sum_error_bound
from oracles import graddrop_per_vector, random_gradients

import fastmtl
from fastmtl import reference


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def bound_vs_per_vector(G):
    """How far fastmtl's GradDrop may lie from graddrop_per_vector (float64) given the same masks:
    fastmtl sums T factors in {1, leak_i} times g_i (weighted_sum_error_bound); the oracle forms
    each factor as leak + (1 - leak) M, within 2u of 1 or exactly leak, then the same sum: γ_{T+2}."""
    T = G.shape[0]
    return weighted_sum_error_bound(G) + gamma(T + 2, torch.float64) * G.double().abs().sum(0)


def stream_of(seed, P):
    """The uniforms U that graddrop draws for a generator seeded with `seed`."""
    words = torch.randint(0, 2**62, (2,), generator=seeded(seed), dtype=torch.int64)
    return reference.philox_uniform(words, P)


@pytest.mark.parametrize("impl", ALL_IMPLS)
@pytest.mark.parametrize("T", [1, 2, 5, 8])
def test_matches_per_task_paper_algorithm(impl, T):
    G = random_gradients(T, 5000, seed=T, dtype=torch.float64)
    leak = torch.linspace(0, 0.5, T, dtype=torch.float64)
    out = fastmtl.graddrop(G, leak=leak, generator=seeded(T), impl=impl)
    expected = graddrop_per_vector(G, stream_of(T, 5000), leak=leak)
    assert_within(out, expected, bound_vs_per_vector(G))


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_feature_level_signs_match_paper(impl):
    G = random_gradients(4, 3000, seed=2, dtype=torch.float64)
    activation = torch.randn(3000, dtype=torch.float64)
    activation[:10] = 0  # sign 0: no coordinate kept unless leaked
    out = fastmtl.graddrop(G, signs=activation, leak=0.25, generator=seeded(3), impl=impl)
    expected = graddrop_per_vector(G, stream_of(3, 3000), leak=0.25, signs=activation)
    bound = bound_vs_per_vector(G)
    assert_within(out[10:], expected[10:], bound[10:])
    # Purity NaN-free, all dropped: 0.25 = 2^-2 scales exactly, two sums of 4 terms (γ_3 each).
    assert_within(out[:10], 0.25 * G[:, :10].sum(0), 2 * weighted_sum_error_bound(G[:, :10]))


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_matches_torchjd_given_the_same_uniforms(impl, monkeypatch):
    torchjd = pytest.importorskip("torchjd.aggregation")
    G = random_gradients(4, 2000, seed=6, dtype=torch.float64)
    leak = torch.tensor([0.0, 0.1, 0.5, 1.0], dtype=torch.float64)
    U = stream_of(9, 2000).double()
    aggregator = torchjd.GradDrop(leak=leak)
    monkeypatch.setattr(torch, "rand", lambda *args, **kwargs: U)  # torchjd draws U with torch.rand
    expected = aggregator(G)
    monkeypatch.undo()
    out = fastmtl.graddrop(G, leak=leak, generator=seeded(9), impl=impl)
    # torchjd forms the factors and the sum in float64 as the oracle does: the oracle's bound holds for it.
    assert_within(out, expected, bound_vs_per_vector(G))


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_sign_consistent_coordinates_pass_whole(impl):
    G = torch.rand(5, 4000) + 0.1
    G[:, 2000:] *= -1  # first half all positive, second half all negative
    out = fastmtl.graddrop(G, generator=seeded(1), impl=impl)
    U = stream_of(1, 4000)
    whole = U[2000:] > 0  # purity 0 is not < U = 0: the paper's strict inequality drops it
    bound = 2 * weighted_sum_error_bound(G)  # two float32 sums of the same 5 terms
    assert_within(out[:2000], G[:, :2000].sum(0), bound[:2000])
    assert_within(out[2000:][whole], G[:, 2000:].sum(0)[whole], bound[2000:][whole])


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_leak_one_gives_the_sum(impl):
    G = random_gradients(6, 10_000, seed=3)
    assert_within(fastmtl.graddrop(G, leak=1.0, impl=impl), G.sum(0), 2 * weighted_sum_error_bound(G))


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_each_coordinate_is_the_positive_or_the_negative_part(impl):
    G = random_gradients(5, 20_000, seed=4, dtype=torch.float64)
    out = fastmtl.graddrop(G, generator=seeded(2), impl=impl)
    positive, negative = G.clamp(min=0).sum(0), G.clamp(max=0).sum(0)
    bound = 2 * weighted_sum_error_bound(G)  # two float64 sums of (up to) the same 5 terms
    is_pos = (out - positive).abs() <= bound
    is_neg = (out - negative).abs() <= bound
    assert (is_pos | is_neg).all()
    assert is_pos.any() and is_neg.any()


@pytest.mark.parametrize("impl", ALL_IMPLS)
@pytest.mark.parametrize("column,purity", [((3.0, -1.0), 0.75), ((1.0, -1.0), 0.5), ((1.0, -9.0), 0.1)])
def test_keep_frequency_tracks_purity(impl, column, purity):
    P = 200_000
    G = torch.tensor(column)[:, None].expand(2, P).contiguous()
    out = fastmtl.graddrop(G, generator=seeded(7), impl=impl)
    kept_positive = (out == column[0]).double().mean().item()
    # A binomial frequency: 5 standard deviations (a fair draw fails with probability < 1e-6; the
    # seed is fixed, so the test is deterministic). Not an arithmetic tolerance.
    sigma = (purity * (1 - purity) / P) ** 0.5
    assert abs(kept_positive - purity) < 5 * sigma
    assert ((out == column[0]) | (out == column[1])).all()


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_all_zero_coordinates_give_zero(impl):
    G = torch.zeros(3, 1000)
    G[:, 500:] = torch.randn(3, 500)
    out = fastmtl.graddrop(G, impl=impl)
    assert torch.equal(out[:500], torch.zeros(500))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_single_task_keeps_its_gradient(impl):
    G = random_gradients(1, 5000, seed=8)
    U = stream_of(4, 5000)
    out = fastmtl.graddrop(G, generator=seeded(4), impl=impl)
    kept = (G[0] > 0) | (U > 0)  # P = 1 or 0: kept unless U == 0 for a negative coordinate
    assert torch.equal(out[kept], G[0][kept])


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_nan_and_inf_propagate_per_coordinate(impl):
    G = random_gradients(3, 1000, seed=5)
    G[1, 10] = float("nan")
    G[2, 20] = float("inf")
    signs = torch.randn(1000)
    signs[30] = float("nan")
    out = fastmtl.graddrop(G, signs=signs, leak=0.1, impl=impl)
    assert torch.isnan(out[10]) and torch.isnan(out[30])
    assert not torch.isfinite(out[20])
    finite = torch.ones(1000, dtype=torch.bool)
    finite[[10, 20, 30]] = False
    assert torch.isfinite(out[finite]).all()


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_seeded_calls_reproduce_and_seeds_differ(impl):
    G = random_gradients(4, 5000, seed=1)
    a = fastmtl.graddrop(G, generator=seeded(11), impl=impl)
    b = fastmtl.graddrop(G, generator=seeded(11), impl=impl)
    c = fastmtl.graddrop(G, generator=seeded(12), impl=impl)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    torch.manual_seed(3)
    d = fastmtl.graddrop(G, impl=impl)
    torch.manual_seed(3)
    assert torch.equal(d, fastmtl.graddrop(G, impl=impl))  # the default generator works too


@pytest.mark.parametrize("impl", COMPILED_IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,P", [(1, 1), (2, 255), (3, 257), (5, 2049), (7, 32_774), (8, 70_001), (16, 5000), (64, 700)])
@pytest.mark.parametrize("with_signs", [False, True])
def test_compiled_equals_reference(impl, dtype, T, P, with_signs):
    G = random_gradients(T, P, seed=P + T, dtype=dtype)
    signs = torch.randn(P).to(dtype) if with_signs else None
    leak = torch.rand(T)
    out = fastmtl.graddrop(G, leak=leak, signs=signs, generator=seeded(P), impl=impl)
    ref = fastmtl.graddrop(G, leak=leak, signs=signs, generator=seeded(P), impl="torch")
    assert out.dtype == dtype and out.shape == (P,)
    # Same stream and purity bits, so the same masks (checked exactly by
    # test_compiled_masks_equal_reference_exactly): two accumulations of the same terms, each
    # within weighted_sum_error_bound of the exact sum.
    assert_within(out, ref, 2 * weighted_sum_error_bound(G), f"{dtype}")


@pytest.mark.parametrize("impl", COMPILED_IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,P", [(5, 300), (7, 2049), (13, 32_774), (16, 70_001)])
@pytest.mark.parametrize("with_signs", [False, True])
def test_compiled_masks_equal_reference_exactly(impl, dtype, T, P, with_signs):
    # Small integers and leaks in {0, 1/2, 1}: every product and sum is exact in every dtype, so
    # the outputs are bitwise equal iff every keep decision is the same.
    gen = torch.Generator().manual_seed(T * P)
    G = torch.randint(-8, 9, (T, P), generator=gen).to(dtype)
    leak = torch.randint(0, 3, (T,), generator=gen).float() / 2
    signs = torch.randint(-2, 3, (P,), generator=gen).to(dtype) if with_signs else None
    out = fastmtl.graddrop(G, leak=leak, signs=signs, generator=seeded(T), impl=impl)
    ref = fastmtl.graddrop(G, leak=leak, signs=signs, generator=seeded(T), impl="torch")
    assert torch.equal(out, ref)


@pytest.mark.parametrize("impl", COMPILED_IMPLS)
def test_result_independent_of_thread_count(impl):
    G = random_gradients(6, 200_000, seed=12)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = fastmtl.graddrop(G, leak=0.3, generator=seeded(3), impl=impl)
        torch.set_num_threads(max(2, threads))
        many = fastmtl.graddrop(G, leak=0.3, generator=seeded(3), impl=impl)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_non_contiguous_input(impl):
    base = random_gradients(3, 6002, seed=3, dtype=torch.float64)
    for G in (base[:, ::2], base[:, :3001].T.contiguous().T, base[:, 1:3002]):
        out = fastmtl.graddrop(G, generator=seeded(5), impl=impl)
        assert_within(out, graddrop_per_vector(G.contiguous(), stream_of(5, 3001)), bound_vs_per_vector(G))


def test_reference_philox_stream_matches_known_answer():
    # Random123 known-answer vector for philox4x32_10: counter 0, key 0 ->
    # 6627e8d5 e169c58d bc57ac4c 9b00dbd8. Element 64 * lane of block 0 takes word `lane`.
    U = reference.philox_uniform(torch.tensor([0, 0]), 256)
    words = [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    for lane, word in enumerate(words):
        assert U[64 * lane].item() == (word >> 8) / 16777216.0
    assert (U >= 0).all() and (U < 1).all()


def test_reference_poisons_out_of_range_leak():
    # The path for device tensors, whose leak is not read back to the host to be checked.
    G = random_gradients(3, 50, seed=1)
    out = reference.graddrop(G, torch.tensor([0.0, 1.5, 0.2]), None, stream_of(1, 50))
    assert torch.isnan(out).all()


def test_batched_feature_form_matches_the_paper_per_task():
    # Chen et al. Alg. 1: S_i = Σ_b sign(A_b) ∇_i,b; P = ½(1 + Σ_i S_i / Σ_i |S_i|) per feature;
    # M_i = [P > U][S_i > 0] + [P < U][S_i < 0]; out_b = Σ_i (l_i + (1 - l_i) M_i) ∇_i,b.
    T, B, F = 3, 4, 50
    G = random_gradients(T, B * F, seed=2, dtype=torch.float64)
    A = torch.randn(B * F, dtype=torch.float64)
    leak = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    out = fastmtl.graddrop(G, leak=leak, signs=A, batch=B, generator=seeded(4))
    U = stream_of(4, F).double()
    grads = G.view(T, B, F)
    S = (grads * torch.sign(A).view(1, B, F)).sum(1)
    purity = 0.5 * (1 + S.sum(0) / S.abs().sum(0))
    expected = torch.zeros(B, F, dtype=torch.float64)
    for i in range(T):
        mask = (((purity > U) & (S[i] > 0)) | ((purity < U) & (S[i] < 0))).double()
        expected += (leak[i] + (1 - leak[i]) * mask) * grads[i]
    assert_within(out, expected.reshape(-1), bound_vs_per_vector(G))
    with pytest.raises(ValueError, match="batch"):
        fastmtl.graddrop(G, batch=7)


# ----- Column shards (column_offset): a process holding columns [a, b) of G ---------------------

IMPL_DEVICES = [
    pytest.param("cpp", "cpu", marks=pytest.mark.skipif(not fastmtl.HAS_EXT, reason="fastmtl._C not built")),
    ("torch", "cpu"),
    pytest.param("cuda", "cuda",
                 marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")]),
]
# The splits (a, b) give the shards [0, a), [a, b), [b, P): offsets on and off the Philox block
# (256 columns, 64-column lanes) and the SIMD widths, shards of one column, shards within one block.
SPLITS = [(1, 7), (7, 63), (63, 64), (64, 65), (65, 255), (255, 256), (256, 257), (1, 257), (7, 500)]


def shard_call(G, impl, device, seed, column_offset, leak, signs=None, batch=None):
    gen = torch.Generator(device).manual_seed(seed)
    signs = None if signs is None else signs.to(device)
    out = fastmtl.graddrop(G.to(device), leak=leak.to(device), signs=signs, batch=batch, generator=gen, impl=impl,
                           column_offset=column_offset)
    return out.cpu()


def concatenated_shards(G, impl, device, seed, cuts, leak, signs=None):
    return torch.cat([
        shard_call(G[:, lo:hi], impl, device, seed, lo, leak, None if signs is None else signs[lo:hi])
        for lo, hi in pairwise([0, *cuts, G.shape[1]])
    ])


@pytest.mark.parametrize("impl,device", IMPL_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_signs", [False, True])
@pytest.mark.parametrize("cuts", SPLITS)
def test_column_shards_equal_the_unsharded_call_bitwise(impl, device, dtype, with_signs, cuts):
    # Each column's purity, mask and sum use that column only (sums over tasks, in index order),
    # and column c draws stream element c on every shard: the concatenation is the whole call,
    # bit for bit, with no tolerance.
    P = 777
    G = random_gradients(5, P, seed=sum(cuts), dtype=dtype)
    signs = torch.randn(P, generator=seeded(1)).to(dtype) if with_signs else None
    leak = torch.tensor([0.0, 0.25, 0.5, 0.0, 0.75])  # < 1: the mask changes the result
    whole = shard_call(G, impl, device, 3, 0, leak, signs)
    assert torch.equal(concatenated_shards(G, impl, device, 3, cuts, leak, signs), whole)
    # The test can fail: shards that all start the stream at 0 draw other masks.
    ignored = torch.cat([shard_call(G[:, lo:hi], impl, device, 3, 0, leak, None if signs is None else signs[lo:hi])
                         for lo, hi in pairwise([0, *cuts, P])])
    assert not torch.equal(ignored, whole)


@pytest.mark.parametrize("impl,device", IMPL_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("cuts", [(7, 33_001), (2049, 32_775), (32_768, 40_000)])
def test_long_column_shards_equal_the_unsharded_call_bitwise(impl, device, dtype, cuts):
    # Shards over several CPU tiles (2048 columns) and parallel work items (32768 columns) at
    # offsets that leave every tile `shift` columns into a Philox block.
    P = 70_001
    G = random_gradients(3, P, seed=cuts[0], dtype=dtype)
    signs = torch.randn(P, generator=seeded(2)).to(dtype)
    leak = torch.tensor([0.0, 0.5, 0.25])
    whole = shard_call(G, impl, device, 8, 0, leak, signs)
    assert torch.equal(concatenated_shards(G, impl, device, 8, cuts, leak, signs), whole)


@pytest.mark.parametrize("impl,device", [p for p in IMPL_DEVICES if p != ("torch", "cpu")])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("offset", [1, 7, 63, 64, 65, 255, 256, 257, 2**40 + 3])
@pytest.mark.parametrize("with_signs", [False, True])
def test_compiled_shard_masks_equal_reference_exactly(impl, device, dtype, offset, with_signs):
    # As test_compiled_masks_equal_reference_exactly, at a column offset: small integers and
    # leaks in {0, 1/2, 1} make every product and sum exact, so equal outputs = equal masks.
    gen = torch.Generator().manual_seed(offset % 1000)
    P = 3000
    G = torch.randint(-8, 9, (7, P), generator=gen).to(dtype)
    leak = torch.randint(0, 3, (7,), generator=gen).float() / 2
    signs = torch.randint(-2, 3, (P,), generator=gen).to(dtype) if with_signs else None
    out = shard_call(G, impl, device, 5, offset, leak, signs)
    ref = shard_call(G, "torch", device, 5, offset, leak, signs)
    assert torch.equal(out, ref)
    assert not torch.equal(out, shard_call(G, "torch", device, 5, 0, leak, signs))  # the offset is used


@pytest.mark.parametrize("offset", [0, 1, 7, 63, 64, 65, 255, 256, 257, 1000, 2**40 + 3])
@pytest.mark.parametrize("n", [1, 5, 256, 257, 600])
def test_reference_stream_at_an_offset_is_a_slice_of_the_stream(offset, n):
    seed = torch.tensor([123456789, 42])
    if offset < 2000:
        expected = reference.philox_uniform(seed, offset + n)[offset:]
        assert torch.equal(reference.philox_uniform(seed, n, offset), expected)
    else:  # far into the stream: against the per-element mapping of philox.h, one draw per element
        element = torch.arange(offset, offset + n)
        expected = torch.stack([
            reference.philox_uniform(seed, 256, int(e) // 256 * 256)[int(e) % 256] for e in element
        ])
        assert torch.equal(reference.philox_uniform(seed, n, offset), expected)


def test_batched_feature_shards_equal_the_unsharded_call_bitwise():
    # batch= form: a shard holds features [f0, f1) of every batch element (batch-major columns),
    # column_offset = f0, the unsharded G's column of that feature in batch element 0.
    T, B, F = 4, 6, 600
    G = random_gradients(T, B * F, seed=9, dtype=torch.float32)
    signs = torch.randn(B * F, generator=seeded(3))
    leak = torch.tensor([0.0, 0.5, 0.25, 0.0])
    whole = shard_call(G, "torch", "cpu", 4, 0, leak, signs, batch=B).view(B, F)
    parts = []
    for f0, f1 in [(0, 7), (7, 263), (263, 600)]:
        local = G.view(T, B, F)[:, :, f0:f1].reshape(T, -1)
        local_signs = signs.view(B, F)[:, f0:f1].reshape(-1)
        parts.append(shard_call(local, "torch", "cpu", 4, f0, leak, local_signs, batch=B).view(B, f1 - f0))
    assert torch.equal(torch.cat(parts, dim=1), whole)


def test_method_passes_the_column_offset():
    G = random_gradients(3, 900, seed=4)
    method = fastmtl.methods.create("graddrop", leak=0.1, generator=seeded(6))
    shard = method(G[:, 300:], column_offset=300)
    expected = fastmtl.graddrop(G, leak=0.1, generator=seeded(6))[300:]
    assert torch.equal(shard, expected)


@pytest.mark.parametrize("impl", ALL_IMPLS)
@pytest.mark.parametrize("bad,error", [(-1, ValueError), (2**62, ValueError), (True, TypeError), (False, TypeError),
                                       (7.0, TypeError), ("7", TypeError), (None, TypeError)])
def test_bad_column_offset_raises(impl, bad, error):
    G = random_gradients(2, 50, seed=1)
    with pytest.raises(error, match="column_offset"):
        fastmtl.graddrop(G, column_offset=bad, impl=impl)
    with pytest.raises(error, match="column_offset"):
        fastmtl.graddrop(G, batch=5, column_offset=bad)


def test_largest_column_offset_is_accepted():
    G = random_gradients(2, 50, seed=1)
    fastmtl.graddrop(G, column_offset=2**62 - 50, impl="torch")


@pytest.mark.skipif(not fastmtl.HAS_EXT, reason="fastmtl._C not built")
@pytest.mark.parametrize("bad", [-1, -(2**40), 2**62 - 49])
def test_raw_op_rejects_bad_column_offset(bad):
    G = random_gradients(2, 50, seed=1)
    with pytest.raises(RuntimeError, match="column_offset"):
        torch.ops.fastmtl.graddrop(G, torch.zeros(2), None, torch.tensor([1, 2]), bad)
    torch.ops.fastmtl.graddrop(G, torch.zeros(2), None, torch.tensor([1, 2]), 2**62 - 50)  # the limit itself


@pytest.mark.skipif(not fastmtl.HAS_EXT, reason="fastmtl._C not built")
def test_raw_op_offset_defaults_to_zero():
    G = random_gradients(2, 300, seed=1)
    seed = torch.tensor([1, 2])
    assert torch.equal(torch.ops.fastmtl.graddrop(G, torch.zeros(2), None, seed),
                       torch.ops.fastmtl.graddrop(G, torch.zeros(2), None, seed, 0))
