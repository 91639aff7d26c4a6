"""The public ops. Each validates its input (clear ValueError/TypeError), then runs on the
compiled kernels or on the pure-PyTorch reference according to ``impl``:

* ``"auto"``  the compiled kernel for the tensor's device when there is one, else the reference;
* ``"cpp"``   the C++ CPU kernels (CPU tensors; errors if the extension is missing);
* ``"cuda"``  the CUDA kernels (CUDA tensors; errors if the extension has none);
* ``"torch"`` the pure-PyTorch reference, on any device.

An ``impl`` that cannot run an op (graddrop's ``batch=`` form has only the reference,
cluster_tasks has no CUDA kernel) raises instead of silently running another path.

Every op is a pure function of its inputs (and of ``generator`` where it draws random numbers).
Apart from cluster_tasks (a host op by nature), no op reads a tensor value back from a GPU.
"""

from __future__ import annotations

import torch

from fastmtl import _numerics, _validate, reference
from fastmtl._ext import HAS_CUDA, HAS_EXT, IMPORT_ERROR


def use_extension(impl: str, tensor: torch.Tensor) -> bool:
    """Whether ``impl`` selects the compiled kernels for ``tensor`` (raises if it cannot)."""
    _validate.choice(impl, _validate.IMPLS, "impl")
    device = tensor.device.type
    if impl == "torch":
        return False
    if impl == "auto":
        return HAS_EXT and (device == "cpu" or (device == "cuda" and HAS_CUDA))
    if not HAS_EXT:
        raise RuntimeError(f"impl={impl!r} needs the compiled extension fastmtl._C, which did not load: {IMPORT_ERROR}")
    if impl == "cpp" and device != "cpu":
        raise ValueError(f"impl='cpp' runs on CPU tensors, got a tensor on {tensor.device}")
    if impl == "cuda":
        if device != "cuda":
            raise ValueError(f"impl='cuda' runs on CUDA tensors, got a tensor on {tensor.device}")
        if not HAS_CUDA:
            raise RuntimeError("impl='cuda': this fastmtl._C was built without CUDA kernels")
    return True


def gram(G: torch.Tensor, *, impl: str = "auto") -> torch.Tensor:
    """Gram matrix K = G Gᵀ of the task gradients G [T, P], one read of G.

    Accumulates in float32 (float64 for float64 input) and returns K in that dtype.
    NaN/Inf in G propagate into the affected entries of K.
    """
    G = _validate.task_matrix(G)
    if use_extension(impl, G):
        return torch.ops.fastmtl.gram(G)
    return reference.gram(G)


def gram_for_weights(G: torch.Tensor, *, impl: str = "auto") -> torch.Tensor:
    """The Gram matrix K = G Gᵀ for the Gram-space weightings (PCGrad, MGDA, Nash-MTL, ...):
    ``gram(G)``, recomputed in float64 when it is not finite.

    Finite float32 gradients overflow a float32 K once a row's Σ_p g_ip² passes 3.4e38 (entries
    of order 1e19 / √P), and the weights would all be NaN where the plain sum is finite. A float64 K
    cannot overflow for float32, bfloat16 or float16 input. NaN/Inf in G itself leave K
    non-finite (the documented NaN policy). dtype: on the CPU, gram(G)'s unless recomputed
    (decided by reading the T x T CPU tensor); on CUDA and under torch.compile the choice is made
    on the device with no host sync (fastmtl::gram_rescue), so K is float64 there. float64 input
    gets gram(G) as it is (nothing wider to recompute in).
    """
    G = _validate.task_matrix(G)
    K = gram(G, impl=impl)
    if K.dtype == torch.float64:  # nothing wider to recompute in
        return K
    if G.device.type == "cpu" and not torch.compiler.is_compiling():  # reading K costs no device sync
        return K if bool(torch.isfinite(K).all()) else reference.gram(G.double())
    if use_extension(impl, G):
        return torch.ops.fastmtl.gram_rescue(G, K)
    return reference.gram_rescue(G, K)


