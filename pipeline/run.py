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
the analysis come last (pipeline/plan.py, `run_steps`). With one lane (a GPU box) the stages run one after
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
from functools import partial
from pathlib import Path

from pipeline.config import Config, model_roles
from pipeline.core.cores import bind_cores
from pipeline.core.jsonio import InputError
from pipeline.core.lock import held_fds, hold
from pipeline.core.manifest import record_config
from pipeline.core.models import CHAT_ROLES, SMOLLM2_ALIAS, prepare_alias, require_chat_model, resolve_model
from pipeline.core.paths import RunDir, seeds_path, testset_path
from pipeline.engine.vllm_backend import check_loopback
from pipeline.plan import Step, lanes_for, plan
from pipeline.warm import Warm, WarmProcess


def check_run_config(config: Config) -> None:
    """Everything that can be wrong with the run's config and data files, said before any model loads:
    every section's values (Config.validate), then the seed file, the test set, the evolving method
    (evolve.method), the accelerate file, the prompt sets of the verified instruction following and the
    lm-eval task names."""
    config.validate()
    seeds = seeds_path(config.evolve.seeds)
    if not seeds.is_file():
        raise InputError(f"Seed file {seeds} not found (evolve.seeds).")
    test = testset_path(config.eval.testset, quiet=True)
    if not test.is_file():
        raise InputError(f"Test set {test} not found (eval.testset).")
    from evolve_local.method import resolve_method  # evolve.method: "ops" or a method file, checked

    resolve_method(config.evolve.method)
    if config.run.train_processes > 1 and not Path(config.run.accelerate_config).is_file():
        raise InputError(
            f"run.train_processes is {config.run.train_processes} but run.accelerate_config "
            f"{config.run.accelerate_config} does not exist; pick one from configs/accelerate/."
        )
    for name in config.eval.verify_sets:  # each prompt set read and its instructions known, as the answers will
        from eval.verify.prompts import load_set

        load_set(name, config.eval)
    if config.eval.harness_tasks:  # lm-eval task names, against its index and eval.harness_include (~7 s)
        from eval.harness.tasks import check_tasks, include_dir, task_manager

        include = include_dir(config.eval.harness_include)
        check_tasks(config.eval.harness_tasks, task_manager(include), include)
    from pipeline.engine.backends import backend_of  # the backend's own settings, with the train and eval rules

    backend_of(config, whole_run=True)


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
        if key in CHAT_ROLES:
            require_chat_model(key, paths[key])
    return paths


def warm_start_for(config: Config, gpu: bool) -> bool:
    """Whether the stages are forked from a warm interpreter (pipeline/warm.py): run.warm_start, or
    automatically on a CPU machine only (CUDA does not survive a fork)."""
    return config.run.warm_start if config.run.warm_start is not None else not gpu


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
        record_config(run_dir, config)
        config_file = RunDir(run_dir).config
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
    free lane, bound to that lane's cores when there are several lanes (pipeline/core/cores.py). As each
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
