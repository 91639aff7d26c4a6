"""Fake (meta) kernels: output shapes and dtypes of every fastmtl op, so torch.compile and
FakeTensor can trace them without running them. Imported by _ext only when the extension loaded.
"""

import torch

from fastmtl._numerics import accumulate_dtype


@torch.library.register_fake("fastmtl::gram")
def _gram_fake(grads):
    tasks = grads.shape[0]
    return grads.new_empty((tasks, tasks), dtype=accumulate_dtype(grads.dtype))


@torch.library.register_fake("fastmtl::gram_rescue")
def _gram_rescue_fake(grads, gram):
    tasks = grads.shape[0]
    return grads.new_empty((tasks, tasks), dtype=torch.float64)


@torch.library.register_fake("fastmtl::pcgrad_weights")
def _pcgrad_weights_fake(gram, order):
    return gram.new_empty((gram.shape[0],))


@torch.library.register_fake("fastmtl::combine")
def _combine_fake(grads, weights):
    return grads.new_empty((grads.shape[1],))


@torch.library.register_fake("fastmtl::combine_into")
def _combine_into_fake(grads, weights, out):
    return None


@torch.library.register_fake("fastmtl::graddrop")
def _graddrop_fake(grads, leak, signs, seed, column_offset=0):
    # The kernels' offset check (check_graddrop_inputs), so a traced call fails where the eager one would.
    torch._check(column_offset >= 0, lambda: f"column_offset must be >= 0, got {column_offset}")
    return grads.new_empty((grads.shape[1],))


@torch.library.register_fake("fastmtl::cluster_tasks")
def _cluster_tasks_fake(similarity, n_groups, threshold, linkage):
    return similarity.new_empty((similarity.shape[0],), dtype=torch.int64)


def _square(gram):
    """The shape checks of the solver ops' C++ kernels, so a traced call fails where the eager one would."""
    torch._check(gram.dim() == 2 and gram.shape[0] == gram.shape[1], lambda: f"gram must be square, got {gram.shape}")


def _weights_fake(gram, *options):
    _square(gram)
    return gram.new_empty((gram.shape[0],), dtype=torch.float64)


for _name in ("mgda_weights", "nash_mtl_weights", "imtl_g_weights", "aligned_mtl_weights", "cagrad_weights",
              "fairgrad_weights"):
    torch.library.register_fake(f"fastmtl::{_name}")(_weights_fake)


@torch.library.register_fake("fastmtl::gradvac_weights")
def _gradvac_weights_fake(gram, targets, order, beta, eps):
    _square(gram)
    tasks = gram.shape[0]
    torch._check(targets.shape == gram.shape, lambda: f"targets must be [T, T] = {list(gram.shape)}")
    return gram.new_empty((tasks,), dtype=torch.float64), gram.new_empty((tasks, tasks), dtype=torch.float64)


@torch.library.register_fake("fastmtl::simplex_descent_weights")
def _simplex_descent_weights_fake(gram, w, target, lr, momentum, rho, lambda_, n_iter, normalize):
    _square(gram)
    tasks = gram.shape[0]
    torch._check(w.shape == (tasks,) and target.shape == (tasks,), lambda: f"w and target must be [T] = [{tasks}]")
    return gram.new_empty((2 * tasks,), dtype=torch.float64)


@torch.library.register_fake("fastmtl::dual_cone_weights")
def _dual_cone_weights_fake(gram, U, norm_eps, reg_eps):
    _square(gram)
    torch._check(U.dim() == 2 and U.shape[1] == gram.shape[0], lambda: f"U must be [m, T], got {U.shape}")
    return gram.new_empty(U.shape, dtype=torch.float64)


@torch.library.register_fake("fastmtl::pcd_weights")
def _pcd_weights_fake(gram, scales, taus, tol, dependence_tol, precision):
    _square(gram)
    tasks = gram.shape[0]
    torch._check(scales.dim() == 1 and scales.shape[0] == tasks, lambda: f"scales must be [T], got {scales.shape}")
    torch._check(taus.dim() == 1 and taus.shape[0] == tasks - 1, lambda: f"taus must be [T - 1], got {taus.shape}")
    return gram.new_empty((tasks,), dtype=torch.float64)
