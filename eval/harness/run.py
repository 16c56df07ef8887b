"""Run lm-evaluation-harness tasks on models with lm-eval's vLLM backend, one stage per label.

    run_harness(config, [HarnessModel("C1", Path("runs/tiny/sft/C1/merged"))], Path("runs/tiny/harness"))

With engine.backend=server the models are the server's (`HarnessModel.path` is the served name, an
adapter is loaded into the server under its label) and lm-eval talks to it through its
`local-completions` API model: no model is loaded in this process.

Writes `<out>/<label>/results.json` (lm-eval's results: per task metric and its stderr, n-samples,
n-shot, task configs and versions, its seeds, git hash and date, plus an "evol" block with the model,
the vLLM arguments and the versions), `<out>/<label>/samples_<task>.jsonl` (lm-eval's per-sample log:
document, prompt, response, filtered response, metric) and `<out>/<label>/manifest.json` last. A label
whose manifest matches its key (the model's content hash, the task names and their YAMLs, the include
folder's files, the limit, chat template, system prompt, seed, dtype, context length) is skipped;
batch size, KV cache size and core binding are not in the key.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from eval.harness.tasks import (
    check_tasks,
    from_include_dir,
    include_dir,
    task_manager,
    task_material,
    use_datasets_cache,
)
from eval.harness.vllm_cpu import answer_vllm_version
from pipeline.config import Config
from pipeline.core.jsonio import atomic_write_text
from pipeline.core.manifest import Stage, begin_stage, finish_stage
from pipeline.core.models import chat_template_of, content_hash
from pipeline.engine.backends import backend_of
from pipeline.engine.factory import model_identity, server_urls

RESULTS_FILE = "results.json"
SAMPLES_PREFIX = "samples_"
ROLE = "base"  # the harness evaluates the base model and its fine-tunes, as the answers stage does


@dataclass
class HarnessModel:
    label: str
    path: Path  # model weights (engine.backend=server: the served name); with an adapter, its base model
    adapter: Path | None = None  # a PEFT LoRA adapter: lm-eval's `lora_local_path`, or loaded into the server


def harness_settings(config: Config) -> dict:
    """The config values lm-eval's results depend on (beside the model and the task files)."""
    e, v = config.eval, config.engine
    return {
        "tasks": list(e.harness_tasks),
        "limit": e.harness_limit,
        "chat_template": e.harness_chat_template,
        "system_prompt": e.system_prompt,
        "seed": config.run.seed,
        "dtype": v.dtype,
        "max_model_len": v.max_model_len,
    }


def run_harness(config: Config, models: list[HarnessModel], out_dir: str | Path) -> dict[str, dict]:
    """Everything `evol harness` does: check the tasks, then one stage per label, one engine at a time."""
    config.validate("engine", "eval")
    e = config.eval
    # Every input is checked before the first model loads.
    include = include_dir(e.harness_include)
    use_datasets_cache(e.harness_datasets_cache)
    manager = task_manager(include)
    check_tasks(e.harness_tasks, manager, include)
    tasks = task_material(e.harness_tasks, manager, include)
    settings = harness_settings(config)
    stages = []
    for model in models:
        material = {
            "model": model_identity(config, model.path, ROLE),
            "adapter": content_hash(model.adapter) if model.adapter else None,
            "settings": settings,
            "tasks": tasks,
        }
        stages.append((model, begin_stage(out_dir, model.label, material)))
    summaries = {}
    for model, stage in stages:
        if stage.done:
            summaries[model.label] = {"skipped": True, "dir": str(stage.dir)}
            continue
        summaries[model.label] = evaluate_model(config, model, stage, manager, include)
    return summaries


def evaluate_model(config: Config, model: HarnessModel, stage: Stage, manager, include: Path | None) -> dict:
    """lm-eval's `simple_evaluate` on one model's vLLM engine (or, with engine.backend=server, on the
    server through lm-eval's `local-completions`), then results, samples and manifest."""
    e, seed = config.eval, config.run.seed
    backend = backend_of(config)
    kind, args, header, batch = backend.lm_eval_model(model.path, ROLE, model.adapter, model.label)
    if kind == "vllm":
        answer_vllm_version()  # lm-eval asks for the distribution `vllm`, which the CPU build names otherwise
    import lm_eval
    from lm_eval.api.registry import get_model

    started = time.time()
    with from_include_dir(include):
        lm = get_model(kind).create_from_arg_obj(
            {**args, **({"header": header} if header else {})}, {"batch_size": batch}
        )
        template = chat_template_of(model.adapter) if model.adapter else None
        if template:  # a fine-tune's adapter is prompted in the layout it was trained in, not with the base's
            lm.tokenizer.chat_template = template
            if kind == "vllm":  # lm-eval's vLLM model renders with the template it resolved at start
                lm.hf_chat_template = template
        try:
            results = lm_eval.simple_evaluate(
                model=lm,
                tasks=list(e.harness_tasks),
                batch_size=batch,
                limit=e.harness_limit or None,
                task_manager=manager,
                log_samples=True,
                apply_chat_template=e.harness_chat_template,
                system_instruction=e.system_prompt or None,
                random_seed=seed,
                numpy_random_seed=seed,
                torch_random_seed=seed,
                fewshot_random_seed=seed,
            )
        finally:
            _close(lm)
    seconds = time.time() - started
    return write_results(stage, dict(results), config, model, kind, args, seconds)


def write_results(
    stage: Stage, results: dict, config: Config, model: HarnessModel, kind: str, args: dict, seconds: float
):
    """results.json and one samples_<task>.jsonl per task, then the stage manifest last."""
    from importlib import metadata

    from lm_eval.utils import handle_non_serializable

    def dumps(data, indent=None) -> str:
        return json.dumps(data, indent=indent, ensure_ascii=False, default=handle_non_serializable)

    samples = results.pop("samples", None) or {}
    for task, rows in samples.items():
        atomic_write_text(stage.dir / f"{SAMPLES_PREFIX}{task}.jsonl", "".join(dumps(row) + "\n" for row in rows))
    results["config"] = {**(results.get("config") or {}), "model": kind, "model_args": args}
    results["evol"] = {
        "label": model.label,
        "model": str(model.path),
        "adapter": str(model.adapter) if model.adapter else None,
        "settings": harness_settings(config),
        "batch_size": str(config.eval.harness_batch_size),
        "lm_eval": metadata.version("lm_eval"),
        "seconds": round(seconds, 1),
    }
    atomic_write_text(stage.dir / RESULTS_FILE, dumps(results, indent=2) + "\n")
    counts = {task: (n or {}).get("effective") for task, n in (results.get("n-samples") or {}).items()}
    finish_stage(
        stage,
        config=harness_settings(config),
        rows=counts,
        models={"model": str(model.path), "adapter": str(model.adapter) if model.adapter else None},
        seeds={"run": config.run.seed},
        extra={
            "label": model.label,
            "throughput": {"seconds": round(seconds, 1), "batch_size": str(config.eval.harness_batch_size)},
            **server_urls(config, (ROLE,)),
        },
    )
    print(f"[harness] {model.label}: {', '.join(sorted(samples))} in {seconds:.0f} s", file=sys.stderr)
    return {"skipped": False, "dir": str(stage.dir), "samples": counts}


def _close(lm) -> None:
    """Stop lm-eval's vLLM engine now, so the next model never starts while this one holds memory."""
    llm = getattr(lm, "model", None)
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()
    if hasattr(lm, "model"):
        del lm.model
    import gc

    gc.collect()
