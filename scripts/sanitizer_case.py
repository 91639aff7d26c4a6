"""A small run of every CUDA op, for compute-sanitizer (memcheck, racecheck): odd sizes so the
tails, the unaligned scalar paths and the T > 64 fallback all run."""

import torch

import fastmtl
from fastmtl import functional

torch.manual_seed(0)
for T, P in [(1, 1), (3, 257), (5, 4099), (16, 1001), (70, 33)]:
    for dtype in (torch.float32, torch.float16, torch.float64):
        G = torch.randn(T, P, device="cuda", dtype=dtype)
        for view in (G, G[:, 1:] if P > 1 else G):
            fastmtl.gram(view, impl="cuda")
            fastmtl.project_conflicts(view, impl="cuda")
            fastmtl.graddrop(view, leak=0.1, signs=torch.randn(view.shape[1], device="cuda", dtype=dtype), impl="cuda")
            functional.combine(view, torch.rand(T, device="cuda"), out=torch.empty(view.shape[1], device="cuda", dtype=dtype), impl="cuda")
torch.cuda.synchronize()
print("sanitizer case done")
