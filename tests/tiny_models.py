"""A tiny multi-task regression model for the tests that train through MTLOptimizer: a shared
encoder (6 → 8 → 5) and three linear heads, in float64."""

import torch


class ThreeHeads(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 5))
        self.heads = torch.nn.ModuleList([torch.nn.Linear(5, 1) for _ in range(3)])

    def losses(self, x, y):
        z = self.encoder(x)
        return [((head(z).squeeze(1) - y[:, t]) ** 2).mean() for t, head in enumerate(self.heads)]


def model(seed: int = 0) -> ThreeHeads:
    torch.manual_seed(seed)
    return ThreeHeads().double()


def batch(seed: int = 0, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs [size, 6] and targets [size, 3] from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(size, 6, generator=gen, dtype=torch.float64),
            torch.randn(size, 3, generator=gen, dtype=torch.float64))


def task_gradients(losses, shared) -> torch.Tensor:
    """G [T, P]: each loss's gradient of ``shared``, flattened, by torch.autograd.grad."""
    return torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, shared, retain_graph=True)])
                        for loss in losses])


def sgd_step(net: ThreeHeads, combined: torch.Tensor, head_grads, lr: float) -> None:
    """The SGD step a reference run takes: ``combined`` [P] on the encoder, ``head_grads`` on the heads."""
    with torch.no_grad():
        offset = 0
        for p in net.encoder.parameters():
            p -= lr * combined[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
        for p, g in zip(net.heads.parameters(), head_grads):
            p -= lr * g
