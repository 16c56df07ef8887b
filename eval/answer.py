"""`evol answer`: answers on the test set from a base model and its LoRA adapters, one engine for all.

    evol answer --model smollm2-135m --label base --adapter C1=runs/tiny/sft/C1/adapter \\
        --out runs/tiny/answers

Writes `<out>/<label>/answers.jsonl` (one line per test item, in test set order:
`{"id", "label", "instruction", "category", "difficulty", "reference", "answer", "finish_reason",
"prompt_tokens", "completion_tokens", "model", "adapter", "seed"}`) and `<out>/<label>/manifest.json`
last, with the generation settings and the test set hash. Every label is a stage of its own: a
finished one is skipped, an interrupted one resumes from the chunks it already appended. All labels
share one vLLM engine (adapters served through vLLM's LoRA support), so an ablation over four
adapters costs one engine start, not five.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import Config, semantic_dict
from pipeline.core.jsonio import InputError, read_json
from pipeline.core.ledger import Ledger
from pipeline.core.manifest import Stage, begin_stage, file_hash, finish_stage
from pipeline.core.models import content_hash
from pipeline.core.seeds import derive_seed
from pipeline.core.testset import TestItem
from pipeline.engine import (
    ChatRequest,
    ChatResult,
    ChunkStats,
    Engine,
    generate_in_chunks,
    model_identity,
    server_urls,
)

ANSWERS_FILE = "answers.jsonl"
# Labels become directory names and `A__vs__B` judge names: keep them plain.
LABEL_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_label(label: str, option: str) -> str:
    if not LABEL_PATTERN.match(label) or "__" in label:
        raise InputError(
            f"{option}: label {label!r} must be letters, digits, '.', '-' or '_' "
            f"(no '__', no leading punctuation), since it names a directory."
        )
    return label


def parse_adapters(specs: tuple[str, ...] | list[str], max_rank: int) -> dict[str, Path]:
    """`LABEL=PATH` pairs to {label: adapter dir}, each checked to be a PEFT LoRA adapter vLLM can serve."""
    adapters: dict[str, Path] = {}
    for spec in specs:
        label, sep, raw = spec.partition("=")
        if not sep or not label.strip() or not raw.strip():
            raise InputError(f"--adapter {spec!r} must look like LABEL=PATH, e.g. C1=runs/tiny/sft/C1/adapter.")
        label = check_label(label.strip(), "--adapter")
        if label in adapters:
            raise InputError(f"--adapter: label {label!r} is given twice.")
        path = Path(raw.strip()).expanduser()
        config_file = path / "adapter_config.json"
        if not config_file.is_file():
            raise InputError(
                f"--adapter {label}: {path} is not a PEFT adapter directory (no adapter_config.json); "
                f"for a full or merged model answer with --model instead."
            )
        adapter_config = read_json(config_file)
        if adapter_config.get("peft_type", "LORA") != "LORA":
            raise InputError(
                f"--adapter {label}: {path} is a {adapter_config.get('peft_type')} adapter; "
                f"vLLM serves LoRA adapters only (merge it and pass the merged model with --model)."
            )
        rank = int(adapter_config.get("r") or 0)
        if rank > max_rank:
            raise InputError(
                f"--adapter {label}: LoRA rank {rank} exceeds engine.max_lora_rank={max_rank}; "
                f"raise it with --set engine.max_lora_rank={rank}."
            )
        adapters[label] = path.resolve()
    return adapters


def generation_settings(config: Config) -> dict:
    """What the answers depend on besides model and test set; recorded in every manifest."""
    e, v = config.eval, config.engine
    greedy = e.answer_temperature == 0
    return {
        "temperature": e.answer_temperature,
        "top_p": 1.0 if greedy else e.answer_top_p,  # top_p means nothing for greedy decoding
        "max_tokens": e.answer_max_tokens,
        "max_model_len": v.max_model_len,
        "dtype": v.dtype,
        "seed": config.run.seed,
        "system_prompt": e.system_prompt,
        "chat_template": "the model's own",
    }


@dataclass
class AnswerJob:
    label: str
    adapter: str | None  # adapter name given to the engine; None: the base model
    adapter_path: Path | None
    stage: Stage
    ledger: Ledger  # the label's answers.jsonl: what an interrupted run of it already holds

    @property
    def path(self) -> Path:
        return self.ledger.path


@dataclass
class AnswerSet:
    """Prompts every label answers into `<out_dir>/<label>/answers.jsonl`: the test set, or a prompt
    set of the verified instruction following (eval/verify/answers.py). One engine answers them all."""

    name: str  # progress bar and summary prefix: "answer", "ifeval", ...
    items: list[TestItem]
    out_dir: Path
    source: dict  # where the items come from: part of each label's stage key, e.g. {"testset": {...}}
    settings: dict  # generation_settings(config), max_tokens as this set asks
    # The fields one answer record keeps besides the generation's: the test set keeps the item and
    # its `answer`; a prompt set its `id` and `text`, as `evol generate` writes.
    record: Callable[[TestItem, str], dict]
    jobs: list[AnswerJob] = field(default_factory=list)

    @property
    def pending(self) -> list[AnswerJob]:
        return [job for job in self.jobs if not job.stage.done]


def _hash_of(path: Path) -> str:
    return content_hash(path) if path.is_dir() else str(path)


def testset_answers(config: Config, out_dir: Path, testset_file: Path) -> AnswerSet:
    """The test set as `evol answer` answers it: eval.limit items, every item's fields kept."""
    from pipeline.core.testset import load_testset

    items = load_testset(testset_file, config.eval)
    testset = {
        "path": str(testset_file),
        "hash": file_hash(testset_file),
        "items": len(items),
        "limit": config.eval.limit,
        "mapping": {k: v for k, v in semantic_dict(config.eval).items() if k.endswith("_field")},
    }

    def record(item: TestItem, text: str) -> dict:
        return {**item.to_dict(), "answer": text}

    return AnswerSet("answer", items, out_dir, {"testset": testset}, generation_settings(config), record)


