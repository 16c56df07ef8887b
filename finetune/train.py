"""Supervised fine-tuning with TRL's SFTTrainer: full, LoRA or QLoRA, resumable, one run per directory.

    evol train --config configs/tiny.yaml --data runs/tiny/data/C1.jsonl --out runs/tiny/sft/C1
    evol train --config configs/paper-7b.yaml --data runs/paper-7b/data/C4.jsonl \
        --out runs/paper-7b/sft/C4 --method qlora --merge
    accelerate launch --config_file configs/accelerate/ddp.yaml -m pipeline.cli train ...   (multi-GPU)

Read top to bottom: check options and hardware, decide skip/resume/start from the data file's
hash (a finished fine-tune is skipped without reading its rows), read and tokenize the data (bad
rows counted), load the model, train, save, write metrics, card and manifest last.

DIR/ gets adapter/ (LoRA, QLoRA) or model/ (full), merged/ with --merge, metrics.jsonl, loss.png,
model_card.md, config.yaml and manifest.json (last: its presence means done). Checkpoints go to
DIR/checkpoints/ while training; rerunning the same command resumes from the newest one.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

from finetune.card import MetricsCallback, peak_memory, plot_loss, trim_metrics, write_model_card
from finetune.data import (
    BadRows,
    check_bad_rows,
    load_conversations,
    resolve_template,
    tokenize_conversations,
    training_chat_template,
)
from pipeline.config import Config, semantic_dict, to_yaml
from pipeline.core.jsonio import InputError, atomic_dir, atomic_write_text, read_json, write_json
from pipeline.core.manifest import begin_stage, file_sha256, finish_stage, stage_done
from pipeline.core.models import chat_template_of, content_hash, resolve_model


def log(message: str) -> None:
    print(f"[train] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- options and hardware


def check_options(config: Config, method: str, merge: bool) -> None:
    """The train section's values (pipeline/config/train.py), then what only `evol train` knows:
    its --method and --merge flags and the number of processes it was launched with."""
    train = dataclasses.replace(config.train, method=method)  # --method wins over train.method
    train.validate()
    if merge and method == "full":
        raise InputError(
            "--merge merges a LoRA adapter into its base; --method full already writes a "
            "complete model in model/, so drop --merge or use --method lora."
        )
    world = int(os.environ.get("WORLD_SIZE", "1"))
    step = train.per_device_train_batch_size * world
    if train.effective_batch_size % step:
        raise InputError(
            f"train.effective_batch_size ({train.effective_batch_size}) must be a multiple of "
            f"train.per_device_train_batch_size ({train.per_device_train_batch_size}) x {world} process(es); "
            f"change one of them."
        )


def check_hardware(method: str, precision: str) -> str:
    """The training precision for this machine; impossible combinations fail before anything loads."""
    import torch

    cuda = torch.cuda.is_available()
    if method == "qlora":
        if not cuda:
            raise InputError(
                "--method qlora needs a CUDA GPU (bitsandbytes 4-bit kernels); on this machine "
                "use --method lora or --method full."
            )
        if importlib.util.find_spec("bitsandbytes") is None:
            raise InputError(
                "--method qlora needs the bitsandbytes package; install the `gpu` extra "
                "(pip install -e .[gpu]) or use --method lora."
            )
        if precision == "fp16" or (precision == "auto" and not torch.cuda.is_bf16_supported()):
            raise InputError(
                "QLoRA computes in bf16, which this GPU lacks; use --method lora with train.precision=fp16."
            )
    if precision in ("bf16", "fp16") and not cuda:
        raise InputError(f"train.precision={precision} needs a CUDA GPU; on CPU use train.precision=fp32 (or auto).")
    if precision == "auto":
        return ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "fp32"
    return precision


# ---------------------------------------------------------------- the run


def train_key_material(config: Config, method: str, template: str, data_sha256: str, base_hash: str) -> dict:
    """What a finished fine-tune depends on: its stage key (throughput knobs left out)."""
    train = config.train
    return {
        "data_sha256": data_sha256,
        "base_model": base_hash,
        "method": method,
        "template": template,
        "train": semantic_dict(train),
        "seed": train.seed if train.seed is not None else config.run.seed,
    }


def run_train(
    config: Config,
    data_path: str | Path,
    out_dir: str | Path,
    base: str | None = None,
    method: str | None = None,
    merge: bool = False,
    callbacks: list | None = None,
) -> dict:
    """Fine-tune `base` on `data_path` into `out_dir`; returns the stage manifest."""
    train = config.train
    method = method or train.method
    data_path, out_dir = Path(data_path), Path(out_dir)
    ckpt_dir, metrics_path = out_dir / "checkpoints", out_dir / "metrics.jsonl"

    # ---- check everything the user can get wrong, before any model loads
    check_options(config, method, merge)
    precision = check_hardware(method, train.precision)
    base_path = resolve_model(base or config.models.base, config.models.dir)
    tokenizer = load_tokenizer(base_path, config.models.trust_remote_code)
    template = resolve_template(tokenizer, train.template)

    # ---- skip, resume or start: the key needs the data file's hash, not its tokens, so a
    # finished fine-tune is recognised before any row is read
    data_sha = data_sha256(data_path)
    key_material = train_key_material(config, method, template, data_sha, content_hash(base_path))
    seed = key_material["seed"]
    args = sft_args(train, precision, seed, ckpt_dir)  # sets up the processes under accelerate launch
    if stage_done(out_dir, key_material):
        return finished_train(out_dir, key_material, args.process_index == 0, merge, base_path, tokenizer)

    # ---- read and tokenize the data; bad rows with on_bad_rows=fail stop here, before the
    # stage directory is touched
    examples, bad = read_examples(data_path, tokenizer, template, train)
    stage, resume_from = open_stage(config, out_dir, key_material, args, ckpt_dir, metrics_path)

    # ---- load the model, train
    metrics = MetricsCallback(metrics_path)
    callbacks = [metrics, *(callbacks or [])]
    trainer = make_trainer(config, base_path, method, precision, args, examples, tokenizer, callbacks)
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)

    # ---- save: every rank takes part (DeepSpeed ZeRO-3 and FSDP gather sharded weights here); the tokenizer
    # beside the weights and the merged copy carry the layout trained in, so every consumer prompts it that way
    tokenizer.chat_template = training_chat_template(tokenizer, template, train.response_marker)
    target = out_dir / ("model" if method == "full" else "adapter")
    trainer.save_model(str(target))  # a PEFT model saves only its adapter; the tokenizer goes along
    if not trainer.is_world_process_zero():
        return {}
    outputs = {target.name: str(target)}
    if merge:
        del trainer  # the trained model leaves memory before the base loads again for the merge
        outputs["merged"] = merge_adapter(base_path, target, out_dir / "merged", tokenizer)

    # ---- metrics, card, manifest (last): the card shows what the manifest records
    record = {
        "method": method,
        "template": template,
        "response_marker": train.response_marker,
        "data": data_summary(data_path, data_sha, bad, examples, train.on_bad_rows),
        "bad_rows": bad.as_dict(),
        "outputs": outputs,
        "performance": performance_summary(result, metrics, metrics_path, resume_from),
        "hyperparameters": hyperparameters(train, args, method, precision, seed),
    }
    plot_loss(metrics_path, out_dir / "loss.png", f"{out_dir.name}: {method} on {data_path.name}")
    write_card(out_dir / "model_card.md", out_dir.name, base_path, record)
    if not train.keep_checkpoints:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    return finish_stage(
        stage,
        config=semantic_dict(config),
        rows={"train_rows": len(examples), "bad_rows": bad.bad},
        models={"base": str(base_path)},
        seeds={"train": seed},
        extra=record,
    )


def run_trains(config: Config, jobs: list[tuple[str | Path, str | Path]], **options) -> Iterator[dict]:
    """Several fine-tunes (data file, output directory) one after the other in this process: the
    imports of torch, transformers and TRL are paid once. Every data file is checked before the first
    model loads; each fine-tune is finished (its manifest written) before the next starts, and the
    memory of one is released before the next loads its model. Yields each stage manifest."""
    check_options(config, options.get("method") or config.train.method, options.get("merge", False))
    for data_path, _ in jobs:
        require_data_file(Path(data_path))  # a missing file is said now, not after the first fine-tune
    for data_path, out_dir in jobs:
        yield run_train(config, data_path, out_dir, **options)
        release_memory()


def release_memory() -> None:
    """Return the last fine-tune's memory (its model, optimizer state and trainer) before the next."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- the steps of a fine-tune


