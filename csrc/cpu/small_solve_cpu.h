#pragma once
// Runs a T x T solver (csrc/include/fastmtl/*_math.h) on the CPU: the shared runner of the
// Gram-space weight ops. A solver is a small struct of options (and pointers to its extra inputs)
// with
//   int64_t scratch_size(int64_t T) const;  // float64 scratch values per job
//   int64_t out_size(int64_t T) const;      // float64 outputs in all jobs together
//   void operator()(const double* K, int64_t T, int64_t job, double* scratch, double* out) const;
// Jobs are independent (UPGrad solves one QP per task; most solvers have one job): they run in
// parallel, each with its own scratch, and write disjoint parts of out, so the result does not
// depend on the thread count. The CUDA runner (csrc/cuda/small_solve_cuda.cuh) calls the same
// operator() with K in shared memory. K is read in float64; a non-finite K gives all-NaN outputs
// without running the solver (the NaN policy of docs/design.md).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cstdint>
#include <limits>
#include <vector>

#include "fastmtl/dense_math.h"
#include "op_checks.h"

namespace fastmtl::cpu {

template <typename Solver>
at::Tensor run_small_solve_cpu(const at::Tensor& gram, int64_t jobs, const Solver& solver) {
  const int64_t T = gram.size(0);
  const at::Tensor K_tensor = gram.to(at::kDouble).contiguous();
  const double* K = K_tensor.const_data_ptr<double>();
  at::Tensor out = at::empty({solver.out_size(T)}, gram.options().dtype(at::kDouble));
  double* out_data = out.data_ptr<double>();
  if (!all_finite_values(K, T * T)) {
    out.fill_(std::numeric_limits<double>::quiet_NaN());
    return out;
  }
  const int64_t per_job = solver.scratch_size(T);
  // A job costs O(T^2) to O(T^3): below T = 16 the whole solve takes microseconds, less than
  // waking a thread, so it runs inline; above, each job is worth a thread.
  const int64_t grain = T >= 16 ? 1 : jobs;
  at::parallel_for(0, jobs, grain, [&](int64_t begin, int64_t end) {
    std::vector<double> scratch(per_job);
    for (int64_t job = begin; job < end; ++job) solver(K, T, job, scratch.data(), out_data);
  });
  return out;
}

}  // namespace fastmtl::cpu
