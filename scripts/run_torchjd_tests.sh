#!/usr/bin/env bash
# Runs torchjd's own aggregation unit tests against fastmtl.compat.torchjd, the test files unchanged:
# scripts/torchjd_compat_plugin.py (a pytest plugin, our code) replaces the torchjd.aggregation
# classes by the bridges before the tests are imported.
#
#   scripts/run_torchjd_tests.sh PATH/TO/torchjd [pytest arguments...]
#
# PATH/TO/torchjd: a torchjd checkout (or the tests/ folder of one); its tests/unit/aggregation run,
# with its tests/conftest.py, settings.py and utils/. The installed torchjd (whose base classes the
# bridges subclass) should be the version of the tests. FASTMTL_TORCHJD_SUBSTITUTE=0 runs the same
# tests on torchjd's own classes (the baseline). PYTHON picks the interpreter (default: python).
# Nothing is copied into this repository and nothing is downloaded.
set -euo pipefail
if [[ $# -lt 1 ]]; then
    echo "usage: $0 PATH/TO/torchjd [pytest arguments...]" >&2
    exit 2
fi
checkout=$(cd "$1" && pwd)
shift
if [[ -d "$checkout/tests/unit/aggregation" ]]; then
    root=$checkout
elif [[ -d "$checkout/unit/aggregation" ]]; then
    root=$(dirname "$checkout")
else
    echo "$0: no tests/unit/aggregation under $checkout" >&2
    exit 2
fi
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="$repo/scripts:$repo/python${PYTHONPATH:+:$PYTHONPATH}"
cd "$root"
# -p no:cacheprovider: write nothing into the checkout; xfail_strict: torchjd's pytest setting.
# --continue-on-collection-errors: a test module that imports a torchjd internal missing from the
# installed version errors alone instead of stopping the run.
exec "${PYTHON:-python}" -m pytest tests/unit/aggregation -p torchjd_compat_plugin -p no:cacheprovider \
    -o xfail_strict=true --continue-on-collection-errors -q -rfE "$@"
