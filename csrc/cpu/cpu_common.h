#pragma once
// What every CPU kernel shares: the accumulation type per input dtype, element conversion,
// the column tiling constants, and running a kernel body compiled for AVX-512 or AVX2+FMA when
// the machine has it (the baseline build is SSE2 only).
#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "fastmtl/macros.h"

namespace fastmtl::cpu {

// fp32 accumulation for fp16/bf16/fp32 input, fp64 for fp64 (docs/design.md, "Accumulation
// dtypes and non-finite numbers").
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

// GCC/Clang vector of acc_t, Bytes wide: a register of the ISA the kernel body is generated
// for (run_best_isa passes the width). Explicit vectors keep accumulators in registers where
// auto-vectorisation would spill them. may_alias: a V* may point into an acc_t array.
template <typename acc_t, int Bytes>
struct VectorOf;
template <>
struct VectorOf<float, 32> {
  typedef float type __attribute__((vector_size(32), __may_alias__));
};
template <>
struct VectorOf<float, 64> {
  typedef float type __attribute__((vector_size(64), __may_alias__));
};
template <>
struct VectorOf<double, 32> {
  typedef double type __attribute__((vector_size(32), __may_alias__));
};
template <>
struct VectorOf<double, 64> {
  typedef double type __attribute__((vector_size(64), __may_alias__));
};
template <typename acc_t, int Bytes>
using vec = typename VectorOf<acc_t, Bytes>::type;

template <typename V, typename acc_t>
FASTMTL_ALWAYS_INLINE V load_vec(const acc_t* p) {
  V v;
  std::memcpy(&v, p, sizeof(v));  // unaligned load
  return v;
}

// |x| by clearing the sign bit: one AND instead of compare, negate and select.
template <typename V>
FASTMTL_ALWAYS_INLINE V vec_abs(V x) {
  using Bits = decltype(x < x);  // the same-width integer vector
  const V zero = {};
  return reinterpret_cast<V>(reinterpret_cast<Bits>(x) & ~reinterpret_cast<Bits>(-zero));
}

// Columns handled together: T rows x kTileColumns elements stay in L2 (64 KiB of float32 at T = 8).
constexpr int64_t kTileColumns = 2048;
// Columns per parallel work item. Fixed (not derived from the thread count) so that reductions
// happen in the same order, and give the same bits, on any number of threads.
constexpr int64_t kChunkColumns = 1 << 15;

inline int64_t chunk_count(int64_t columns) { return (columns + kChunkColumns - 1) / kChunkColumns; }

// Which instruction set a kernel body is generated for; it receives the tag and picks its
// vector width from it.
template <int Bytes>
struct Isa {
  static constexpr int kVectorBytes = Bytes;
};

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// The body must be a generic lambda `[&](auto isa) FASTMTL_KERNEL_BODY {...}` and everything it
// calls in the hot loop FASTMTL_ALWAYS_INLINE, so that it is inlined into, and code-generated
// for, the AVX-512 or AVX2 caller.
#define FASTMTL_KERNEL_BODY __attribute__((always_inline))

// FASTMTL_CPU_ISA=avx2|baseline caps the instruction set (read once), so tests can run every
// variant on an AVX-512 machine.
inline const char* cpu_isa_cap() {
  static const char* cap = std::getenv("FASTMTL_CPU_ISA");
  return cap ? cap : "";
}

inline bool cpu_has_avx2_fma() {
  static const bool has = std::strcmp(cpu_isa_cap(), "baseline") != 0 && __builtin_cpu_supports("avx2") &&
                          __builtin_cpu_supports("fma");
  return has;
}

inline bool cpu_has_avx512() {
  static const bool has = cpu_has_avx2_fma() && std::strcmp(cpu_isa_cap(), "avx2") != 0 &&
                          __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw");
  return has;
}

template <typename Body>
__attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,avx2,fma"))) void run_avx512(const Body& body) {
  body(Isa<64>{});
}

template <typename Body>
__attribute__((target("avx2,fma"))) void run_avx2(const Body& body) {
  body(Isa<32>{});
}

template <typename Body>
void run_best_isa(const Body& body) {
  if (cpu_has_avx512()) {
    run_avx512(body);
  } else if (cpu_has_avx2_fma()) {
    run_avx2(body);
  } else {
    body(Isa<32>{});
  }
}
#else
#define FASTMTL_KERNEL_BODY
template <typename Body>
void run_best_isa(const Body& body) {
  body(Isa<32>{});
}
#endif

}  // namespace fastmtl::cpu