def plan_answers(
    answers: AnswerSet,
    model_path: Path,
    base_label: str,
    adapters: dict[str, Path],
    adapters_only: bool = False,
    model_id: str | None = None,
) -> list[AnswerJob]:
    """One job per label; finished labels come back done, partial ones with what they already hold.
    `model_id`: what the key holds of the model (`model_identity`; default: its content hash)."""
    if adapters_only and not adapters:
        raise InputError("--adapters-only needs at least one --adapter LABEL=PATH.")
    check_label(base_label, "--label")
    if not adapters_only and base_label in adapters:
        raise InputError(f"--label {base_label!r} is also an --adapter label; give the base model another --label.")
    common = {**answers.source, "model": model_id or _hash_of(model_path), "generation": answers.settings}
    targets = [] if adapters_only else [(base_label, None, None)]
    targets += [(label, label, path) for label, path in adapters.items()]
    wanted = {item.id for item in answers.items}
    answers.jobs = []
    for label, adapter, path in targets:
        material = {**common, "adapter": _hash_of(path) if path else None}
        stage = begin_stage(answers.out_dir, label, material)
        ledger = Ledger(stage.dir / ANSWERS_FILE, keep=lambda r: r.get("id") in wanted)  # items dropped: ignored
        if not stage.done:
            ledger.read()  # before the model loads
        answers.jobs.append(AnswerJob(label, adapter, path, stage, ledger))
    return answers.jobs


def answer_messages(item: TestItem, system_prompt: str) -> list[dict]:
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + [{"role": "user", "content": item.instruction}]


def _requests(answers: AnswerSet, index: int, config: Config) -> Iterator[ChatRequest]:
    """What the set's jobs still miss; ids "<set index>\x1f<label>\x1f<item id>"."""
    settings = answers.settings
    for job in answers.pending:
        for item in answers.items:
            if not job.ledger.is_left(item.id):
                continue
            yield ChatRequest(
                id=f"{index}\x1f{job.label}\x1f{item.id}",
                messages=answer_messages(item, settings["system_prompt"]),
                max_tokens=settings["max_tokens"],
                temperature=settings["temperature"],
                top_p=settings["top_p"],
                seed=derive_seed(config.run.seed, item.id, "answer"),
                adapter=job.adapter,
            )


