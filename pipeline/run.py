"""`evol run`: the whole flow, one stage per process, skipping what is finished.

    evol run --config configs/tiny.yaml                  # what ./run_all.sh runs
    evol run --config configs/paper-7b.yaml --set run.rounds=[0,2,4]

Stages, each a separate `evol` process so accelerator memory is returned in between:
  evolve    once, to the largest round count in `run.rounds`; C<k> are slices of it
  train     one fine-tune per round count k: data/C<k>.jsonl -> sft/C<k>
  answer    one engine for every LoRA adapter, plus the evolver's own answers as the reference
            ("% of ChatGPT" in the paper); a full fine-tune, or on CPU an adapter merged into its
            base (eval.answer_with), gets an engine of its own, one after the other in one process
  judge     C<k> against C0, and every C<k> against the reference
  analyze   judge-rated difficulty and embedding diversity per round (evol analyze)
  report    report.md / report.html / report.json with the ablation over rounds
Before the first stage, every config section, the seed file, the test set and every model the run
will load are checked (check_run_config, ensure_models); nothing is written until they pass.
Every stage command skips itself when its manifest matches, and resumes from its partial outputs
after an interruption, so rerunning the same `evol run` continues where it stopped. Each stage is
listed in runs/<name>/manifest.json (pipeline/core/manifest.py).
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import Config, semantic_dict, stable_hash, to_dict, to_yaml
from pipeline.core.jsonio import InputError
from pipeline.core.lock import held_fds, hold
from pipeline.core.manifest import write_run_manifest
from pipeline.core.models import SMOLLM2_ALIAS, prepare_alias, resolve_model
from pipeline.core.paths import REFERENCE, label, seeds_path, testset_path
from pipeline.engine.vllm_backend import check_loopback


@dataclass
class Step:
    stage: str
    label: str
    args: list[str]
    launcher: list[str] | None = None  # None: this Python, `-m pipeline`

    @property
    def command(self) -> list[str]:
        return [*(self.launcher or [sys.executable, "-m", "pipeline"]), *self.args]


def check_run_config(config: Config) -> None:
    """Everything that can be wrong with the run's config and data files, said before any model loads:
    every section's values (Config.validate), then the seed file, the test set and the accelerate file."""
    config.validate()
    seeds = seeds_path(config.evolve.seeds)
    if not seeds.is_file():
        raise InputError(f"Seed file {seeds} not found (evolve.seeds).")
    test = testset_path(config.eval.testset, quiet=True)
    if not test.is_file():
        raise InputError(f"Test set {test} not found (eval.testset).")
    if config.run.train_processes > 1 and not Path(config.run.accelerate_config).is_file():
        raise InputError(
            f"run.train_processes is {config.run.train_processes} but run.accelerate_config "
            f"{config.run.accelerate_config} does not exist; pick one from configs/accelerate/."
        )
    from pipeline.engine.ray_backend import check_backend  # engine.backend, replicas, parallel sizes, Ray

    check_backend(config.engine, config.ray)


def model_roles(config: Config) -> dict[str, str]:
    """Every model the run loads, by the config key that names it (empty fallbacks filled in)."""
    m = config.models
    roles = {
        "models.evolver": m.evolver,
        "models.responder": m.responder or m.evolver,
        "evolve.equality_model": config.evolve.equality_model or m.evolver,
        "models.base": m.base,
        "models.judge": m.judge,
    }
    if config.analysis.difficulty:
        roles["analysis.judge_model"] = config.analysis.judge_model or m.judge
    return roles


def ensure_models(config: Config) -> dict[str, Path]:
    """Prepare the built-in model if the config names it; check every other model exists."""
    paths = {}
    for key, name in model_roles(config).items():
        try:
            if name == SMOLLM2_ALIAS:
                prepare_alias(name, config.models.dir)
            paths[key] = resolve_model(name, config.models.dir)
        except InputError as err:
            raise InputError(f"{key}: {err}") from None
    return paths


def answers_from_merged(config: Config, gpu: bool | None = None) -> bool:
    """Whether LoRA fine-tunes answer as merged models (eval.answer_with; auto: on CPU only)."""
    if config.train.method not in ("lora", "qlora") or config.eval.answer_with == "lora":
        return False
    if config.eval.answer_with == "merged":
        return True
    if gpu is None:
        from pipeline.core.manifest import gpu_names

        gpu = bool(gpu_names())
    return not gpu


