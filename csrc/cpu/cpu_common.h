#pragma once
// What every CPU kernel shares: the accumulation type per input dtype, element conversion,
// the column tiling constants, and running a kernel body compiled for AVX2+FMA when the
// machine has it (the wheel-style baseline build is SSE2 only).
#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "fastmtl/macros.h"

namespace fastmtl::cpu {

// fp32 accumulation for fp16/bf16/fp32 input, fp64 for fp64 (DESIGN.md §3).
template <typename scalar_t>
struct AccumulateType {
  using type = float;
};
template <>
struct AccumulateType<double> {
  using type = double;
};
template <typename scalar_t>
using acc_type = typename AccumulateType<scalar_t>::type;

template <typename acc_t, typename scalar_t>
FASTMTL_ALWAYS_INLINE acc_t to_acc(scalar_t x) {
  return static_cast<acc_t>(x);
}

// 32-byte GCC/Clang vector of acc_t: one AVX2 register inside run_best_isa's AVX2 variant,
// a pair of SSE registers in the baseline variant. Explicit vectors keep accumulators in
// registers where auto-vectorisation would spill them.
template <typename acc_t>
struct Vec32;
template <>
struct Vec32<float> {
  typedef float type __attribute__((vector_size(32)));
};
template <>
struct Vec32<double> {
  typedef double type __attribute__((vector_size(32)));
};
template <typename acc_t>
using vec32 = typename Vec32<acc_t>::type;
template <typename acc_t>
constexpr int kVecLanes = 32 / sizeof(acc_t);

template <typename acc_t>
FASTMTL_ALWAYS_INLINE vec32<acc_t> load_vec(const acc_t* p) {
  vec32<acc_t> v;
  std::memcpy(&v, p, sizeof(v));  // unaligned load
  return v;
}

// Columns handled together: T rows x kTileColumns elements stay in L1 for the usual T <= 16.
constexpr int64_t kTileColumns = 2048;
// Columns per parallel work item. Fixed (not derived from the thread count) so that reductions
// happen in the same order, and give the same bits, on any number of threads.
constexpr int64_t kChunkColumns = 1 << 15;

inline int64_t chunk_count(int64_t columns) { return (columns + kChunkColumns - 1) / kChunkColumns; }

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// The body must be a lambda marked FASTMTL_KERNEL_BODY and everything it calls in the hot loop
// FASTMTL_ALWAYS_INLINE, so that it is inlined into, and code-generated for, the AVX2 caller.
#define FASTMTL_KERNEL_BODY __attribute__((always_inline))

inline bool cpu_has_avx2_fma() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}

template <typename Body>
__attribute__((target("avx2,fma"))) void run_avx2(const Body& body) {
  body();
}

template <typename Body>
void run_best_isa(const Body& body) {
  if (cpu_has_avx2_fma()) {
    run_avx2(body);
  } else {
    body();
  }
}
#else
#define FASTMTL_KERNEL_BODY
template <typename Body>
void run_best_isa(const Body& body) {
  body();
}
#endif

}  // namespace fastmtl::cpu
