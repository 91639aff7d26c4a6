#!/usr/bin/env bash
# Everything that needs a GPU, in one call, on a machine with no network (the device tool's
# H100/H200 image has torch, pytest, scipy; torchjd is carried as a wheel in .whl/ if wanted):
# build the CUDA extension, run the CUDA tests (and the rest of the suite), compute-sanitizer
# memcheck and racecheck on a small case, then the GPU benchmarks. Every result goes to $OUT.
#   OUT=/some/dir bash scripts/gpu_suite.sh [--quick]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-results}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
QUICK=${1:-}
status=0
step() { echo "== $1" | tee -a "$OUT/summary.txt"; }

step "device: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null)"
if ls .whl/*.whl >/dev/null 2>&1; then  # carried test-only peers (torchjd)
  $PY -m pip install -q --no-index --no-deps --target /tmp/fastmtl-site .whl/*.whl && export PYTHONPATH=/tmp/fastmtl-site${PYTHONPATH:+:$PYTHONPATH}
fi

step "build"
start=$(date +%s)
MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} \
  $PY -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1 || { step "build FAILED"; exit 1; }
$PY -c "import fastmtl, torch; assert fastmtl.HAS_CUDA, fastmtl.IMPORT_ERROR; print(fastmtl.build_info(), torch.__version__, torch.version.cuda)" \
  | tee -a "$OUT/summary.txt" || exit 1
step "built in $(( $(date +%s) - start )) s"

step "CUDA tests"
$PY -m pytest tests/test_cuda.py -q -p no:cacheprovider 2>&1 | tee "$OUT/tests_cuda.log" | tail -3 | tee -a "$OUT/summary.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
if [ "$QUICK" != "--quick" ]; then
  step "full test suite"
  $PY -m pytest tests -q -m "not slow" -p no:cacheprovider 2>&1 | tail -3 | tee -a "$OUT/summary.txt"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi

for tool in memcheck racecheck; do
  step "compute-sanitizer $tool"
  compute-sanitizer --tool "$tool" --error-exitcode 7 $PY scripts/sanitizer_case.py > "$OUT/sanitizer_$tool.log" 2>&1
  rc=$?
  tail -2 "$OUT/sanitizer_$tool.log" | tee -a "$OUT/summary.txt"
  [ "$rc" -eq 0 ] || { step "$tool FAILED (rc=$rc)"; status=1; }
done

step "benchmarks"
if [ "$QUICK" = "--quick" ]; then
  $PY benchmarks/gpu_bench.py --out "$OUT" -T 8 -P 1e6,1.6e7,1e8 --rounds 10 2>&1 | tee -a "$OUT/summary.txt"
else
  $PY benchmarks/gpu_bench.py --out "$OUT" 2>&1 | tee -a "$OUT/summary.txt"
fi
exit $status
