#!/usr/bin/env bash
# Everything that needs a GPU, in one call, on a machine with no network (the device tool's
# H100/H200 image has torch, pytest, scipy; torchjd, a test-only peer, can be carried as a
# wheel in .whl/): build the CUDA extension, run the CUDA tests, compute-sanitizer memcheck
# and racecheck on a small case, then the GPU benchmarks. Every result goes to $OUT.
#   OUT=/some/dir bash scripts/gpu_suite.sh             # tests + sanitizers + T=8 benchmarks (~6 min)
#   OUT=/some/dir bash scripts/gpu_suite.sh --bench-full  # build + the whole benchmark grid
# compute-sanitizer has failed to start on the gVisor H200 image: prefer nvidia-h100-x1.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-results}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
MODE=${1:-}
status=0
step() { echo "== $1" | tee -a "$OUT/summary.txt"; }

step "device: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null)"
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --target /tmp/fastmtl-site .whl/*.whl &&
    export PYTHONPATH=/tmp/fastmtl-site${PYTHONPATH:+:$PYTHONPATH}
fi

step "build"
start=$(date +%s)
MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} \
  $PY -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1 || { step "build FAILED"; exit 1; }
$PY -c "import fastmtl, torch; assert fastmtl.HAS_CUDA, fastmtl.IMPORT_ERROR; print(fastmtl.build_info(), torch.__version__, torch.version.cuda)" \
  2>&1 | tee -a "$OUT/summary.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || exit 1
step "built in $(( $(date +%s) - start )) s"

if [ "$MODE" = "--bench-full" ]; then
  step "benchmarks (full grid)"
  $PY benchmarks/gpu_bench.py --out "$OUT" 2>&1 | tee -a "$OUT/summary.txt"
  exit "${PIPESTATUS[0]}"
fi

step "CUDA tests"
$PY -m pytest tests/ -m cuda -q -p no:cacheprovider 2>&1 | tee "$OUT/tests_cuda.log" | tail -3 | tee -a "$OUT/summary.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

for tool in memcheck racecheck; do
  step "compute-sanitizer $tool"
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool "$tool" --error-exitcode 7 --kernel-name kns=fastmtl \
    $PY scripts/sanitizer_case.py > "$OUT/sanitizer_$tool.log" 2>&1
  rc=$?
  tail -2 "$OUT/sanitizer_$tool.log" | tee -a "$OUT/summary.txt"
  [ "$rc" -eq 0 ] || { step "$tool FAILED (rc=$rc)"; status=1; }
done

step "benchmarks (T=8)"
$PY benchmarks/gpu_bench.py --out "$OUT" -T 8 -P 1e5,1e6,1.6e7,1e8 --rounds 10 2>&1 | tee -a "$OUT/summary.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
exit $status
