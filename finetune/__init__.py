"""Supervised fine-tuning with TRL: full, LoRA and QLoRA."""
