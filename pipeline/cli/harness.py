"""The `evol harness` command (registered by pipeline/cli/__init__.py); the stage is eval/harness/.

    evol harness --model smollm2-135m --label reference --model runs/tiny/sft/C1/merged --label C1 \\
        --out runs/tiny/harness --set eval.harness_tasks=[evol_arith] \\
        --set eval.harness_include=tests/fixtures/harness --set eval.harness_limit=4
    evol harness --adapter C1=runs/tiny/sft/C1/adapter --out runs/tiny/harness --set eval.harness_tasks=[gsm8k]

Runs the lm-eval tasks of `eval.harness_tasks` on each model, one engine after the other in this
process (with engine.backend=server, on the server: --model and --base are served names, adapters are
loaded into it), and writes `<out>/<label>/results.json` and per-sample logs. Every task name, the
include folder, the datasets cache, each model and adapter are checked before a model loads.
"""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.cli.common import config_options, friendly_errors, lock_output
from pipeline.cli.options import adapter_option, label_option, model_option, out_option
from pipeline.config import load_config


@click.command("harness")
@model_option("A model: a local directory or a prepared name. Repeat it, each with its --label.")
@label_option("labels", "Label (output subdirectory) of each --model, in order.")
@adapter_option(
    "A PEFT LoRA adapter, served on --base (lm-eval's lora_local_path, or loaded into the server) (repeatable)."
)
@click.option("--base", "base_name", default=None, help="The base model of the adapters (default: models.base).")
@out_option("Directory that receives <label>/results.json for every label.")
@config_options
@friendly_errors
def harness(model_names, labels, adapter_specs, base_name, out_dir, config_path, overrides) -> None:
    """Standard benchmarks (lm-evaluation-harness tasks, eval.harness_tasks) on each model, offline."""
    from eval.answer import check_label, parse_adapters
    from eval.harness import HarnessModel, run_harness
    from pipeline.engine import locate_model

    if len(labels) != len(model_names):
        raise click.UsageError(f"{len(model_names)} --model options need as many --label options, one each.")
    if not model_names and not adapter_specs:
        raise click.UsageError("Give at least one --model PATH --label NAME or --adapter LABEL=PATH.")
    config = load_config(config_path, overrides)
    config.validate("engine", "eval")
    adapters = parse_adapters(adapter_specs, config.engine.max_lora_rank)
    names = [check_label(label, "--label") for label in labels] + list(adapters)
    if len(set(names)) < len(names):
        raise click.UsageError(f"Each label must be different: {', '.join(names)}.")
    models = [HarnessModel(label, locate_model(config, name, "base")) for name, label in zip(model_names, labels)]
    if adapters:
        base = locate_model(config, base_name or config.models.base, "base")
        models += [HarnessModel(label, base, path) for label, path in adapters.items()]
    for name in names:  # one writer per label directory
        lock_output(Path(out_dir) / name)
    for label, summary in run_harness(config, models, Path(out_dir)).items():
        if summary["skipped"]:
            click.echo(f"{label}: already evaluated, {summary['dir']}")
        else:
            counts = ", ".join(f"{task} {n}" for task, n in summary["samples"].items())
            click.echo(f"{label}: {counts} items in {summary['dir']}")


COMMANDS = [harness]