def cosine_similarity(G: torch.Tensor, *, eps: float = 1e-8, impl: str = "auto") -> torch.Tensor:
    """Pairwise cosine similarities [T, T] of the task gradients:
    K_ij / (max(|g_i|, eps) max(|g_j|, eps)), as torch.nn.functional.cosine_similarity.

    A task with zero gradient has cosine 0 with every task (itself included), never NaN.
    """
    eps = _validate.positive(eps, "eps")  # any real number type (numpy scalars too); NaN rejected
    return _numerics.cosine_from_gram(gram(G, impl=impl), eps)


def pcgrad_order(tasks: int, *, shuffle: bool, generator: torch.Generator | None, device) -> torch.Tensor | None:
    """The order in which each task meets the others: row i a random permutation drawn from
    ``generator`` on ``device`` (no host round-trip), or None for index order."""
    if not shuffle:
        return None
    noise = torch.rand(tasks, tasks, generator=generator, device=device)
    return noise.argsort(dim=1)


def pcgrad_weights(
    K: torch.Tensor, order: torch.Tensor | None = None, *, impl: str = "auto"
) -> torch.Tensor:
    """PCGrad task weights w from the Gram matrix K [T, T]: sum_i g_iᴾᶜ = w · G (exact).

    ``order`` [T, T] int64: row i is the order in which task i is projected against the others
    (None: index order). A non-finite K gives NaN weights. w has K's dtype (a float64 K, e.g.
    from gram_for_weights, gives float64 weights; combine accepts them for any G).
    The C++/CUDA solve runs in float64 in O(T · projections) (a pair without conflict costs
    O(1)); the torch reference in O(T⁴ / 128) (one T×T matmul per block of 128 steps).
    """
    if not isinstance(K, torch.Tensor) or not K.is_floating_point() or K.dim() != 2 or K.shape[0] != K.shape[1] \
            or K.shape[0] == 0:
        raise ValueError(f"K must be a non-empty square [T, T] floating-point tensor, got "
                         f"{getattr(K, 'dtype', type(K).__name__)} of shape {tuple(getattr(K, 'shape', ()))}")
    if order is not None:
        if not isinstance(order, torch.Tensor) or order.dtype != torch.int64 or order.shape != K.shape:
            raise ValueError(f"order must be an int64 [T, T] = {list(K.shape)} tensor or None, got "
                             f"{getattr(order, 'dtype', type(order).__name__)} of shape "
                             f"{tuple(getattr(order, 'shape', ()))}")
        if order.device != K.device:
            raise ValueError(f"order is on {order.device} but K is on {K.device}")
    if use_extension(impl, K):
        return torch.ops.fastmtl.pcgrad_weights(K, order)
    return reference.pcgrad_weights(K, order)


def combine(G: torch.Tensor, weights: torch.Tensor, *, out: torch.Tensor | None = None, impl: str = "auto"):
    """w · G in one pass over G, in G's dtype; written into ``out`` [P] when given.

    ``weights`` may have any floating dtype (they are cast to G's accumulation dtype).
    ``out`` must not overlap G in memory (ValueError): it is written while G is read.
    """
    G = _validate.task_matrix(G)
    if not isinstance(weights, torch.Tensor):
        raise TypeError(f"weights must be a [T] tensor, got {type(weights).__name__}")
    if not weights.is_floating_point():
        raise TypeError(f"weights must have a floating-point dtype, got {weights.dtype}")
    if weights.shape != (G.shape[0],):
        raise ValueError(f"weights must have shape [T] = [{G.shape[0]}], got {tuple(weights.shape)}")
    if weights.device != G.device:
        raise ValueError(f"weights are on {weights.device} but G is on {G.device}")
    if out is not None:
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"out must be a [P] tensor or None, got {type(out).__name__}")
        if out.shape != (G.shape[1],):
            raise ValueError(f"out must have shape [P] = [{G.shape[1]}], got {tuple(out.shape)}")
        _validate.same_device_and_dtype(out, G, "out")
        _validate.no_overlap(out, G)
    if use_extension(impl, G):
        if out is None:
            return torch.ops.fastmtl.combine(G, weights)
        torch.ops.fastmtl.combine_into(G, weights, out)
        return out
    result = reference.combine(G, weights)
    return result if out is None else out.copy_(result)


