"""`evol run --rehearse`: a dress rehearsal of any config on a CPU box, in minutes, before GPU hours.

    evol run --config configs/paper-7b.yaml --rehearse          # runs/paper-7b-rehearsal/rehearsal.md

Every model of the config is replaced by a stand-in of the same kind: a chat model by SmolLM2-135M-
Instruct, a base model (no chat template) by the same weights without their template
(`smollm2-135m-base`), both prepared once under models/. Sizes are scaled down (seeds, test items,
prompts, tokens, batch sizes, steps, clusters; the rounds are kept), settings that only a CUDA GPU
can run are replaced by their CPU counterparts, and then every stage runs through `evol run` with
the config's own settings and code paths otherwise: the training method (full with gradient
checkpointing, LoRA), the templates, reference-guided judging, decontamination, the analysis, and
the backend: a local Ray for engine.backend=ray, and for engine.backend=server two vLLM servers the
rehearsal starts on loopback (the chat stand-in for every conversing role, the base stand-in with
runtime LoRA for the fine-tunes' adapters).

Before anything runs it checks what a GPU run would fail on: every model path exists (one sentence
lists those still to fill in), each model's context window holds engine.max_model_len and
train.max_length, the seeds and the test set parse, and the config's own checks pass. It ends with
a table of every config key: exercised with the config's value, scaled, replaced by a stand-in,
not used by this config, or could not be exercised here (CUDA-only).
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
from collections.abc import Iterator
from pathlib import Path

from pipeline.config import Config, get_setting, model_roles, set_setting, to_dict
from pipeline.core.jsonio import InputError, atomic_write_text, read_json, write_json
from pipeline.core.models import SMOLLM2_ALIAS, SMOLLM2_BASE_ALIAS, chat_template_of, prepare_alias, resolve_model
from pipeline.core.paths import RunDir
from pipeline.engine.backends import backend_of, read_by_another_backend

# key -> the rehearsal's ceiling: the config's value when lower (0 meaning "all" takes the ceiling)
CEILINGS = {
    "engine.max_tokens": 32,
    "engine.max_model_len": 1024,
    "engine.chunk_size": 16,
    "evolve.max_seeds": 4,
    "evolve.evolution_max_tokens": 40,
    "evolve.answer_max_tokens": 24,
    "train.max_length": 384,
    "train.effective_batch_size": 2,
    "train.per_device_train_batch_size": 2,
    "eval.limit": 3,
    "eval.answer_max_tokens": 24,
    "eval.judge_max_tokens": 40,
    "eval.verify_limit": 2,
    "eval.verify_max_tokens": 24,
    "eval.harness_limit": 2,
    "analysis.difficulty_per_round": 3,
    "analysis.difficulty_max_tokens": 24,
    "analysis.diversity_per_set": 50,
    "analysis.clusters": 2,
    "analysis.embedding_batch_size": 16,
}
# key -> the rehearsal's value, whatever the config says
FIXED = {"train.max_steps": 2, "engine.kv_cache_gb": 0.5}
# What only a CUDA GPU runs: key -> (the CPU value the rehearsal uses, what it cannot exercise)
CUDA_ONLY = {
    "engine.gpu_memory_utilization": (None, "the KV cache is engine.kv_cache_gb on CPU"),
    "engine.tensor_parallel_size": (1, "tensor parallelism over GPUs"),
    "engine.pipeline_parallel_size": (1, "pipeline parallelism over GPUs"),
    "run.train_processes": (1, "one training process per GPU (accelerate)"),
    "train.precision": ("fp32", "bf16/fp16 training (auto picks fp32 on CPU)"),
}
# What `evol run` never reads (evol optimize's own settings)
NOT_IN_RUN = ("optimize.", "models.optimizer")


def check_models(config: Config) -> dict[str, Path | None]:
    """Every model the config names, as a directory; one sentence lists the ones still to fill in. With
    engine.backend=server the conversing roles are names a server serves (None here): only models.base,
    which the fine-tune loads, must be a directory."""
    found, missing = {}, []
    served = backend_of(config).served
    for key, name in model_roles(config).items():
        if not get_setting(config, key):  # a fallback (responder = evolver, ...) is its model's key already
            continue
        if served and key != "models.base":
            found[key] = None
            continue
        try:
            found[key] = resolve_model(name, config.models.dir)
        except InputError:
            missing.append(f"{key} ({name})")
    if missing:
        raise InputError(
            f"Before a rehearsal, fill in the model paths this config still lacks: {', '.join(missing)}; "
            f"each must be a local model directory or a prepared model (the rehearsal reads their configs and "
            f"templates to choose stand-ins, and runs the stand-ins)."
        )
    return found


def context_problems(config: Config, paths: dict[str, Path]) -> list[str]:
    """What a GPU run would stop on: a model whose context window is shorter than the config asks."""
    problems = []
    for key, path in paths.items():
        if path is None:
            continue
        try:
            window = json.loads((path / "config.json").read_text()).get("max_position_embeddings")
        except (OSError, json.JSONDecodeError):
            continue
        if window and config.engine.max_model_len > window:
            problems.append(
                f"{key} ({path.name}) holds {window} tokens but engine.max_model_len is {config.engine.max_model_len}"
            )
        if key == "models.base" and window and config.train.max_length > window:
            problems.append(
                f"models.base ({path.name}) holds {window} tokens but train.max_length is {config.train.max_length}"
            )
    return problems


def check_data(config: Config) -> dict:
    """The seeds and the test set, read whole with the stages' own readers (a bad line fails here)."""
    from evolve_local.seeds import load_seeds
    from pipeline.core.paths import seeds_path, testset_path
    from pipeline.core.testset import read_testset

    seeds, _ = load_seeds(seeds_path(config.evolve.seeds))
    items = read_testset(testset_path(config.eval.testset, quiet=True), config.eval)
    return {"seeds": len(seeds), "test_items": len(items)}


