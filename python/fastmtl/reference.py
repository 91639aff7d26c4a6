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


def pcgrad_weights(K: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
    """Gram-space PCGrad (docs/design.md, "Gram-space PCGrad") in float64, like the kernels. All T projected gradients
    advance together: at step s, task i meets task order[i, s]. No host sync, any device."""
    T = K.shape[0]
    Kd = K.double()
    if order is None:
        order = torch.arange(T, device=K.device).expand(T, T)
    rows = torch.arange(T, device=K.device)
    A = torch.eye(T, dtype=torch.float64, device=K.device)  # row i: coefficients of g_i^PC
    for step in range(T):
        j = order[:, step]
        valid = (j != rows) & (j >= 0) & (j < T)
        j_safe = j.clamp(0, T - 1)
        dot = (A * Kd[:, j_safe].T).sum(1)  # g_i^PC . g_j = sum_k A[i, k] K[k, j_i]
        norm_sq = Kd.diagonal()[j_safe]
        conflict = valid & (dot < 0) & (norm_sq > 0)
        coefficient = torch.where(conflict, dot / torch.where(norm_sq > 0, norm_sq, 1.0), 0.0)
        A[rows, j_safe] -= coefficient
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


def philox_uniform(seed: torch.Tensor, n: int) -> torch.Tensor:
    """n float32 uniforms in [0, 1) from Philox4x32-10 -- the stream of
    csrc/include/fastmtl/philox.h: element 256 b + 64 lane + k is word `lane` of the draw for
    counter 64 b + k (counter words 2, 3 = the offset)."""
    # Seed words stay on the device (no host sync); >> is arithmetic, so mask the high words.
    key, offset = seed[0], seed[1]
    blocks = (n + 255) // 256
    groups = torch.arange(blocks * 64, dtype=torch.int64, device=seed.device)
    c0, c1 = groups & _MASK32, groups >> 32
    c2 = (offset & _MASK32).expand_as(groups)
    c3 = ((offset >> 32) & _MASK32).expand_as(groups)
    k0, k1 = key & _MASK32, (key >> 32) & _MASK32
    for _ in range(10):
        hi0, lo0 = _mulhilo32(0xD2511F53, c0)
        hi1, lo1 = _mulhilo32(0xCD9E8D57, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + 0x9E3779B9) & _MASK32, (k1 + 0xBB67AE85) & _MASK32
    bits = torch.stack([c0, c1, c2, c3], dim=0).reshape(4, blocks, 64).transpose(0, 1).reshape(-1)[:n]
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
    """Agglomerative clustering, same rules as csrc/cpu/cluster_cpu.cpp: merge the most similar
    pair (first in row-major order on ties) until n_groups remain or the best similarity is
    below threshold; labels numbered by each group's first task."""
    sim = S.double().cpu().tolist()
    T = len(sim)
    members = {t: [t] for t in range(T)}
    while len(members) > 1:
        if n_groups is not None and len(members) <= n_groups:
            break
        active = sorted(members)
        best, pair = None, None
        for x, a in enumerate(active):
            for b in active[x + 1 :]:
                if best is None or sim[a][b] > best:
                    best, pair = sim[a][b], (a, b)
        if threshold is not None and not best >= threshold:
            break
        a, b = pair
        for k in active:
            if k in pair:
                continue
            if linkage == "single":
                merged = max(sim[a][k], sim[b][k])
            elif linkage == "complete":
                merged = min(sim[a][k], sim[b][k])
            else:
                size_a, size_b = len(members[a]), len(members[b])
                merged = (size_a * sim[a][k] + size_b * sim[b][k]) / (size_a + size_b)
            sim[a][k] = sim[k][a] = merged
        members[a] += members.pop(b)
    labels = [0] * T
    for label, a in enumerate(sorted(members)):
        for t in members[a]:
            labels[t] = label
    return torch.tensor(labels, dtype=torch.int64, device=S.device)