def project_conflicts(
    G: torch.Tensor,
    *,
    reduction: str = "sum",
    shuffle: bool = True,
    generator: torch.Generator | None = None,
    out: torch.Tensor | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    """PCGrad (Yu et al. 2020, Alg. 1) on the task gradients G [T, P]; returns the combined [P].

    For each task i and each other task j in random order (``shuffle=False``: index order),
    g_iᴾᶜ -= (g_iᴾᶜ·g_j / |g_j|²) g_j whenever g_iᴾᶜ·g_j < 0, always against the ORIGINAL g_j.
    Returns sum_i g_iᴾᶜ (``reduction="mean"``: divided by T). Computed exactly in Gram space:
    one read of G for K, a T×T solve, one read of G for w·G. Zero-gradient tasks are skipped.
    K comes from gram_for_weights: huge but finite gradients (|g| ~ 1e19 in float32) give a
    finite result. Any NaN/Inf in G makes the whole result NaN (the projections are undefined).
    ``out`` must not overlap G in memory.
    """
    G = _validate.task_matrix(G)
    weights = pcgrad_task_weights(gram_for_weights(G, impl=impl), reduction=reduction, shuffle=shuffle,
                                  generator=generator, impl=impl)
    return combine(G, weights, out=out, impl=impl)


def pcgrad_task_weights(K: torch.Tensor, *, reduction: str = "sum", shuffle: bool = True,
                        generator: torch.Generator | None = None, impl: str = "auto") -> torch.Tensor:
    """PCGrad's weights w from the Gram matrix K, with project_conflicts' options: the order
    drawn from ``generator`` (or index order), divided by T for ``reduction="mean"``."""
    _validate.choice(reduction, ("sum", "mean"), "reduction")
    generator = _validate.generator_for(generator, K.device)
    order = pcgrad_order(K.shape[0], shuffle=shuffle, generator=generator, device=K.device)
    weights = pcgrad_weights(K, order, impl=impl)
    return weights / K.shape[0] if reduction == "mean" else weights


def graddrop(
    G: torch.Tensor,
    *,
    leak=0.0,
    signs: torch.Tensor | None = None,
    batch: int | None = None,
    generator: torch.Generator | None = None,
    impl: str = "auto",
    column_offset: int = 0,
) -> torch.Tensor:
    """GradDrop (Chen et al. 2020): sign-consistency dropout of the task gradients G [T, P].

    Per coordinate, purity P = ½(1 + Σ_i g_i / Σ_i |g_i|) and U ~ U(0, 1); task i's gradient is
    kept where (P > U and g_i > 0) or (P < U and g_i < 0), else multiplied by ``leak`` (a float
    or a [T] tensor in [0, 1]); returns the sum over tasks. ``signs`` [P] (feature-level form):
    the activation whose sign multiplies each g_i before purity and mask are computed.
    ``batch`` (feature-level form, Alg. 1 of the paper): G's columns are ``batch`` x F
    activation gradients, batch-major; purity and masks come from the sign-corrected gradients
    summed over the batch and apply to every batch element (pure-PyTorch path).
    This form has no compiled kernel: impl "cpp" or "cuda" with ``batch`` raise a ValueError
    ("auto" and "torch" run the reference).
    U comes from a Philox stream seeded from ``generator``: a seeded call is reproducible and
    draws the same masks on every ``impl`` (results agree to the last bit of rounding). NaN/Inf in
    G or NaN in ``signs`` propagate to the affected coordinates. ``leak`` and ``batch`` accept any
    real / integral number type (numpy scalars too), not bool.

    ``column_offset`` (an int >= 0, not bool; column_offset + P <= 2^62): G holds columns
    [column_offset, column_offset + P) of a larger G split by columns across processes. Column c
    then draws element column_offset + c of the stream, the uniform the unsharded call draws for
    that column; each column's purity depends on that column alone, so concatenating the shards'
    results (same generator state on every process) equals the unsharded call bit for bit. Any
    offset works on every ``impl``. With ``batch`` the offset is in columns of G too, counted
    within one batch element: G then holds features [column_offset, column_offset + P / batch)
    of every batch element (batch-major), i.e. the unsharded G's column column_offset is this
    shard's first feature of batch element 0.
    """
    G = _validate.task_matrix(G)
    _validate.choice(impl, _validate.IMPLS, "impl")
    leak_t = _validate.leak_vector(leak, G)
    column_offset = _graddrop_column_offset(column_offset, G.shape[1])
    if signs is not None:
        if not isinstance(signs, torch.Tensor):
            raise TypeError(f"signs must be a tensor of shape [P] or None, got {type(signs).__name__}")
        if signs.shape != (G.shape[1],):
            raise ValueError(f"signs must have shape [P] = [{G.shape[1]}], got {tuple(signs.shape)}")
        _validate.same_device_and_dtype(signs, G, "signs")
        signs = signs.detach()
    generator = _validate.generator_for(generator, G.device)
    seed = torch.randint(0, 2**62, (2,), generator=generator, device=G.device, dtype=torch.int64)
    if batch is not None:
        batch = _validate.batch_size(batch, G.shape[1])
        if impl in ("cpp", "cuda"):
            raise ValueError(f"graddrop(batch=...) has no compiled kernel, so impl={impl!r} cannot run it; "
                             "it runs on the pure-PyTorch reference: use impl='auto' or impl='torch'")
        uniform = reference.philox_uniform(seed, G.shape[1] // batch, column_offset)  # one per feature
        return reference.graddrop_batched(G, leak_t, signs, uniform, batch)
    if use_extension(impl, G):
        return torch.ops.fastmtl.graddrop(G, leak_t, signs, seed, column_offset)
    return reference.graddrop(G, leak_t, signs, reference.philox_uniform(seed, G.shape[1], column_offset))


def _graddrop_column_offset(column_offset, columns: int) -> int:
    """graddrop's column_offset: an int >= 0 (bool rejected), with column_offset + P within the
    2^62 stream elements the kernels accept (kMaxGraddropColumn in csrc/op_checks.h)."""
    column_offset = _validate.integer(column_offset, "column_offset")
    if column_offset < 0 or column_offset > 2**62 - columns:
        raise ValueError(f"column_offset must be an int in [0, 2^62 - P] (P = {columns}), got {column_offset}")
    return column_offset


def cluster_tasks(
    S: torch.Tensor,
    *,
    n_groups: int | None = None,
    threshold: float | None = None,
    linkage: str = "average",
    impl: str = "auto",
) -> torch.Tensor:
    """Agglomerative clustering of T tasks from a symmetric similarity matrix S [T, T].

    Merges the most similar pair of groups until ``n_groups`` remain, or while the best linkage
    similarity is at least ``threshold`` (give exactly one). ``linkage``: "average" (UPGMA mean),
    "single" (max) or "complete" (min). Deterministic (ties: the first pair in index order).
    Returns int64 labels [T] numbered 0, 1, ... by each group's first task, on S's device.
    Runs on the host (S is copied to the CPU): clustering is not a hot-path op. ``impl``: "auto"
    (the C++ kernel when built, else the reference), "cpp" or "torch"; there is no CUDA kernel, so
    impl="cuda" raises a ValueError. Expected O(T²) time (T = 1024 in well under a second).
    ``n_groups`` and ``threshold`` accept any integral / real number type (numpy scalars too).
    """
    device = S.device if isinstance(S, torch.Tensor) else None
    _validate.choice(impl, _validate.IMPLS, "impl")
    if impl == "cuda":
        raise ValueError("cluster_tasks has no CUDA kernel, so impl='cuda' cannot run it; it runs on the host: "
                         "use impl='auto', 'cpp' (the C++ kernel) or 'torch' (the reference)")
    S = _validate.similarity_matrix(S)
    n_groups, threshold = _validate.clustering_target(n_groups, threshold, S.shape[0])
    _validate.choice(linkage, ("average", "single", "complete"), "linkage")
    if use_extension(impl, S):  # S is on the host now
        labels = torch.ops.fastmtl.cluster_tasks(S, n_groups, threshold, linkage)
    else:
        labels = reference.cluster_tasks(S, n_groups, threshold, linkage)
    return labels.to(device)
