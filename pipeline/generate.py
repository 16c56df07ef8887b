"""`evol generate`: answer a JSONL of prompts with the local engine; the smoke test of the engine.

    evol generate --model smollm2-135m --in prompts.jsonl --out answers.jsonl

Input: one `{"id": ..., "prompt": "..."}` or `{"id": ..., "messages": [...]}` per line (or a JSON
array of them).
Output: one `{"id", "text", "prompt_tokens", "completion_tokens", "finish_reason", "model", "seed"}`
per input line, in input order. Finished chunks are appended as they complete, so a killed run
rerun with the same command only generates what is missing. The output's settings are kept in
`<out>.meta.json`; an existing output from other settings is refused, never overwritten.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config import Config, stable_hash
from pipeline.core.chat import messages_problem
from pipeline.core.jsonio import InputError, iter_records, read_json, write_json
from pipeline.core.ledger import Ledger
from pipeline.core.seeds import derive_seed
from pipeline.engine import ChatRequest, Engine, generate_in_chunks


def load_prompts(path: str | Path) -> list[dict]:
    """Validate the whole file before any model loads: every problem names the file and line."""
    rows, seen = [], {}
    for lineno, record in iter_records(path):
        where = f"{path}:{lineno}"
        if "id" not in record or record["id"] in (None, ""):
            raise InputError(f'{where}: missing "id".')
        item_id = str(record["id"])
        if item_id in seen:
            raise InputError(f"{where}: duplicate id {item_id!r} (first seen on line {seen[item_id]}).")
        seen[item_id] = lineno
        if "messages" in record:
            messages = record["messages"]
            problem = messages_problem(messages)
            if problem:
                raise InputError(f"{where}: {problem}.")
            if not any(m["content"].strip() for m in messages):
                raise InputError(f"{where}: all messages are empty.")
        elif "prompt" in record:
            prompt = record["prompt"]
            if not isinstance(prompt, str) or not prompt.strip():
                raise InputError(f"{where}: empty prompt.")
            messages = [{"role": "user", "content": prompt}]
        else:
            raise InputError(f'{where}: needs a "prompt" string or a "messages" list.')
        rows.append({"id": item_id, "messages": messages})
    if not rows:
        raise InputError(f"{path}: no prompts in the file.")
    return rows


def settings_of(config: Config, model_path: str) -> dict:
    e = config.engine
    return {
        "model": model_path,
        "seed": config.run.seed,
        "max_tokens": e.max_tokens,
        "temperature": e.temperature,
        "top_p": e.top_p,
        "max_model_len": e.max_model_len,
        "dtype": e.dtype,
    }


def check_resumable(out: Path, settings: dict) -> Ledger:
    """The output's ledger, holding what an earlier run with the same settings finished (read now,
    before any model loads); an output from other settings is refused."""
    meta_path = Path(f"{out}.meta.json")
    if not out.exists():
        write_json(meta_path, settings)
        return Ledger(out)
    if not meta_path.exists() or read_json(meta_path) != settings:
        raise InputError(
            f"{out} already exists and was not written with these settings; "
            f"pass another --out or remove it (nothing was overwritten)."
        )
    return Ledger(out).read()


def run_generate(
    engine: Engine, rows: list[dict], out: Path, config: Config, settings: dict, finished: Ledger
) -> dict:
    """Generate what `finished` (`check_resumable`'s ledger of `out`) lacks."""
    todo = finished.left(rows)
    requests = (
        ChatRequest(id=row["id"], messages=row["messages"], seed=derive_seed(config.run.seed, row["id"], "generate"))
        for row in todo
    )

    def save(chunk: list[ChatRequest], results) -> None:
        records = [
            {
                "id": result.id,
                "text": result.text,
                "prompt_tokens": result.prompt_tokens,
                "completion_tokens": result.completion_tokens,
                "finish_reason": result.finish_reason,
                "model": engine.model_name,
                "seed": request.seed,
            }
            for request, result in zip(chunk, results)
        ]
        finished.append(records)

    stats = generate_in_chunks(engine, requests, config.engine.chunk_size, save, total=len(todo), desc="generate")
    finished.finish(row["id"] for row in rows)  # once, in input order (a resumed run appended out of order)
    return {
        "requests": len(rows),
        "generated": stats.requests,
        "reused": len(rows) - len(todo),
        "completion_tokens": stats.completion_tokens,
        "too_long": stats.too_long,
        "seconds": round(stats.seconds, 1),
        "tokens_per_second": round(stats.tokens_per_second, 1),
        "settings_hash": stable_hash(settings),
    }
