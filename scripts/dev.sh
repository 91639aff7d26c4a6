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

stamp="$VENV/.fastmtl-deps-$(sha1sum requirements-dev.txt | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  python -m pip install -q --upgrade pip
  python -m pip install -q -r requirements-dev.txt
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
