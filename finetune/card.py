"""What a fine-tune leaves beside its weights: per-step metrics, a loss curve and a model card.

    evol train --config configs/tiny.yaml --data runs/tiny/data/C1.jsonl --out runs/tiny/sft/C1
    # -> runs/tiny/sft/C1/metrics.jsonl, loss.png, model_card.md

metrics.jsonl holds one line per logged optimizer step ({"step", "epoch", "loss", "learning_rate",
"grad_norm", "num_tokens", ...}); it is appended as training runs, so an interrupted run keeps
its curve, and resuming cuts it back to the checkpoint the trainer restarts from.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path

from transformers import TrainerCallback

from pipeline.core.jsonio import append_jsonl, atomic_write_text, read_jsonl_tolerant, write_jsonl


class MetricsCallback(TrainerCallback):
    """Appends each training log line to metrics.jsonl and keeps the end-of-run summary."""

    def __init__(self, path: Path):
        self.path = path
        self.summary: dict = {}
        self.max_tokens = 0
        self.started = time.time()

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.time()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        # TRL counts the tokens this process has pushed through the model (it restarts at 0 on resume).
        self.max_tokens = max(self.max_tokens, int(logs.get("num_tokens", 0) or 0))
        if "train_runtime" in logs:
            self.summary = dict(logs)
            return
        if "loss" in logs:
            record = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4)}
            record.update({k: (round(v, 6) if isinstance(v, float) else v) for k, v in logs.items()})
            record["elapsed_s"] = round(time.time() - self.started, 2)
            append_jsonl(self.path, [record])


def trim_metrics(path: Path, last_step: int) -> None:
    """Drop logged steps past the checkpoint a resumed run restarts from; they are redone."""
    records = read_jsonl_tolerant(path)
    kept = [r for r in records if r.get("step", 0) <= last_step]
    if len(kept) != len(records):
        write_jsonl(path, kept)


def peak_memory() -> dict:
    """Peak resident memory of this process, and the CUDA peak when a GPU trained."""
    out = {"cpu_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}  # KiB on Linux
    try:
        import torch

        if torch.cuda.is_available():
            out["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    except ImportError:
        pass
    return out


def plot_loss(metrics_path: Path, png_path: Path, title: str) -> bool:
    records = [r for r in read_jsonl_tolerant(metrics_path) if "loss" in r]
    if not records:
        return False
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot([r["step"] for r in records], [r["loss"] for r in records], marker="o" if len(records) < 40 else None)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (assistant tokens)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path)
    plt.close(fig)
    return True


def write_model_card(path: Path, info: dict) -> None:
    """A short card: which data, which base, how it was trained, what came out."""
    hp = info["hyperparameters"]
    data = info["data"]
    perf = info["performance"]
    lines = [
        f"# {info['name']}",
        "",
        f"Supervised fine-tune of `{info['base_model']}` ({info['method']}) with TRL SFTTrainer, "
        f"written by `evol train`.",
        "",
        "## Data",
        f"- file: `{data['path']}`",
        f"- sha256: `{data['sha256']}`",
        f"- rows: {data['rows']} in the file, {data['trained_rows']} trained on, {data['bad_rows']} bad "
        f"({data['bad_by_reason'] or 'none'}; policy `{data['on_bad_rows']}`)",
        f"- tokens per epoch: {data['tokens']} ({data['trained_tokens']} of them assistant tokens in the loss)",
        f"- prompt format: `{info['template']}`"
        + (
            f" with response marker `{info['response_marker']}`"
            if info["template"] == "instruction"
            else " (the base tokenizer's chat template)"
        ),
        "- loss: on assistant tokens only (prompt and template tokens carry label -100)",
        "",
        "## Training",
        *[f"- {key}: {value}" for key, value in hp.items()],
        "",
        "## Result",
        f"- optimizer steps: {perf.get('global_step')}, first loss {perf.get('first_loss')}, "
        f"last loss {perf.get('last_loss')}",
        f"- training throughput: {perf.get('train_tokens_per_second')} tokens/s on {info['device']}",
        f"- peak memory: {', '.join(f'{k} {v}' for k, v in perf.get('memory', {}).items())}",
        f"- outputs: {', '.join(f'`{k}/`' for k in info['outputs'])}; loss curve `loss.png`, "
        f"per-step metrics `metrics.jsonl`",
        "",
    ]
    if "adapter" in info["outputs"]:
        lines += [
            "## Use",
            "Serve the adapter over the base model with vLLM "
            '(`LoRARequest(name, 1, "<this dir>/adapter")`, `enable_lora=True`), or pass '
            "`--merge` to get a full model in `merged/`.",
            "",
        ]
    atomic_write_text(path, "\n".join(lines))
