#!/usr/bin/env bash
# Runs the whole pipeline: evolve the seeds, build C0..CM, fine-tune one model per round count,
# answer the test set with each, judge them locally, write the report.
#
#   ./run_all.sh                                   # tiny CPU default (configs/tiny.yaml)
#   ./run_all.sh --config configs/paper-7b.yaml    # the paper's recipe on a GPU box
#   ./run_all.sh --set engine.max_tokens=128       # any config value from the command line
#
# Bootstraps .venv on first use (scripts/bootstrap.sh), then hands over to `evol run`, which
# skips finished stages and resumes an interrupted one when the same command is run again.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/bootstrap.sh

args=("$@")
has_config=false
for arg in "${args[@]}"; do
    [ "$arg" = "--config" ] && has_config=true
done
$has_config || args=(--config configs/tiny.yaml "${args[@]}")
exec python -m pipeline run "${args[@]}"
