"""Independent oracles: the papers' algorithms written directly on vectors, as in the papers,
with no Gram-space tricks and no code shared with fastmtl."""

import torch


def pcgrad_per_vector(G: torch.Tensor, orders=None, reduction: str = "sum") -> torch.Tensor:
    """Yu et al. 2020, Alg. 1: for each i, for each j != i (in orders[i]), if g_i^PC . g_j < 0,
    g_i^PC -= (g_i^PC . g_j) / |g_j|^2 g_j, against the original g_j. Float64."""
    G = G.double()
    T = G.shape[0]
    total = torch.zeros(G.shape[1], dtype=torch.float64)
    for i in range(T):
        g = G[i].clone()
        for j in (orders[i] if orders is not None else range(T)):
            j = int(j)
            if j == i:
                continue
            dot = torch.dot(g, G[j])
            norm_sq = torch.dot(G[j], G[j])
            if dot < 0 and norm_sq > 0:
                g = g - dot / norm_sq * G[j]
        total += g
    return total / T if reduction == "mean" else total


def graddrop_per_vector(G: torch.Tensor, U: torch.Tensor, leak=None, signs=None) -> torch.Tensor:
    """Chen et al. 2020, Alg. 1, one task at a time: P = 1/2 (1 + sum_i S_i / sum_i |S_i|) with
    S_i = sign(A) g_i; M_i = [P > U][S_i > 0] + [P < U][S_i < 0]; out = sum_i (l_i + (1 - l_i) M_i) g_i."""
    G = G.double()
    T = G.shape[0]
    leak = torch.zeros(T, dtype=torch.float64) if leak is None else torch.as_tensor(leak, dtype=torch.float64)
    if leak.dim() == 0:
        leak = leak.expand(T)
    S = G if signs is None else G * torch.sign(signs.double())
    purity = 0.5 * (1 + S.sum(0) / S.abs().sum(0))
    U = U.double()
    out = torch.zeros(G.shape[1], dtype=torch.float64)
    for i in range(T):
        mask = ((purity > U) & (S[i] > 0)) | ((purity < U) & (S[i] < 0))
        out += (leak[i] + (1 - leak[i]) * mask.double()) * G[i]
    return out