def plan(config: Config, run_dir: Path, config_file: Path, gpu: bool | None = None) -> list[Step]:
    """The stage commands of a run, in order (also what a test inspects for a multi-GPU config).

    `gpu`: whether the answers run on a GPU (None: look), which decides eval.answer_with=auto.
    """
    common = ["--config", str(config_file)]
    merged = answers_from_merged(config, gpu)
    rounds = sorted(config.run.rounds)
    steps = [Step("evolve", "evolve", ["evolve", *common, "--rounds", str(max(rounds)), "--out", str(run_dir)])]
    launcher = None
    if config.run.train_processes > 1:  # multi-GPU training: the same command under accelerate
        launcher = [
            "accelerate",
            "launch",
            "--config_file",
            config.run.accelerate_config,
            "--num_processes",
            str(config.run.train_processes),
            "-m",
            "pipeline",
        ]
    for k in rounds:
        steps.append(
            Step(
                "train",
                label(k),
                [
                    "train",
                    *common,
                    "--data",
                    str(run_dir / "data" / f"{label(k)}.jsonl"),
                    "--out",
                    str(run_dir / "sft" / label(k)),
                    *(["--merge"] if merged else []),
                ],
                launcher,
            )
        )
    answers = run_dir / "answers"
    reference_model = config.models.responder or config.models.evolver
    # When the reference model is the base model (the tiny default), its answers come from the
    # same engine as the adapters': one start instead of two.
    reference_with_base = config.run.reference and reference_model == config.models.base
    if config.train.method in ("lora", "qlora") and not merged:
        adapters = [f"--adapter={label(k)}={run_dir / 'sft' / label(k) / 'adapter'}" for k in rounds]
        base = ["--label", REFERENCE] if reference_with_base else ["--adapters-only"]
        steps.append(
            Step(
                "answer",
                "adapters",
                ["answer", *common, "--model", config.models.base, *base, *adapters, "--out", str(answers)],
            )
        )
    else:
        reference_with_base = False
    # Every model without adapters (merged, full fine-tunes, a reference that is not the base) answers
    # in one process, one engine after the other: one import of vLLM instead of one per model.
    weights = "merged" if merged else "model"  # merged: the adapter folded in by `train --merge`
    own = [] if config.train.method in ("lora", "qlora") and not merged else rounds
    models = [(str(run_dir / "sft" / label(k) / weights), label(k)) for k in own]
    if config.run.reference and not reference_with_base:
        models.append((reference_model, REFERENCE))
    if models:
        steps.append(
            Step(
                "answer",
                ", ".join(name for _, name in models),
                [
                    "answer",
                    *common,
                    *[a for m, name in models for a in ("--model", m, "--label", name)],
                    "--out",
                    str(answers),
                ],
            )
        )
    judged = [(label(k), label(0)) for k in rounds if k != 0]
    if config.run.reference:
        judged += [(label(k), REFERENCE) for k in rounds]
    if judged:  # one judge process, one engine start, for every comparison
        pairs = [arg for a, b in judged for arg in ("--answers", str(answers / a), "--baseline", str(answers / b))]
        steps.append(
            Step("judge", f"{len(judged)} comparisons", ["judge", *common, *pairs, "--out", str(run_dir / "judge")])
        )
    # Complexity and diversity per round (evol analyze): last, so it never delays the models.
    steps.append(Step("analyze", "analysis", ["analyze", *common, str(run_dir)]))
    return steps


def run_pipeline(config: Config) -> Path:
    # Every section, data file and model first: a typo costs a second, not a finished evolution.
    check_run_config(config)
    # One evolution to the largest round count; every smaller C<k> is a slice of it.
    config.evolve.rounds = max(config.run.rounds)
    ensure_models(config)
    check_loopback()  # every stage's engine needs it: say so before the first stage, not in it
    run_dir = Path(config.run.runs_dir) / config.run.name
    # One writer per run: the stage processes below inherit this lock instead of being refused by it.
    with hold(run_dir):
        write_run_manifest(run_dir, to_dict(config), stable_hash(semantic_dict(config)), to_yaml(config))
        config_file = run_dir / "config.yaml"
        steps = plan(config, run_dir, config_file)
        started = time.time()
        for number, step in enumerate(steps, start=1):
            print(f"\n=== [{number}/{len(steps)}] {step.stage} {step.label} ===", file=sys.stderr, flush=True)
            _run_step(step)
        from pipeline.report import write_run_report

        report = write_run_report(run_dir, config)
    print(f"\nDone in {time.time() - started:.0f} s: {report}", file=sys.stderr)
    return run_dir


def _run_step(step: Step) -> None:
    process = subprocess.Popen(step.command, pass_fds=held_fds())
    try:
        code = process.wait()
    except KeyboardInterrupt:
        process.wait()
        message = f"Interrupted during {step.stage} {step.label}; run the same command again to resume."
        raise InputError(message) from None  # the interruption is the message; its traceback helps no one
    if code != 0:
        raise InputError(
            f"Stage {step.stage} {step.label} failed (exit status {code}); its message is above. "
            f"Finished stages are kept: fix the cause and rerun the same command to continue."
        )
