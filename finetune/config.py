"""The `train` section of the config (see pipeline/config.py for how configs load)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainConfig:
    method: str = "lora"  # full | lora | qlora
    learning_rate: float = 2e-5
    num_train_epochs: float = 3.0
    max_length: int = 2048
