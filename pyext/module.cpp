// Python module entry of fastmtl._C. Tensor ops are reached through the dispatcher
// (torch.ops.fastmtl.*), registered by csrc/ops.cpp when this library loads; the module
// itself only reports how it was built.
#include <torch/extension.h>

#ifndef FASTMTL_VERSION
#define FASTMTL_VERSION "unknown"
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastmtl compiled operators (registered under torch.ops.fastmtl)";
  m.attr("__version__") = FASTMTL_VERSION;
#ifdef FASTMTL_WITH_CUDA
  m.attr("built_with_cuda") = true;
#else
  m.attr("built_with_cuda") = false;
#endif
#ifdef FASTMTL_TORCH_VERSION
  m.attr("torch_version") = FASTMTL_TORCH_VERSION;  // the torch this library was compiled against
#endif
}
