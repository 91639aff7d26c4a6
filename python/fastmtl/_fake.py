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
def _graddrop_fake(grads, leak, signs, seed):
    return grads.new_empty((grads.shape[1],))


@torch.library.register_fake("fastmtl::cluster_tasks")
def _cluster_tasks_fake(similarity, n_groups, threshold, linkage):
    return similarity.new_empty((similarity.shape[0],), dtype=torch.int64)
