"""The `evol train` command (registered by pipeline/cli/__init__.py).

    evol train --config configs/tiny.yaml --data runs/tiny/data/C1.jsonl --out runs/tiny/sft/C1
    evol train --config configs/paper-7b.yaml --data runs/paper-7b/data/C4.jsonl \
        --base /models/llama-7b --out runs/paper-7b/sft/C4 --method qlora --merge
    evol train --config configs/tiny.yaml --data runs/tiny/data/C0.jsonl --out runs/tiny/sft/C0 \
        --data runs/tiny/data/C1.jsonl --out runs/tiny/sft/C1 --merge     (one process, one after the other)

Multi-GPU: the same command under `accelerate launch` with a file from configs/accelerate/
(each opens with its exact command line).
"""

from __future__ import annotations

import os

import click

from pipeline.cli.common import config_options, friendly_errors, lock_output
from pipeline.cli.options import file_option, out_option
from pipeline.config import load_config


@click.command("train")
@file_option(
    "--data",
    "data_paths",
    "Training set: chat `messages` JSONL (runs/<name>/data/C<k>.jsonl) or Alpaca JSON/JSONL. Repeat it, "
    "each with its --out, to run several fine-tunes one after the other in this process (one import of "
    "torch, transformers and TRL).",
    required=True,
    multiple=True,
)
@out_option("Output directory, e.g. runs/<name>/sft/C<k>; one per --data.", "out_dirs", multiple=True)
@click.option("--base", default=None, help="Base model directory or prepared name (default: models.base).")
@click.option(
    "--method",
    type=click.Choice(["full", "lora", "qlora"]),
    default=None,
    help="Fine-tuning method (default: train.method).",
)
@click.option("--merge", is_flag=True, help="Also write merged/: the LoRA adapter folded into the base model.")
@config_options
@friendly_errors
def train(data_paths, out_dirs, base, method, merge, config_path, overrides) -> None:
    """Supervised fine-tuning with TRL SFTTrainer; loss on the assistant's tokens only."""
    from finetune.train import run_trains

    if len(data_paths) != len(out_dirs):
        raise click.UsageError(f"{len(data_paths)} --data options need as many --out options, one each.")
    if len(set(map(os.path.abspath, out_dirs))) < len(out_dirs):
        raise click.UsageError(f"Each --out must be a different directory: {', '.join(out_dirs)}.")
    if len(out_dirs) > 1 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise click.UsageError("Under accelerate launch give one --data/--out pair per command.")
    for out_dir in out_dirs:
        lock_output(out_dir)
    config = load_config(config_path, overrides)
    for manifest in run_trains(config, list(zip(data_paths, out_dirs)), base=base, method=method, merge=merge):
        if not manifest:  # a non-main process under accelerate launch
            continue
        perf = manifest.get("performance", {})
        outputs = ", ".join(f"{k}: {v}" for k, v in manifest.get("outputs", {}).items())
        click.echo(
            f"{manifest['rows']['train_rows']} rows trained ({manifest['rows']['bad_rows']} bad skipped), "
            f"{perf.get('global_step')} steps, loss {perf.get('first_loss')} -> {perf.get('last_loss')}, "
            f"{perf.get('train_tokens_per_second')} tokens/s; {outputs}"
        )


COMMANDS = [train]
