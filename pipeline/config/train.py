"""The `train` section of the config (see pipeline/config/__init__.py for how configs load).

    evol train --config configs/tiny.yaml --data runs/tiny/data/C1.jsonl --out runs/tiny/sft/C1 \
        --set train.learning_rate=1e-4

Hyperparameters that change what the model learns are semantic (they key the stage manifest);
batch size per device, checkpoint cadence and logging cadence are throughput knobs, so moving
them never invalidates a finished fine-tune. The recipe fixes the effective batch instead;
gradient accumulation is derived from it: effective_batch_size / (per-device batch x processes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.config.fields import throughput

METHODS = ("full", "lora", "qlora")
TEMPLATES = ("auto", "chat", "instruction")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BAD_ROW_POLICIES = ("skip", "fail")


@dataclass
class TrainConfig:
    method: str = "lora"  # full | lora | qlora
    # How a conversation becomes tokens. auto: the base tokenizer's chat template when it has one,
    # otherwise `instruction` (the prompt, then `response_marker`, then the answer and EOS).
    template: str = "auto"
    response_marker: str = "### Response:"
    on_bad_rows: str = "skip"  # skip: drop them and report counts; fail: stop before any model loads

    learning_rate: float = 2e-5
    num_train_epochs: float = 3.0
    max_steps: int = -1  # > 0 stops after that many optimizer steps (smoke tests)
    max_length: int = 2048  # tokens per example; longer rows are bad rows, never silently truncated
    effective_batch_size: int = 8  # examples per optimizer step, over all devices and accumulation
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    packing: bool = False
    seed: int | None = None  # None: run.seed
    precision: str = "auto"  # auto: bf16 (or fp16) with CUDA, fp32 on CPU

    # LoRA / QLoRA
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=lambda: ["all-linear"])

    # Throughput knobs: speed and memory only.
    per_device_train_batch_size: int = throughput(4)
    gradient_checkpointing: bool = throughput(False)
    save_steps: int = throughput(50)  # checkpoint cadence; an interrupted run resumes from the last one
    save_total_limit: int = throughput(2)
    logging_steps: int = throughput(1)
    keep_checkpoints: bool = throughput(False)  # False: delete checkpoints/ once the outputs are saved
    dataloader_num_workers: int = throughput(0)