def rehearsal_config(config: Config, paths: dict[str, Path]) -> tuple[Config, dict[str, str]]:
    """The config the rehearsal runs, and what it did to each key it changed."""
    if config.train.method == "qlora":
        raise InputError(
            "train.method=qlora needs CUDA (bitsandbytes 4-bit), which this machine lacks; rehearse the rest "
            "with --set train.method=lora, and run benchmarks/gpu_check.py on a GPU for QLoRA itself."
        )
    rehearsal, changes = copy.deepcopy(config), {}
    for key, path in paths.items():  # a stand-in of the same kind for every model (a served one converses)
        alias = SMOLLM2_ALIAS if path is None or chat_template_of(path) else SMOLLM2_BASE_ALIAS
        set_setting(rehearsal, key, alias)
        name = path.name if path else get_setting(config, key)
        changes[key] = f"stand-in: {name} -> {alias} ({'chat' if alias == SMOLLM2_ALIAS else 'base'} model)"
    for key, ceiling in CEILINGS.items():
        value = get_setting(config, key)
        if value == 0 or value is None or value > ceiling:
            set_setting(rehearsal, key, ceiling)
            changes[key] = f"scaled: {value} -> {ceiling}"
    for key, value in FIXED.items():
        if get_setting(config, key) != value:
            set_setting(rehearsal, key, value)
            changes[key] = f"scaled: {get_setting(config, key)} -> {value}"
    for key, (value, what) in CUDA_ONLY.items():
        if key == "train.precision" and get_setting(config, key) in ("auto", "fp32"):
            changes[key] = f"exercised as {get_setting(config, key)} (fp32 on CPU); could not: {what}"
            continue
        if value is not None:
            set_setting(rehearsal, key, value)
        changes[key] = f"could not (CUDA-only): {what}" + (f"; ran {value}" if value is not None else "")
    changes.update(backend_of(config).rehearsal_changes(rehearsal))  # a local Ray; the servers stand_in_servers starts
    rehearsal.run.name = f"{config.run.name}-rehearsal"
    return rehearsal, changes


@contextlib.contextmanager
def stand_in_servers(rehearsal: Config) -> Iterator[None]:
    """With engine.backend=server: one vLLM server on a free loopback port for every role, stopped
    afterwards; the rehearsal's engine.url points at it. The two stand-ins are the same weights (the
    base one lacks only the chat template), so the server loads the chat stand-in and answers to both
    names; the base's fine-tunes are adapters loaded into it at runtime, each sent with the template of
    its training layout, as on a real server. Else nothing."""
    if not backend_of(rehearsal).served:
        yield
        return
    from pipeline.engine.vllm_server import free_port, start_vllm_server, stop, wait_until_ready

    run_dir = Path(rehearsal.run.runs_dir) / rehearsal.run.name
    run_dir.mkdir(parents=True, exist_ok=True)
    port, model = free_port(), resolve_model(SMOLLM2_ALIAS, rehearsal.models.dir)
    names = list(dict.fromkeys((SMOLLM2_ALIAS, rehearsal.models.base)))
    server = start_vllm_server(
        rehearsal.engine, model, port, run_dir / "server.log", rehearsal.run.seed, runtime_lora=True, served_name=names
    )
    try:
        wait_until_ready(f"http://127.0.0.1:{port}/v1", server)
        rehearsal.engine.url, rehearsal.engine.role_urls = f"http://127.0.0.1:{port}/v1", {}
        yield
    finally:
        stop(server)


