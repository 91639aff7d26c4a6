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
