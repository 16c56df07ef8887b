"""Where things are: the default data sets, and the run directory's fixed names.

The real data sets are never copied into the project.

Test set: config `eval.testset`, else $EVOL_TESTSET, else ../shared/data/evol_instruct_testset.jsonl
beside the project, else the small sample shipped in eval/data/ (with a note saying how to point
at the real file). Seeds: config `evolve.seeds`, else the set shipped in evolve_local/data/.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the project: pipeline/core/paths.py
SHARED_DATA = ROOT.parent / "shared" / "data"
REAL_TESTSET = "evol_instruct_testset.jsonl"
SAMPLE_TESTSET = ROOT / "eval" / "data" / "sample_testset.jsonl"
SHIPPED_SEEDS = ROOT / "evolve_local" / "data" / "seeds.jsonl"
# The project's own IFEval-format prompts (written here, not Google's), for the tiny run and tests.
SAMPLE_IFEVAL = ROOT / "eval" / "data" / "ifeval_sample.jsonl"


def testset_path(configured: str = "", quiet: bool = False) -> Path:
    if configured:
        return Path(configured).expanduser()
    if os.environ.get("EVOL_TESTSET"):
        return Path(os.environ["EVOL_TESTSET"]).expanduser()
    real = SHARED_DATA / REAL_TESTSET
    if real.is_file():
        return real
    if not quiet:
        print(
            f"[data] the Evol-Instruct test set was not found; using the small sample {SAMPLE_TESTSET}. "
            f"Point at the real 218-item file with --set eval.testset=PATH or EVOL_TESTSET=PATH.",
            file=sys.stderr,
        )
    return SAMPLE_TESTSET


def ifeval_prompts_path(configured: str = "") -> Path:
    """eval.ifeval_prompts, else the shipped sample."""
    return Path(configured).expanduser() if configured else SAMPLE_IFEVAL


def seeds_path(configured: str = "") -> Path:
    return Path(configured).expanduser() if configured else SHIPPED_SEEDS


# The run directory: runs/<name>/data/C<k>.jsonl trains sft/C<k>; REFERENCE labels the untuned
# model's own answers, the baseline every C<k> is also judged against.
REFERENCE = "reference"


def label(k: int) -> str:
    return f"C{k}"


def round_pool(run_dir: str | Path, k: int) -> Path:
    """The pool after evolution round k, written last: once it is there, data/C<k>.jsonl is complete
    (`evol run` starts C<k>'s fine-tune on it while the later rounds evolve)."""
    return Path(run_dir) / "evolve" / "work" / f"pool_{k}.jsonl"