def unused(config: Config, key: str) -> str | None:
    """Why a key plays no part in this config's run, or None."""
    e = config.eval
    if key.startswith(NOT_IN_RUN):
        return "not part of evol run (evol optimize)"
    if other := read_by_another_backend(config, key):
        return f"engine.backend is not {other}"
    if key.startswith("eval.harness_") and not e.harness_tasks:
        return "eval.harness_tasks is empty"
    if key.startswith("eval.verify_") and key != "eval.verify_sets" and not e.verify_sets:
        return "eval.verify_sets is empty"
    if key == "eval.ifeval_prompts" and "ifeval" not in e.verify_sets:
        return "ifeval is not in eval.verify_sets"
    if key.startswith("train.lora_") and config.train.method == "full":
        return "train.method is full"
    if key == "run.accelerate_config" and config.run.train_processes <= 1:
        return "one training process"
    if (
        key.startswith("analysis.")
        and key != "analysis.difficulty"
        and "difficulty" in key
        and not config.analysis.difficulty
    ):
        return "analysis.difficulty is off"
    return None


def key_table(config: Config, changes: dict[str, str]) -> list[dict]:
    """Every config key with what the rehearsal did with it."""
    rows = []
    for section, values in to_dict(config).items():
        for option, value in values.items():
            key = f"{section}.{option}"
            why = unused(config, key)
            status = f"not used: {why}" if why else changes.get(key, "exercised")
            rows.append({"key": key, "value": value, "status": status})
    return rows


def stage_times(run_dir: Path) -> list[dict]:
    stages = read_json(run_dir / "manifest.json").get("stages", {})
    return [
        {"stage": name, "seconds": entry.get("seconds"), "status": entry.get("status")}
        for name, entry in stages.items()
    ]


def render(rows: list[dict], times: list[dict], checks: dict, wall: float) -> str:
    lines = [
        f"# Rehearsal of {checks['config']}",
        "",
        f"Wall {wall:.0f} s on this CPU machine; {checks['seeds']} seeds and {checks['test_items']} test items parse; "
        f"every model path exists; context windows fit.",
        "",
        "| stage | seconds | status |",
        "|---|---|---|",
        *(f"| {t['stage']} | {t['seconds']} | {t['status']} |" for t in times),
        "",
        "| key | config value | rehearsal |",
        "|---|---|---|",
        *(f"| `{r['key']}` | {json.dumps(r['value'])} | {r['status']} |" for r in rows),
    ]
    return "\n".join(lines) + "\n"


def rehearse(config: Config, config_path: str | None) -> Path:
    """Check, scale, run every stage on the stand-ins, write rehearsal.md / .json; returns the run dir."""
    from pipeline.run import check_run_config, run_pipeline

    config.validate()
    paths = check_models(config)
    problems = context_problems(config, paths)
    if problems:
        raise InputError(f"A GPU run of this config would stop: {'; '.join(problems)}.")
    checks = {"config": config_path or "the defaults", **check_data(config)}
    rehearsal, changes = rehearsal_config(config, paths)
    for alias in {SMOLLM2_ALIAS, SMOLLM2_BASE_ALIAS}:
        prepare_alias(alias, config.models.dir)
    started = time.monotonic()
    with stand_in_servers(rehearsal):
        check_run_config(rehearsal)
        run_dir = run_pipeline(rehearsal)
    wall = time.monotonic() - started
    rows, times = key_table(config, changes), stage_times(run_dir)
    atomic_write_text(RunDir(run_dir).rehearsal("md"), render(rows, times, checks, wall))
    write_json(
        RunDir(run_dir).rehearsal("json"),
        {"checks": checks, "wall_seconds": round(wall, 1), "stages": times, "keys": rows},
    )
    return run_dir
