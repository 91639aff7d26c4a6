#pragma once
// The finiteness test every kernel and solver shares. Portable to device code, and immune to
// -ffast-math's assumption that no value is NaN (std::isfinite may be folded to true there).
#include "fastmtl/macros.h"

namespace fastmtl {

// True when x is neither NaN nor +-Inf (x - x is NaN for both).
template <typename T>
FASTMTL_HOST_DEVICE inline bool is_finite_value(T x) {
  return (x - x) == (x - x);
}

}  // namespace fastmtl
