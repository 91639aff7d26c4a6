// The single place that declares every fastmtl operator schema, plus the CPU kernels.
// CUDA kernels register themselves in csrc/cuda/*_cuda.cu with TORCH_LIBRARY_IMPL(fastmtl, CUDA, m);
// The Gram-space weight ops (mgda_weights ... cagrad_weights) register their CPU kernels next to
// them in csrc/cpu/*_cpu.cpp, as the CUDA ones do.
// Python registers a fake (meta) kernel for each op in python/fastmtl/_fake.py.
#include <torch/library.h>

#include "cpu/cpu_ops.h"

TORCH_LIBRARY(fastmtl, m) {
  // K = G G^T; float32 for half/bfloat16/float32 input, float64 for float64 input.
  m.def("gram(Tensor grads) -> Tensor");
  // The Gram matrix for the Gram-space weightings, in float64: gram itself when every entry is
  // finite, else G G^T recomputed in float64 (a float32 gram overflows for |g| ~ 1e19, float64
  // cannot for float32/half input; NaN/Inf in grads stay non-finite). No host sync on CUDA.
  m.def("gram_rescue(Tensor grads, Tensor gram) -> Tensor");
  // PCGrad task weights w (sum of the projected gradients = w . G) from the Gram matrix;
  // order[i] is the order in which task i meets the others (None: index order).
  m.def("pcgrad_weights(Tensor gram, Tensor? order) -> Tensor");
  // Gram-space task weights from K (any floating dtype, solved in float64; float64 outputs; a
  // non-finite K gives all-NaN outputs). The maths: csrc/include/fastmtl/*_math.h; the reference:
  // python/fastmtl/methods.
  m.def("mgda_weights(Tensor gram, int max_iters, float epsilon) -> Tensor");
  m.def("nash_mtl_weights(Tensor gram, float max_norm, int iterations) -> Tensor");
  m.def("imtl_g_weights(Tensor gram) -> Tensor");
  m.def("aligned_mtl_weights(Tensor gram, str scale_mode) -> Tensor");
  // GradVac: (weights [T], updated targets [T, T]) from the targets φ̂ [T, T] (float64).
  m.def("gradvac_weights(Tensor gram, Tensor targets, Tensor? order, float beta, float eps) -> (Tensor, Tensor)");
  // UPGrad / DualProj: argmin v^T A v s.t. v >= u for each row u of U [m, T] (float64), with
  // A = K / trace(K) + reg_eps I (K = 0 when its trace is below norm_eps): V [m, T].
  m.def("dual_cone_weights(Tensor gram, Tensor U, float norm_eps, float reg_eps) -> Tensor");
  m.def("cagrad_weights(Tensor gram, float c, int rescale, float norm_eps, int max_iters, float tol) -> Tensor");
  // MoDo / SDMGrad: n_iter projected (momentum) descent steps of the simplex weights w [T] from the
  // stored w and the preference target [T]: [new w | weights], float64 [2 T].
  m.def("simplex_descent_weights(Tensor gram, Tensor w, Tensor target, float lr, float momentum, float rho, "
        "float lambda_, int n_iter, bool normalize) -> Tensor");
  // PCD: the weights from K, the normalising scales [T] and the secondary tasks' taus [T - 1]
  // (tolerances: csrc/include/fastmtl/pcd_math.h). FairGrad: x > 0 with K x = x^(-1/alpha).
  m.def("pcd_weights(Tensor gram, Tensor scales, Tensor taus, float tol, float dependence_tol, float precision) -> Tensor");
  m.def("fairgrad_weights(Tensor gram, float alpha, int max_iters) -> Tensor");
  // out = weights . grads, in grads' dtype.
  m.def("combine(Tensor grads, Tensor weights) -> Tensor");
  m.def("combine_into(Tensor grads, Tensor weights, Tensor(a!) out) -> ()");
  // GradDrop combination; seed = int64 [key, offset] of the Philox stream; column_offset = the
  // index of grads' first column in the unsharded G (a column shard draws that G's uniforms).
  m.def("graddrop(Tensor grads, Tensor leak, Tensor? signs, Tensor seed, int column_offset=0) -> Tensor");
  // Agglomerative clustering of T tasks: int64 labels [T].
  m.def("cluster_tasks(Tensor similarity, int? n_groups, float? threshold, str linkage) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastmtl, CPU, m) {
  m.impl("gram", &fastmtl::cpu::gram_cpu);
  m.impl("gram_rescue", &fastmtl::cpu::gram_rescue_cpu);
  m.impl("pcgrad_weights", &fastmtl::cpu::pcgrad_weights_cpu);
  m.impl("combine", &fastmtl::cpu::combine_cpu);
  m.impl("combine_into", &fastmtl::cpu::combine_into_cpu);
  m.impl("graddrop", &fastmtl::cpu::graddrop_cpu);
  m.impl("cluster_tasks", &fastmtl::cpu::cluster_tasks_cpu);
}
