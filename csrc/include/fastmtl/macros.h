#pragma once
// Qualifiers for code shared by the C++ CPU kernels and the CUDA kernels.
// Only this header knows whether nvcc is compiling.

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FASTMTL_HOST_DEVICE __host__ __device__
#else
#define FASTMTL_HOST_DEVICE
#endif

#if defined(__GNUC__) || defined(__clang__)
#define FASTMTL_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define FASTMTL_ALWAYS_INLINE inline
#endif
