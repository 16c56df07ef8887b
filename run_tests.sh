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

# The browser tests (tests/test_view_browser.py, tests/test_report_browser.py) drive headless Chromium:
# installed here where the machine's package manager allows it (root with apt-get), else named at the end.
have_chromium() { command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || command -v google-chrome >/dev/null 2>&1; }
if ! have_chromium && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing Chromium for the browser tests (apt-get install chromium)" >&2
    { apt-get update -qq && apt-get install -y -qq chromium; } >/dev/null 2>&1 || echo "[setup] could not install Chromium" >&2
fi
status=0
python -m pytest -ra "$@" || status=$?
if ! have_chromium; then
    cat >&2 <<'SKIPPED'

!!! The browser tests were SKIPPED: no Chromium on PATH.
!!! tests/test_view_browser.py (evol view's data page) and tests/test_report_browser.py (the report's headline)
!!! did not run. Enable them with:  sudo apt-get install chromium   (then ./run_tests.sh again)
SKIPPED
fi
exit "$status"
