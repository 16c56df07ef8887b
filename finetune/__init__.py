"""Supervised fine-tuning with TRL: full, LoRA and QLoRA.

    evol train --config configs/tiny.yaml --data runs/tiny/data/C1.jsonl --out runs/tiny/sft/C1

data.py reads and masks the training rows, train.py runs SFTTrainer, card.py writes the metrics,
loss curve and model card; configs/accelerate/ holds the multi-GPU launch files.
"""
