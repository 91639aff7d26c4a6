#!/usr/bin/env bash
# Proves on a machine without a GPU that the CUDA sources compile and link: a separate venv
# with the CUDA 13 build of torch (docs/design.md "Build and CI") builds the full
# CUDAExtension out of tree (the CPU build in python/fastmtl is left alone) and imports it.
# CI runs this on every submission. Usage: bash scripts/check_cuda_build.sh [build-dir]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD=${1:-$ROOT/build/cuda-check}
VENV=${FASTMTL_CUDA_VENV:-$ROOT/.venv-cuda}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
if [ ! -x "$CUDA_HOME/bin/nvcc" ]; then
  echo "check_cuda_build: no nvcc under CUDA_HOME=$CUDA_HOME" >&2
  exit 1
fi

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
stamp="$VENV/.fastmtl-cuda-deps-1"
if [ ! -f "$stamp" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q torch==2.14.1 numpy ninja setuptools wheel
  touch "$stamp"
fi

start=$(date +%s)
mkdir -p "$BUILD"
# Architectures: setup.py's default (sm_80, sm_90 + PTX) unless TORCH_CUDA_ARCH_LIST is set.
MAX_JOBS=${MAX_JOBS:-2} "$VENV/bin/python" setup.py -q build_ext --build-lib "$BUILD/lib" --build-temp "$BUILD/tmp"
echo "check_cuda_build: compiled in $(( $(date +%s) - start )) s"

# Import the CUDA build from a copy of the package, without a GPU.
rm -rf "$BUILD/pkg" && mkdir -p "$BUILD/pkg"
cp -r python/fastmtl "$BUILD/pkg/"
rm -f "$BUILD"/pkg/fastmtl/_C*.so
cp "$BUILD"/lib/fastmtl/_C*.so "$BUILD/pkg/fastmtl/"
cd "$BUILD"
PYTHONPATH="$BUILD/pkg" "$VENV/bin/python" - <<'PY'
import torch
import fastmtl
assert fastmtl.HAS_EXT, fastmtl.IMPORT_ERROR
assert fastmtl.HAS_CUDA, "fastmtl._C was built without CUDA kernels"
for op in ("gram", "gram_rescue", "pcgrad_weights", "combine", "combine_into", "graddrop", "mgda_weights",
           "nash_mtl_weights", "imtl_g_weights", "aligned_mtl_weights", "gradvac_weights", "dual_cone_weights",
           "cagrad_weights", "pcd_weights", "fairgrad_weights", "simplex_descent_weights"):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fastmtl::{op}", "CUDA"), op
G = torch.randn(3, 100)
assert torch.allclose(fastmtl.gram(G), G @ G.T, atol=1e-4)  # the CPU kernels of this build work too
print("check_cuda_build: ok", fastmtl.build_info(), "torch", torch.__version__, "CUDA", torch.version.cuda)
PY