def require_data_file(data_path: Path) -> None:
    if not data_path.is_file():
        raise InputError(
            f"Training data {data_path} not found; pass --data with a chat-messages JSONL "
            f"(runs/<name>/data/C<k>.jsonl) or an Alpaca JSON/JSONL file."
        )


def data_sha256(data_path: Path) -> str:
    require_data_file(data_path)
    return file_sha256(data_path)


def load_tokenizer(base_path: Path, trust_remote_code: bool):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_path, trust_remote_code=trust_remote_code)


def finished_train(out_dir: Path, key_material: dict, main: bool, merge: bool, base_path: Path, tokenizer) -> dict:
    """The manifest of a fine-tune already done with this key; --merge adds merged/ when it is missing."""
    if not main:
        return {}
    stage = begin_stage(out_dir.parent, out_dir.name, key_material)  # says it is skipped
    manifest = read_json(stage.manifest_path)
    if merge and not (out_dir / "merged" / "config.json").is_file():
        merge_adapter(base_path, out_dir / "adapter", out_dir / "merged", tokenizer)
        manifest.setdefault("outputs", {})["merged"] = str(out_dir / "merged")
        write_json(stage.manifest_path, manifest)
    return manifest


def read_examples(data_path: Path, tokenizer, template: str, train) -> tuple[list[dict], BadRows]:
    """The tokenized rows, bad ones counted; with on_bad_rows=fail a bad row raises here."""
    rows, bad = load_conversations(data_path)
    examples = tokenize_conversations(rows, tokenizer, template, train.response_marker, train.max_length, bad)
    note = check_bad_rows(data_path, bad, len(examples), train.on_bad_rows)
    if note:
        log(note)
    return examples, bad


