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

from pipeline.config.checks import ConfigError, at_least, between, not_empty, one_of, positive
from pipeline.config.fields import throughput

METHODS = ("full", "lora", "qlora")
TEMPLATES = ("auto", "chat", "instruction")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BAD_ROW_POLICIES = ("skip", "fail")
# transformers' SchedulerType values (tests/test_config.py checks this list against the installed
# version); kept here so a typo fails at once without importing transformers.
SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "reduce_lr_on_plateau",
    "cosine_with_min_lr",
    "cosine_warmup_with_min_lr",
    "warmup_stable_decay",
)


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

    def validate(self) -> None:
        """Values no fine-tune can run with; `evol train` adds the checks that need its flags or hardware."""
        one_of("train.method", self.method, METHODS)
        one_of("train.template", self.template, TEMPLATES)
        one_of("train.precision", self.precision, PRECISIONS)
        one_of("train.on_bad_rows", self.on_bad_rows, BAD_ROW_POLICIES)
        one_of("train.lr_scheduler_type", self.lr_scheduler_type, SCHEDULERS)
        if self.template != "chat":
            not_empty("train.response_marker", self.response_marker, "the line that separates prompt and answer")
        positive("train.learning_rate", self.learning_rate)
        if self.max_steps <= 0:
            positive("train.num_train_epochs", self.num_train_epochs)
        at_least("train.max_steps", self.max_steps, -1, " (-1: train for num_train_epochs)")
        at_least("train.max_length", self.max_length, 16, " tokens")
        at_least("train.effective_batch_size", self.effective_batch_size, 1)
        at_least("train.per_device_train_batch_size", self.per_device_train_batch_size, 1)
        if self.effective_batch_size % self.per_device_train_batch_size:
            raise ConfigError(
                f"train.effective_batch_size ({self.effective_batch_size}) must be a multiple of "
                f"train.per_device_train_batch_size ({self.per_device_train_batch_size}); change one of them."
            )
        between("train.warmup_ratio", self.warmup_ratio, 0, 1, high_open=True)
        at_least("train.weight_decay", self.weight_decay, 0)
        at_least("train.max_grad_norm", self.max_grad_norm, 0, " (0: no clipping)")
        if self.seed is not None:
            at_least("train.seed", self.seed, 0)
        at_least("train.lora_r", self.lora_r, 1)
        positive("train.lora_alpha", self.lora_alpha)
        between("train.lora_dropout", self.lora_dropout, 0, 1, high_open=True)
        if not self.lora_target_modules or not all(str(m).strip() for m in self.lora_target_modules):
            raise ConfigError(
                f"train.lora_target_modules must name at least one module (or all-linear), not "
                f"{self.lora_target_modules!r}."
            )
        for name in ("save_steps", "save_total_limit", "logging_steps"):
            at_least(f"train.{name}", getattr(self, name), 1)
        at_least("train.dataloader_num_workers", self.dataloader_num_workers, 0)
