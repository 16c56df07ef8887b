#!/usr/bin/env bash
# Runs the whole pipeline: evolve the seeds, build C0..CM, fine-tune one model per round count,
# answer the test set with each, judge them locally, write the report.
#
#   ./run_all.sh                                   # tiny CPU default (configs/tiny.yaml)
#   ./run_all.sh --config configs/paper-7b.yaml    # the paper's recipe on a GPU box
#   ./run_all.sh --set engine.max_tokens=128       # any config value from the command line
#   ./run_all.sh --bundle DIR                      # air-gapped: install and run from `evol bundle` output
#
# Bootstraps .venv on first use (scripts/bootstrap.sh), then hands over to `evol run`, which
# skips finished stages and resumes an interrupted one when the same command is run again.
set -euo pipefail
cd "$(dirname "$0")"

args=()
config=""
while [ $# -gt 0 ]; do
    case "$1" in
        --bundle) [ $# -ge 2 ] || { echo "--bundle needs a directory." >&2; exit 2; }
                  EVOL_BUNDLE="$(cd "$2" && pwd)"; export EVOL_BUNDLE; shift 2;;
        --bundle=*) EVOL_BUNDLE="$(cd "${1#--bundle=}" && pwd)"; export EVOL_BUNDLE; shift;;
        --config) [ $# -ge 2 ] || { echo "--config needs a file." >&2; exit 2; }
                  config="$2"; shift 2;;
        --config=*) config="${1#--config=}"; shift;;
        *) args+=("$1"); shift;;
    esac
done

source scripts/bootstrap.sh   # with EVOL_BUNDLE set, it verifies checksums and installs offline

if [ -n "${EVOL_BUNDLE:-}" ]; then
    # the bundled config's paths (models, seeds, test set, ...) are relative to the bundle: make them absolute
    [ -n "$config" ] || config="$EVOL_BUNDLE/config.yaml"
    mapfile -t bundled < <(python pipeline/bundle_target.py settings "$EVOL_BUNDLE")
    args=("${bundled[@]}" "${args[@]}")
fi
[ -n "$config" ] || config=configs/tiny.yaml
exec python -m pipeline run --config "$config" "${args[@]}"