def run_answers(engine: Engine, sets: list[AnswerSet], config: Config, model_path: Path) -> list[dict[str, dict]]:
    """Answer everything the sets' jobs still miss in one stream of mixed chunks (the sets share
    batches), then close each finished label of each set."""
    by_id = [{item.id: item for item in answers.items} for answers in sets]
    job_of = [{job.label: job for job in answers.jobs} for answers in sets]

    def save(chunk: list[ChatRequest], results: list[ChatResult]) -> None:
        grouped: dict[tuple[int, str], list[dict]] = {}
        for request, result in zip(chunk, results):
            index, label, item_id = request.id.split("\x1f", 2)
            index = int(index)
            job = job_of[index][label]
            record = {
                **sets[index].record(by_id[index][item_id], result.text.strip()),
                "label": label,
                "finish_reason": result.finish_reason,
                "prompt_tokens": result.prompt_tokens,
                "completion_tokens": result.completion_tokens,
                "model": str(model_path),
                "adapter": str(job.adapter_path) if job.adapter_path else None,
                "seed": request.seed,
            }
            grouped.setdefault((index, label), []).append(record)
        for (index, label), records in grouped.items():
            job_of[index][label].ledger.append(records)

    total = sum(len(answers.items) - len(job.ledger.done) for answers in sets for job in answers.pending)
    requests = (request for index, answers in enumerate(sets) for request in _requests(answers, index, config))
    chunk_size = config.eval.chunk_size or config.engine.chunk_size
    desc = "+".join(answers.name for answers in sets if answers.pending)
    stats = generate_in_chunks(engine, requests, chunk_size, save, total=total, desc=desc)
    return [_finish(answers, config, model_path, stats) for answers in sets]


def _finish(answers: AnswerSet, config: Config, model_path: Path, stats: ChunkStats) -> dict[str, dict]:
    """Each label's answers in input order and its manifest; a summary per label."""
    summaries = {}
    for job in answers.jobs:
        if job.stage.done:
            summaries[job.label] = {"skipped": True, "dir": str(job.stage.dir)}
            continue
        records = job.ledger.finish(
            item.id for item in answers.items
        )  # input order: a resumed run appended out of order
        counts = {
            "answers": len(records),
            "empty": sum(not r.get("answer", r.get("text")) for r in records),
            "too_long": sum(r["finish_reason"] == "too_long" for r in records),
            "hit_max_tokens": sum(r["finish_reason"] == "length" for r in records),
            "completion_tokens": sum(r["completion_tokens"] for r in records),
        }
        finish_stage(
            job.stage,
            config=semantic_dict(config.eval),
            rows=counts,
            models={"model": str(model_path), "adapter": str(job.adapter_path) if job.adapter_path else None},
            seeds={"run": config.run.seed},
            extra={
                "label": job.label,
                **server_urls(config, ("base",)),
                "generation": answers.settings,
                **answers.source,
                # the engine call that answered every set of this model at once
                "throughput": {
                    "requests": stats.requests,
                    "seconds": round(stats.seconds, 1),
                    "output_tokens_per_second": round(stats.tokens_per_second, 1),
                },
            },
        )
        summaries[job.label] = {"skipped": False, "dir": str(job.stage.dir), **counts}
        if counts["empty"]:
            print(
                f"[{answers.name}] {job.label}: {counts['empty']} of {len(records)} answers are empty "
                f"({counts['too_long']} prompts too long for the context)",
                file=sys.stderr,
            )
    return summaries


def answer_all(
    config: Config, model_path: Path, sets: list[AnswerSet], engine: Engine | None = None
) -> list[dict[str, dict]]:
    """Every planned set with one engine, started only when some label of some set still has work;
    one summary per set, {label: summary}."""
    if not any(answers.pending for answers in sets):
        return [{job.label: {"skipped": True, "dir": str(job.stage.dir)} for job in answers.jobs} for answers in sets]
    own_engine = engine is None
    if own_engine:
        from pipeline.engine import make_engine

        adapters = {job.label: job.adapter_path for a in sets for job in a.pending if job.adapter_path}
        engine = make_engine(config, model_path, adapters=adapters, role="base")
    try:
        return run_answers(engine, sets, config, model_path)
    finally:
        if own_engine:
            engine.close()


def answer_testset(
    config: Config,
    out_dir: str | Path,
    model_path: str | Path,
    testset_file: str | Path | None = None,
    adapters: dict[str, Path] | None = None,
    base_label: str | None = None,
    adapters_only: bool = False,
    engine: Engine | None = None,
) -> dict[str, dict]:
    """The test set's answers of one model and its adapters (`evol answer` without prompt sets)."""
    from pipeline.core.paths import testset_path

    config.validate("engine", "eval")  # the sections this stage reads (pipeline/config/)
    testset_file = Path(testset_file) if testset_file else testset_path(config.eval.testset)
    model_path = Path(model_path)
    answers = testset_answers(config, Path(out_dir), testset_file)
    model_id = model_identity(config, model_path, "base")
    plan_answers(answers, model_path, base_label or model_path.name, adapters or {}, adapters_only, model_id)
    return answer_all(config, model_path, [answers], engine)[0]
