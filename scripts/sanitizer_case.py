"""A small run of every CUDA op, for compute-sanitizer (memcheck, racecheck). Run it with
PYTORCH_NO_CUDA_MEMORY_CACHING=1 so out-of-bounds accesses cannot hide in the allocator's pool.
Sizes and views cover the 16-byte packed paths (aligned rows), their partial last pack (aligned
rows, P not a multiple of the pack), the unaligned scalar paths and the T > 64 fallback."""

import torch

import fastmtl
from fastmtl import functional

torch.manual_seed(0)
for T, P in [(1, 1), (3, 257), (5, 4099), (8, 1024), (16, 1001), (70, 33)]:
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        G = torch.randn(T, P, device="cuda", dtype=dtype)
        padded = torch.randn(T, P + 7 + (-(P + 7)) % 8, device="cuda", dtype=dtype)[:, :P]  # aligned rows, ragged end
        for view in (G, padded, G[:, 1:] if P > 1 else G):
            fastmtl.gram(view, impl="cuda")
            fastmtl.project_conflicts(view, impl="cuda")
            fastmtl.graddrop(view, leak=0.1, signs=torch.randn(view.shape[1], device="cuda", dtype=dtype), impl="cuda")
            functional.combine(view, torch.rand(T, device="cuda"), out=torch.empty(view.shape[1], device="cuda", dtype=dtype), impl="cuda")
torch.cuda.synchronize()
print("sanitizer case done")
