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


def pair_name(a: str, b: str) -> str:
    """The judge's folder for A's answers against B's: `<A>__vs__<B>`."""
    return f"{a}__vs__{b}"


class RunDir:
    """Every name of a run directory (docs/run-directory.md), spelled once:

        run = RunDir("runs/tiny")
        run.data(1)            # runs/tiny/data/C1.jsonl, the pool C1 trains on
        run.judge_pair("C1", "C0")

    Stages write below the folder they are given (`--out`); the orchestration gives them these."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def config(self) -> Path:
        """The resolved config the run was started with."""
        return self.path / "config.yaml"

    @property
    def evolve(self) -> Path:
        return self.path / "evolve"

    @property
    def manifest(self) -> Path:
        """The run's manifest: its config hash and one entry per stage."""
        return self.path / "manifest.json"

    @property
    def evolve_stats(self) -> Path:
        return self.evolve / "stats.json"

    @property
    def evolve_manifest(self) -> Path:
        return self.evolve / "manifest.json"

    @property
    def evolve_method(self) -> Path:
        """A copy of evolve.method's file when it is not the operations."""
        return self.evolve / "method.json"

    def round(self, k: int) -> Path:
        """Every attempt of evolution round k (round 0: the seeds and their answers)."""
        return self.evolve / f"round_{k}.jsonl"

    def pool(self, k: int) -> Path:
        """The pool after evolution round k, written last: once it is there, data/C<k>.jsonl is complete
        (`evol run` starts C<k>'s fine-tune on it while the later rounds evolve)."""
        return self.evolve / "work" / f"pool_{k}.jsonl"

    @property
    def data_dir(self) -> Path:
        return self.path / "data"

    def data(self, k: int) -> Path:
        """C<k>: the seeds plus rounds 1..k's survivors, what sft/C<k> trains on."""
        return self.data_dir / f"{label(k)}.jsonl"

    def sft(self, k: int) -> Path:
        return self.path / "sft" / label(k)

    @property
    def answers(self) -> Path:
        return self.path / "answers"

    @property
    def judge(self) -> Path:
        return self.path / "judge"

    def judge_pair(self, a: str, b: str) -> Path:
        return self.judge / pair_name(a, b)

    @property
    def verify(self) -> Path:
        return self.path / "verify"

    @property
    def harness(self) -> Path:
        return self.path / "harness"

    def report(self, kind: str = "md") -> Path:
        """report.md, report.html or report.json."""
        return self.path / f"report.{kind}"

    @property
    def plots(self) -> Path:
        return self.path / "plots"

    def rehearsal(self, kind: str = "md") -> Path:
        """rehearsal.md or rehearsal.json of `evol run --rehearse`."""
        return self.path / f"rehearsal.{kind}"

    @property
    def view(self) -> Path:
        """The data page of `evol view`."""
        return self.path / "data.html"
