#pragma once
// Argument checks shared by the CPU and CUDA implementations of every fastmtl operator. The
// Python layer gives friendlier errors first; these keep a direct torch.ops.fastmtl call from
// ever reading out of bounds (they raise RuntimeError through TORCH_CHECK).
#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <utility>

namespace fastmtl {

inline void check_task_matrix(const at::Tensor& grads) {
  TORCH_CHECK(grads.dim() == 2, "fastmtl: grads must be a [T, P] matrix, got ", grads.dim(), " dimensions");
  TORCH_CHECK(grads.size(0) > 0 && grads.size(1) > 0, "fastmtl: grads must be non-empty, got shape ", grads.sizes());
  TORCH_CHECK(at::isFloatingType(grads.scalar_type()), "fastmtl: grads must be a floating-point tensor, got ",
              grads.scalar_type());
}

// Kernels walk each row with unit stride; any row stride is fine.
inline at::Tensor rows_contiguous(const at::Tensor& grads) {
  return (grads.stride(1) == 1 && grads.stride(0) >= grads.size(1)) ? grads : grads.contiguous();
}

inline void check_same_device(const at::Tensor& tensor, const char* name, const at::Tensor& grads) {
  TORCH_CHECK(tensor.device() == grads.device(), "fastmtl: ", name, " is on ", tensor.device(), " but grads on ",
              grads.device());
}

inline void check_weights(const at::Tensor& grads, const at::Tensor& weights) {
  TORCH_CHECK(weights.dim() == 1 && weights.size(0) == grads.size(0), "fastmtl: weights must be [T] = [",
              grads.size(0), "], got ", weights.sizes());
  TORCH_CHECK(at::isFloatingType(weights.scalar_type()), "fastmtl: weights must be floating-point");
  check_same_device(weights, "weights", grads);
}

// [first byte, one past the last byte) that a non-empty tensor's elements can occupy.
inline std::pair<uintptr_t, uintptr_t> byte_span(const at::Tensor& tensor) {
  int64_t last = 0;  // offset of the last element, in elements (strides are never negative)
  for (int64_t d = 0; d < tensor.dim(); ++d) last += (tensor.size(d) - 1) * tensor.stride(d);
  const uintptr_t first = reinterpret_cast<uintptr_t>(tensor.const_data_ptr());
  return {first, first + static_cast<uintptr_t>((last + 1) * tensor.element_size())};
}

// The combine kernels read every row of grads while they write out: an out inside grads would
// be overwritten before it is read (wrong numbers, no error). Checked conservatively on the
// byte ranges, which also catches views of one buffer through different storages.
inline void check_out_does_not_overlap(const at::Tensor& grads, const at::Tensor& out) {
  const auto g = byte_span(grads), o = byte_span(out);
  TORCH_CHECK(o.second <= g.first || g.second <= o.first,
              "fastmtl: out overlaps grads in memory (e.g. out is a row or view of grads); the result is written "
              "while grads is still being read, so out must be a separate tensor");
}

inline void check_out(const at::Tensor& grads, const at::Tensor& out) {
  TORCH_CHECK(out.dim() == 1 && out.size(0) == grads.size(1), "fastmtl: out must be [P] = [", grads.size(1),
              "], got ", out.sizes());
  TORCH_CHECK(out.scalar_type() == grads.scalar_type(), "fastmtl: out dtype ", out.scalar_type(),
              " differs from grads dtype ", grads.scalar_type());
  check_same_device(out, "out", grads);
  check_out_does_not_overlap(grads, out);
}

inline void check_gram_matrix(const at::Tensor& gram) {
  TORCH_CHECK(gram.dim() == 2 && gram.size(0) == gram.size(1) && gram.size(0) > 0,
              "fastmtl: gram must be a non-empty square [T, T] matrix, got shape ", gram.sizes());
  TORCH_CHECK(at::isFloatingType(gram.scalar_type()), "fastmtl: gram must be floating-point, got ",
              gram.scalar_type());
}

inline void check_pcgrad_inputs(const at::Tensor& gram, const std::optional<at::Tensor>& order) {
  check_gram_matrix(gram);
  if (order.has_value()) {
    const int64_t T = gram.size(0);
    TORCH_CHECK(order->dim() == 2 && order->size(0) == T && order->size(1) == T, "fastmtl: order must be [T, T] = [",
                T, ", ", T, "], got ", order->sizes());
    TORCH_CHECK(order->scalar_type() == at::kLong, "fastmtl: order must be int64, got ", order->scalar_type());
    check_same_device(*order, "order", gram);
  }
}

inline void check_gram_rescue_inputs(const at::Tensor& grads, const at::Tensor& gram) {
  check_task_matrix(grads);
  const int64_t T = grads.size(0);
  TORCH_CHECK(gram.dim() == 2 && gram.size(0) == T && gram.size(1) == T, "fastmtl: gram must be [T, T] = [", T, ", ",
              T, "], got ", gram.sizes());
  TORCH_CHECK(at::isFloatingType(gram.scalar_type()), "fastmtl: gram must be floating-point, got ",
              gram.scalar_type());
  check_same_device(gram, "gram", grads);
}

// Largest column_offset + P GradDrop accepts (see check_graddrop_inputs).
constexpr int64_t kMaxGraddropColumn = int64_t{1} << 62;

inline void check_graddrop_inputs(const at::Tensor& grads, const at::Tensor& leak,
                                  const std::optional<at::Tensor>& signs, const at::Tensor& seed,
                                  int64_t column_offset) {
  check_task_matrix(grads);
  const int64_t T = grads.size(0), P = grads.size(1);
  // Stream elements [column_offset, column_offset + P): the bound keeps every index and the
  // kernels' block arithmetic (philox_span adds up to 511) far from int64 overflow.
  TORCH_CHECK(column_offset >= 0, "fastmtl: column_offset must be >= 0, got ", column_offset);
  TORCH_CHECK(column_offset <= kMaxGraddropColumn - P, "fastmtl: column_offset + P must not exceed 2^62, got ",
              column_offset, " + ", P);
  TORCH_CHECK(leak.dim() == 1 && leak.size(0) == T, "fastmtl: leak must be [T] = [", T, "], got ", leak.sizes());
  TORCH_CHECK(at::isFloatingType(leak.scalar_type()), "fastmtl: leak must be floating-point");
  check_same_device(leak, "leak", grads);
  TORCH_CHECK(seed.dim() == 1 && seed.size(0) == 2 && seed.scalar_type() == at::kLong,
              "fastmtl: seed must be an int64 tensor of 2 elements (key, offset), got ", seed.scalar_type(), " ",
              seed.sizes());
  check_same_device(seed, "seed", grads);
  if (signs.has_value()) {
    TORCH_CHECK(signs->dim() == 1 && signs->size(0) == P, "fastmtl: signs must be [P] = [", P, "], got ",
                signs->sizes());
    TORCH_CHECK(signs->scalar_type() == grads.scalar_type(), "fastmtl: signs dtype ", signs->scalar_type(),
                " differs from grads dtype ", grads.scalar_type());
    check_same_device(*signs, "signs", grads);
  }
}

}  // namespace fastmtl
