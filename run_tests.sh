#!/usr/bin/env bash
# Runs the test suite: unit tests (scripted fake engine) and integration tests (real vLLM on SmolLM2).
#
#   ./run_tests.sh                 # everything
#   ./run_tests.sh -m "not integration"   # unit tests only (seconds)
#
# Bootstraps .venv on first use (see scripts/bootstrap.sh). The real data sets are read from
# ../shared/data when present (or $EVOL_TESTSET / $EVOL_SEED_TASKS); they are never copied here.
set -euo pipefail
cd "$(dirname "$0")"
# The Ray backend's tests need the optional ray extra; run_all.sh does not install it.
export EVOL_EXTRAS="${EVOL_EXTRAS:-ray}"
source scripts/bootstrap.sh
exec python -m pytest -ra "$@"