def open_stage(config: Config, out_dir: Path, key_material: dict, args, ckpt_dir: Path, metrics_path: Path):
    """(stage, checkpoint to resume from or None). Only the main process touches the stage directory
    (stage is None on the others), and the others wait until it has."""
    main = args.process_index == 0
    stage = None
    with args.main_process_first(desc="stage bookkeeping"):
        if main:
            stage = begin_stage(out_dir.parent, out_dir.name, key_material)
    resume_from = last_checkpoint(ckpt_dir)
    if main:
        atomic_write_text(out_dir / "config.yaml", to_yaml(config))
        if resume_from:
            step = int(resume_from.name.split("-")[-1])
            trim_metrics(metrics_path, step)
            log(f"resuming from {resume_from} (step {step})")
        else:
            metrics_path.unlink(missing_ok=True)
    return stage, resume_from


def torch_dtype(precision: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


def lora_config(train):
    from peft import LoraConfig

    targets = train.lora_target_modules
    return LoraConfig(
        r=train.lora_r,
        lora_alpha=train.lora_alpha,
        lora_dropout=train.lora_dropout,
        bias="none",
        task_type="CAUSAL_LM",
        target_modules="all-linear" if targets == ["all-linear"] else targets,
    )


def make_trainer(
    config: Config, base_path: Path, method: str, precision: str, args, examples: list[dict], tokenizer, callbacks
):
    """The base model loaded for `method` and TRL's SFTTrainer around it, on the already tokenized rows
    (input_ids and labels, prompt tokens masked). The trainer holds the only reference to the model."""
    from datasets import Dataset
    from trl import SFTTrainer

    train = config.train
    model = load_model(base_path, method, torch_dtype(precision), config.models.trust_remote_code)
    dataset = Dataset.from_list([{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples])
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(train) if method in ("lora", "qlora") else None,
        callbacks=callbacks,
    )
    log(
        f"{method} fine-tune of {base_path.name} on {len(examples)} rows, {precision}, "
        f"{trainer.args.gradient_accumulation_steps} accumulation step(s) of {train.per_device_train_batch_size}"
    )
    return trainer


# ---------------------------------------------------------------- what a finished fine-tune records


def performance_summary(result, metrics: MetricsCallback, metrics_path: Path, resume_from: Path | None) -> dict:
    records = _read_metrics(metrics_path)
    runtime = metrics.summary.get("train_runtime") or result.metrics.get("train_runtime")
    return {
        "global_step": result.global_step,
        "first_loss": records[0]["loss"] if records else None,
        "last_loss": records[-1]["loss"] if records else None,
        "train_loss": round(result.training_loss, 6),
        "train_runtime_s": runtime,
        "train_tokens_this_process": metrics.max_tokens,
        "train_tokens_per_second": round(metrics.max_tokens / runtime, 1) if runtime else None,
        "resumed_from": resume_from.name if resume_from else None,
        "memory": peak_memory(),
    }


def data_summary(data_path: Path, data_sha: str, bad: BadRows, examples: list[dict], on_bad_rows: str) -> dict:
    return {
        "path": str(data_path),
        "sha256": data_sha,
        "rows": bad.total,
        "trained_rows": len(examples),
        "bad_rows": bad.bad,
        "bad_by_reason": dict(sorted(bad.counts.items())),
        "on_bad_rows": on_bad_rows,
        "tokens": sum(len(e["input_ids"]) for e in examples),
        "trained_tokens": sum(sum(1 for x in e["labels"] if x != -100) for e in examples),
    }


def hyperparameters(train, args, method: str, precision: str, seed: int) -> dict:
    hyper = {
        "learning_rate": train.learning_rate,
        "epochs": train.num_train_epochs,
        "max_steps": train.max_steps,
        "effective_batch_size": train.effective_batch_size,
        "per_device_batch_x_accumulation": f"{train.per_device_train_batch_size} x "
        f"{args.gradient_accumulation_steps} x {args.world_size} process(es)",
        "scheduler": f"{train.lr_scheduler_type}, warmup ratio {train.warmup_ratio}",
        "max_length": train.max_length,
        "packing": train.packing,
        "precision": precision,
        "seed": seed,
    }
    if method != "full":
        hyper["lora"] = (
            f"r={train.lora_r}, alpha={train.lora_alpha}, dropout={train.lora_dropout}, "
            f"targets={','.join(train.lora_target_modules)}"
        )
    return hyper


def write_card(path: Path, name: str, base_path: Path, record: dict) -> None:
    """model_card.md from the manifest's record of the fine-tune, with its name, base and device."""
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    write_model_card(path, {"name": name, "base_model": str(base_path), **record, "device": device})


# ---------------------------------------------------------------- helpers


def sft_args(train, precision: str, seed: int, ckpt_dir: Path):
    """TRL's SFTConfig from the `train` section. Built before the model loads: under DeepSpeed
    ZeRO-3 the arguments must exist first so the weights are sharded as they load."""
    from trl import SFTConfig

    world = int(os.environ.get("WORLD_SIZE", "1"))
    return SFTConfig(
        output_dir=str(ckpt_dir),
        learning_rate=train.learning_rate,
        num_train_epochs=train.num_train_epochs,
        max_steps=train.max_steps,
        per_device_train_batch_size=train.per_device_train_batch_size,
        gradient_accumulation_steps=train.effective_batch_size // (train.per_device_train_batch_size * world),
        lr_scheduler_type=train.lr_scheduler_type,
        warmup_steps=train.warmup_ratio,  # transformers 5: a float below 1 is a share of all steps
        weight_decay=train.weight_decay,
        max_grad_norm=train.max_grad_norm,
        max_length=train.max_length,
        packing=train.packing,
        gradient_checkpointing=train.gradient_checkpointing,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        seed=seed,
        data_seed=seed,
        logging_steps=train.logging_steps,
        save_strategy="steps",
        save_steps=train.save_steps,
        save_total_limit=train.save_total_limit,
        dataloader_num_workers=train.dataloader_num_workers,
        report_to="none",
        disable_tqdm=not sys.stderr.isatty(),
    )


def last_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest complete checkpoint; a half-written one (killed mid-save) has no trainer_state.json."""
    if not ckpt_dir.is_dir():
        return None
    done = [
        p
        for p in ckpt_dir.glob("checkpoint-*")
        if (p / "trainer_state.json").is_file() and p.name.split("-")[-1].isdigit()
    ]
    return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)


def load_model(base_path: Path, method: str, compute_dtype, trust_remote_code: bool):
    import torch
    from transformers import AutoModelForCausalLM

    kwargs = {"trust_remote_code": trust_remote_code}
    if method == "qlora":
        from transformers import BitsAndBytesConfig  # bitsandbytes itself is imported only here, lazily

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
        kwargs["dtype"] = torch.bfloat16
    elif method == "lora":
        kwargs["dtype"] = compute_dtype  # the base is frozen: keep it in the compute dtype
    else:
        kwargs["dtype"] = torch.float32  # full fine-tune: fp32 master weights, mixed precision on top
    return AutoModelForCausalLM.from_pretrained(base_path, **kwargs)


def _base_dtype(base_path: Path):
    import json

    import torch

    config = json.loads((base_path / "config.json").read_text())
    name = config.get("dtype") or config.get("torch_dtype") or "float32"
    return getattr(torch, name, torch.float32)


def merge_adapter(base_path: Path, adapter: Path, target: Path, tokenizer) -> str:
    """Base model (unquantised, its own dtype) + adapter folded in: a plain HF directory for vLLM."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    log(f"merging {adapter} into {base_path.name} -> {target}")
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=_base_dtype(base_path))
    merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
    with atomic_dir(target) as staging:  # a merge killed half-way leaves no merged/ that looks finished
        merged.save_pretrained(staging, safe_serialization=True)
        # the merged copy answers in the layout the adapter was trained in (its template, not the base's)
        tokenizer.chat_template = chat_template_of(adapter) or tokenizer.chat_template
        tokenizer.save_pretrained(staging)
    return str(target)


def _read_metrics(path: Path) -> list[dict]:
    from pipeline.core.jsonio import read_jsonl_tolerant

    return [r for r in read_jsonl_tolerant(path) if "loss" in r]