def random_gradients(T: int, P: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """Task gradients with a shared component, so some pairs agree and some conflict."""
    gen = torch.Generator().manual_seed(seed)
    shared = torch.randn(P, generator=gen)
    scale = torch.linspace(-1.0, 1.0, T)[:, None]
    return (scale * shared + torch.randn(T, P, generator=gen)).to(dtype)


# ----- FairBranch (Roy et al. 2024) ---------------------------------------------------------------


def linear_cka_direct(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Eq. 7-9 as written, in float64: K = θθᵀ, H = I - 11ᵀ/n (an explicit matrix),
    cka = tr(HK_aH · HK_bH) / sqrt(tr((HK_aH)²) tr((HK_bH)²)); 0 when a denominator factor is 0."""
    A, B = A.detach().double().cpu(), B.detach().double().cpu()
    n = A.shape[0]
    H = torch.eye(n, dtype=torch.float64) - torch.ones(n, n, dtype=torch.float64) / n
    Ka, Kb = H @ (A @ A.T) @ H, H @ (B @ B.T) @ H
    cross = torch.trace(Ka @ Kb)
    denominator = torch.sqrt(torch.trace(Ka @ Ka) * torch.trace(Kb @ Kb))
    if bool(denominator == 0):
        return torch.zeros((), dtype=torch.float64)
    return cross / denominator


def pair_tasks_brute(S: torch.Tensor, tau: float) -> list[tuple[int, ...]]:
    """Eq. 10-11 by brute force: scan every remaining pair i < j in index order for the largest
    S[i, j] >= tau (strictly larger to replace: the first in index order wins a tie), take it,
    repeat; leftovers are singletons. Groups sorted by their first task."""
    S = S.double()
    remaining = list(range(S.shape[0]))
    groups = []
    while True:
        best = None
        for a, i in enumerate(remaining):
            for j in remaining[a + 1:]:
                value = float(S[i, j])
                if value >= tau and (best is None or value > best[0]):
                    best = (value, i, j)
        if best is None:
            break
        groups.append((best[1], best[2]))
        remaining = [t for t in remaining if t not in best[1:]]
    return sorted(groups + [(t,) for t in remaining])


def fbgrad_per_vector(G: torch.Tensor, *followers: torch.Tensor) -> list[torch.Tensor]:
    """Eq. 12 on vectors, float64: for each child i and each other child j in index order, if
    g_i' · g_j < 0 (g_i' the current, g_j the original) and g_j != 0, g_i' -= (g_i' · g_j / |g_j|²) g_j;
    each follower f_i' of child i then takes f_i' -= (f_i' · f_j / |f_j|²) f_j (if f_j != 0) at the
    same steps, whatever the sign of its own dot. Returns [G', *followers'] as float64 matrices."""
    G = G.detach().double().cpu()
    followers = [F.detach().double().cpu() for F in followers]
    outs = [torch.empty_like(G)] + [torch.empty_like(F) for F in followers]
    k = G.shape[0]
    for i in range(k):
        g, fs = G[i].clone(), [F[i].clone() for F in followers]
        for j in range(k):
            if j == i:
                continue
            dot, norm_sq = torch.dot(g, G[j]), torch.dot(G[j], G[j])
            if dot < 0 and norm_sq > 0:
                g = g - dot / norm_sq * G[j]
                for m, F in enumerate(followers):
                    f_norm_sq = torch.dot(F[j], F[j])
                    if f_norm_sq > 0:
                        fs[m] = fs[m] - torch.dot(fs[m], F[j]) / f_norm_sq * F[j]
        outs[0][i] = g
        for m, f in enumerate(fs):
            outs[m + 1][i] = f
    return outs


def fairness_loss_direct(logits: torch.Tensor, y: torch.Tensor, s: torch.Tensor, groups) -> torch.Tensor:
    """Eq. 1 by a loop over the (label, group) cells: for each label, the largest mean
    cross-entropy (F.cross_entropy on the cell's rows; binary cross-entropy for [N] / [N, 1]
    logits) over the groups with samples in the batch; labels with no sample add nothing.
    ``groups``: the sensitive group ids to look at. Differentiable; in logits' dtype."""
    from torch.nn import functional as F

    binary = logits.dim() == 1 or logits.shape[1] == 1
    labels = range(2) if binary else range(logits.shape[1])
    total = logits.new_zeros(())
    for label in labels:
        worst = None
        for group in groups:
            rows = ((y == label) & (s == group)).nonzero().flatten()
            if rows.numel() == 0:
                continue
            if binary:
                cell = F.binary_cross_entropy_with_logits(logits.reshape(-1)[rows], y[rows].to(logits.dtype))
            else:
                cell = F.cross_entropy(logits[rows], y[rows])
            worst = cell if worst is None else torch.maximum(worst, cell)
        if worst is not None:
            total = total + worst
    return total


def dual_cone_exact_solution(A: torch.Tensor, u: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """The exact solution of min vᵀAv s.t. v >= u for the float64 numbers A, u taken as rationals:
    principal pivoting (Murty's least-index rule, which terminates on a positive definite A) from
    the free set ``start``, every solve and sign test in exact arithmetic; v* rounded to float64."""
    from fractions import Fraction

    T = len(u)
    A = [[Fraction(x) for x in row] for row in A.tolist()]
    u = [Fraction(x) for x in u.tolist()]
    q = [sum(A[i][j] * u[j] for j in range(T)) for i in range(T)]
    free = {i for i in range(T) if bool(start[i])}
    for _ in range(2**T):
        idx = sorted(free)
        s = [Fraction(0)] * T
        for i, x in zip(idx, _solve_rational([[A[i][j] for j in idx] for i in idx], [-q[i] for i in idx])):
            s[i] = x
        w = [q[i] + sum(A[i][j] * s[j] for j in idx) for i in range(T)]
        wrong = [i for i in range(T) if (s[i] < 0 if i in free else w[i] < 0)]
        if not wrong:
            return torch.tensor([float(u[i] + s[i]) for i in range(T)], dtype=torch.float64)
        free ^= {wrong[0]}
    raise AssertionError("Murty's rule must terminate on a positive definite matrix")


def _solve_rational(M, b):
    """Gaussian elimination on Fractions (M is non-singular: a principal submatrix of A > 0)."""
    from fractions import Fraction

    n = len(b)
    rows = [row[:] + [value] for row, value in zip(M, b)]
    for col in range(n):
        pivot = next(r for r in range(col, n) if rows[r][col] != 0)
        rows[col], rows[pivot] = rows[pivot], rows[col]
        for r in range(col + 1, n):
            if rows[r][col]:
                factor = rows[r][col] / rows[col][col]
                rows[r] = [x - factor * y for x, y in zip(rows[r], rows[col])]
    x = [Fraction(0)] * n
    for r in range(n - 1, -1, -1):
        x[r] = (rows[r][n] - sum(rows[r][c] * x[c] for c in range(r + 1, n))) / rows[r][r]
    return x
