"""Pure-PyTorch implementations of every fastmtl op.

They are the fallback where the compiled extension is absent (or the device/dtype is not
covered), and the oracle the kernels are tested against. They follow the kernels' contracts
exactly: same accumulation dtypes, same Philox random stream for GradDrop (so a seeded call
gives the same mask on every path), same tie-breaking in clustering.
"""

from __future__ import annotations

import torch

from fastmtl._numerics import accumulate_dtype

_MASK32 = 0xFFFFFFFF


def gram(G: torch.Tensor) -> torch.Tensor:
    """K = G G^T in the accumulation dtype."""
    X = G.to(accumulate_dtype(G.dtype))
    K = X @ X.T
    return torch.triu(K) + torch.triu(K, 1).T  # exactly symmetric: the kernels mirror the upper triangle


def gram_rescue(G: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """fastmtl::gram_rescue's contract: K in float64 when every entry is finite, else G's Gram
    recomputed in float64. Both are computed and one is selected on the device (no host sync, any
    device), so this fallback always pays for the float64 Gram."""
    return torch.where(torch.isfinite(K).all(), K.double(), gram(G.double()))


# Steps per block of the PCGrad solve: every block after the first starts with one T x T x T
# matmul (BLAS speed), and each step inside it gathers T x (steps so far in the block) entries
# of K. 128 was the fastest of 32-256 at T = 1024 and T = 2000 on 2 cores.
_PCGRAD_BLOCK = 128


def pcgrad_weights(K: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
    """Gram-space PCGrad (docs/design.md, "Gram-space PCGrad") in float64, like the kernels. All T
    projected gradients advance together: at step s, task i meets task j = order[i, s], and
    projects when g_iᴾᶜ · g_j = (A K)_ij < 0 (A: the coefficients, row i for task i).

    Steps run in blocks: V = A K is formed by one matmul at the start of a block, and inside it
    the dot products are V's entries corrected by the block's own projections so far (a projection
    of task i on g_j changes (A K)_i by -c K_j): T / block matmuls plus O(T^2 block) gathered
    elements, instead of T^2 gathered elements at each of the T steps. No host sync, any device."""
    T = K.shape[0]
    Kd = K.double()
    if order is None:
        order = torch.arange(T, device=K.device).expand(T, T)
    rows = torch.arange(T, device=K.device)[:, None]
    A = torch.eye(T, dtype=torch.float64, device=K.device)
    norm_sq = Kd.diagonal()
    for start in range(0, T, _PCGRAD_BLOCK):
        J = order[:, start : start + _PCGRAD_BLOCK]  # [T, B]: whom each task meets in this block
        valid = (J != rows) & (J >= 0) & (J < T)  # itself and out-of-range entries are skipped
        J = J.clamp(0, T - 1)
        V = Kd if start == 0 else A @ Kd  # A is the identity before the first block
        dots = V.gather(1, J)  # g_iᴾᶜ . g_j at the start of the block, for the block's j
        C = torch.zeros(J.shape, dtype=torch.float64, device=K.device)  # the block's coefficients
        for t in range(J.shape[1]):
            j = J[:, t : t + 1]
            dot = dots[:, t] - (C[:, :t] * Kd[J[:, :t], j]).sum(1)
            n = norm_sq[j[:, 0]]
            conflict = valid[:, t] & (dot < 0) & (n > 0)
            C[:, t] = torch.where(conflict, dot / torch.where(n > 0, n, 1.0), 0.0)
        A.scatter_add_(1, J, -C)
    w = A.sum(0)
    w = torch.where(torch.isfinite(Kd).all(), w, torch.full_like(w, float("nan")))
    return w.to(K.dtype)


def combine(G: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """w . G accumulated in the accumulation dtype, returned in G's dtype."""
    acc = accumulate_dtype(G.dtype)
    return (weights.to(acc) @ G.to(acc)).to(G.dtype)


def _mulhilo32(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit words of a * b for a constant a < 2^32 and int64 b holding values < 2^32,
    built from 16-bit halves so no intermediate overflows int64."""
    a_hi, a_lo = a >> 16, a & 0xFFFF
    b_hi, b_lo = b >> 16, b & 0xFFFF
    low = a_lo * b_lo
    middle = a_hi * b_lo + a_lo * b_hi
    low_sum = low + ((middle & 0xFFFF) << 16)
    lo = low_sum & _MASK32
    hi = (a_hi * b_hi + (middle >> 16) + (low_sum >> 32)) & _MASK32
    return hi, lo


def philox_uniform(seed: torch.Tensor, n: int, column_offset: int = 0) -> torch.Tensor:
    """n float32 uniforms in [0, 1) from Philox4x32-10: elements column_offset .. column_offset
    + n - 1 of the stream of csrc/include/fastmtl/philox.h, where element 256 b + 64 lane + k is
    word `lane` of the draw for counter 64 b + k (counter words 2, 3 = the offset). A column
    shard passes its first column's index in the unsharded G as ``column_offset`` (an int >= 0)
    and so draws the unsharded call's uniforms for its columns."""
    # Seed words stay on the device (no host sync); >> is arithmetic, so mask the high words.
    key, offset = seed[0], seed[1]
    # The whole blocks spanning [column_offset, column_offset + n) (philox_span in philox.h):
    # offset 0 draws exactly ceil(n / 256) blocks, as before offsets existed; others one more.
    first_block, shift = divmod(column_offset, 256)
    blocks = (shift + n + 255) // 256
    groups = torch.arange(first_block * 64, (first_block + blocks) * 64, dtype=torch.int64, device=seed.device)
    c0, c1 = groups & _MASK32, groups >> 32
    c2 = (offset & _MASK32).expand_as(groups)
    c3 = ((offset >> 32) & _MASK32).expand_as(groups)
    k0, k1 = key & _MASK32, (key >> 32) & _MASK32
    for _ in range(10):
        hi0, lo0 = _mulhilo32(0xD2511F53, c0)
        hi1, lo1 = _mulhilo32(0xCD9E8D57, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + 0x9E3779B9) & _MASK32, (k1 + 0xBB67AE85) & _MASK32
    bits = torch.stack([c0, c1, c2, c3], dim=0).reshape(4, blocks, 64).transpose(0, 1).reshape(-1)[shift : shift + n]
    return (bits >> 8).to(torch.float32) * (1.0 / 16777216.0)


def _activation_sign(signs: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    # torch.sign(NaN) is 0 on some builds; keep NaN, like sign_of in surgery_math.h.
    activation = signs.to(acc)
    return torch.where(torch.isnan(activation), activation, torch.sign(activation))


def graddrop_factors(signed: torch.Tensor, leak: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """GradDrop's factor per task and coordinate, [T, N]: 1 where task i is kept, leak_i where
    dropped, from the sign-corrected gradients ``signed`` [T, N] and U [N]. Sums run over tasks
    in index order, as in the kernels, so masks agree bit for bit."""
    signed_sum = torch.zeros_like(signed[0])
    abs_sum = torch.zeros_like(signed[0])
    for row in signed:
        signed_sum = signed_sum + row
        abs_sum = abs_sum + row.abs()
    safe_abs = torch.where(abs_sum > 0, abs_sum, torch.ones_like(abs_sum))
    purity = torch.where(abs_sum > 0, 0.5 * (1 + signed_sum / safe_abs), torch.full_like(abs_sum, 0.5))
    U = uniform.to(signed.dtype)
    keep = ((purity > U) & (signed > 0)) | ((purity < U) & (signed < 0))
    return torch.where(keep, torch.ones_like(signed), leak.to(signed.dtype)[:, None].expand_as(signed))


def _weighted_task_sum(factor: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(X[0])
    for row_factor, row in zip(factor, X):  # index order, as the kernels
        out = out + row_factor * row
    return out


def graddrop(
    G: torch.Tensor, leak: torch.Tensor, signs: torch.Tensor | None, uniform: torch.Tensor
) -> torch.Tensor:
    """GradDrop (Chen et al. 2020) with explicit uniforms U [P], one purity per coordinate."""
    acc = accumulate_dtype(G.dtype)
    X = G.to(acc)
    sign = torch.ones_like(X[0]) if signs is None else _activation_sign(signs, acc)
    out = _weighted_task_sum(graddrop_factors(X * sign, leak, uniform), X)
    if signs is not None:
        out = out + (sign - sign)  # NaN activation -> NaN output, as in the kernels
    return (out + graddrop_leak_poison(leak.to(acc))).to(G.dtype)


def graddrop_batched(
    G: torch.Tensor, leak: torch.Tensor, signs: torch.Tensor | None, uniform: torch.Tensor, batch: int
) -> torch.Tensor:
    """GradDrop's feature-level form exactly as Chen et al. 2020, Alg. 1: G's columns are
    ``batch`` x F activations (batch-major); purity and masks come from the sign-corrected
    gradients summed over the batch, S_i = Σ_b sign(A_b) ∇_i,b [T, F], with one U per feature
    (``uniform`` [F]); the mask of a feature applies to every batch element."""
    acc = accumulate_dtype(G.dtype)
    T, P = G.shape
    X = G.to(acc).reshape(T, batch, P // batch)
    sign = torch.ones_like(X[0]) if signs is None else _activation_sign(signs, acc).reshape(batch, -1)
    factor = graddrop_factors((X * sign).sum(1), leak, uniform)  # [T, F]
    out = _weighted_task_sum(factor[:, None, :].expand_as(X), X)
    if signs is not None:
        out = out + (sign - sign)
    return (out + graddrop_leak_poison(leak.to(acc))).reshape(P).to(G.dtype)


def graddrop_leak_poison(leak: torch.Tensor) -> torch.Tensor:
    """0, or NaN when any leak lies outside [0, 1]: added to every output so that a bad leak
    on the device (not checked on the host, to avoid a sync) cannot pass silently."""
    valid = ((leak >= 0) & (leak <= 1)).all()
    return torch.where(valid, 0.0, float("nan")).to(leak.dtype)


def cluster_tasks(S: torch.Tensor, n_groups: int | None, threshold: float | None, linkage: str) -> torch.Tensor:
    """Agglomerative clustering, same rules and same arithmetic as csrc/cpu/cluster_cpu.cpp: merge
    the most similar pair (first in row-major order of the upper triangle on ties) until n_groups
    remain or the best similarity is below threshold; labels numbered by each group's first task.

    Each active cluster a keeps its best partner: the first active b > a of largest similarity.
    The first row holding the largest best value is the row-major first best pair. After merging
    b into a, only row a and the rows whose partner was a or b are searched again; every other row
    k < a compares its new similarity to a. Expected O(T^2) work instead of O(T^3)."""
    sim = S.double().cpu().clone()
    T = sim.shape[0]
    index = torch.arange(T)
    active = torch.ones(T, dtype=torch.bool)
    size = [1] * T
    cluster_of = torch.arange(T)  # a cluster is named by its first task
    best = torch.full((T,), float("-inf"), dtype=torch.float64)  # -inf: inactive, or no partner
    partner = torch.full((T,), -1, dtype=torch.int64)

    def refresh(rows: torch.Tensor) -> None:
        candidates = active & (index > rows[:, None])
        values = torch.where(candidates, sim[rows], float("-inf"))
        best[rows], partner[rows] = values.max(dim=1)  # the first maximum on ties
        best[rows] = torch.where(candidates.any(1), best[rows], float("-inf"))

    refresh(index)
    for groups in range(T, 1, -1):
        if n_groups is not None and groups <= n_groups:
            break
        a = int(best.argmax())  # the first row on ties
        b, value = int(partner[a]), float(best[a])
        if threshold is not None and not value >= threshold:
            break
        others = active.clone()
        others[[a, b]] = False
        if linkage == "single":
            merged = torch.maximum(sim[a], sim[b])
        elif linkage == "complete":
            merged = torch.minimum(sim[a], sim[b])
        else:  # (n_a s_a + n_b s_b) / (n_a + n_b), each operation rounded as in the C++ kernel; the
            # divisor is a tensor so the division is a true one (a scalar divisor may become a
            # multiplication by its rounded reciprocal on some devices and versions)
            total = torch.full((T,), float(size[a] + size[b]), dtype=torch.float64)
            merged = (float(size[a]) * sim[a] + float(size[b]) * sim[b]) / total
        sim[a] = torch.where(others, merged, sim[a])
        sim[:, a] = torch.where(others, merged, sim[:, a])
        size[a] += size[b]
        active[b] = False
        best[b] = float("-inf")
        cluster_of[cluster_of == b] = a
        stale = active & (index < b) & ((index == a) | (partner == a) | (partner == b))
        # Rows k < a that kept their partner: a takes over if now strictly better, or equal and earlier.
        s_a = sim[:, a]
        takes_a = active & (index < a) & ~stale & ((s_a > best) | ((s_a == best) & (partner > a)))
        best[takes_a] = s_a[takes_a]
        partner[takes_a] = a
        refresh(stale.nonzero()[:, 0])
    _, labels = torch.unique(cluster_of, return_inverse=True)  # clusters in order of their names
    return labels.to(S.device)
