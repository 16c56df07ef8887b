"""The machinery under each evolution step: one engine alive at a time, chunked resumable
generation and chained (overlapped) generation.

    evol evolve --config configs/tiny.yaml --out runs/tiny      # every step of every round uses it

A step (evolve, check, answer) appends its finished records to `evolve/work/round_<k>.<step>.jsonl`
and its timing to `round_<k>.timing.jsonl`; a rerun reads what is there and sends only the missing
requests, so nothing is generated twice and nothing finished is lost. `run_step` runs one step
over the pool in chunks; `run_chained` runs every step at once on one engine, each item's next
request sent as soon as its last one finished (`Engine.stream` with a follow-up: on the local
engine's continuous batch, or on Ray on every replica at once).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.jsonio import append_jsonl, read_jsonl_tolerant
from pipeline.core.ledger import Ledger
from pipeline.engine import DEFAULT_WINDOW, Block, ChatRequest, ChatResult, Engine, FollowUp, generate_in_chunks


@dataclass
class ModelSet:
    """Who plays each role: the name recorded in outputs, a content hash for the stage key, and a
    factory that starts the engine for a role (called lazily, so a finished run starts none)."""

    names: dict[str, str]
    hashes: dict[str, str]
    make: Callable[[str], Engine]

    def identity(self, role: str) -> tuple[str, str]:
        return self.names[role], self.hashes[role]


class Engines:
    """Keeps at most one engine alive. Asking for a role played by another model closes the current
    engine first, so an evolver and a different responder never share accelerator memory."""

    def __init__(self, models: ModelSet):
        self.models = models
        self.engine: Engine | None = None
        self.identity: tuple[str, str] | None = None

    def get(self, role: str) -> Engine:
        wanted = self.models.identity(role)
        if self.engine is not None and wanted == self.identity:
            return self.engine
        if self.engine is not None:
            print(f"[evolve] switching engine from {self.identity[0]} to {wanted[0]} for the {role}", file=sys.stderr)
        self.close()
        self.engine = self.models.make(role)
        self.identity = wanted
        return self.engine

    def close(self) -> None:
        if self.engine is None:
            return
        # VLLMEngine.close stops vLLM's engine process and frees its memory before the next start.
        self.engine.close()
        self.engine = None
        self.identity = None


class TimedEngine:
    """Wraps an engine to measure its generation time for the persisted timing log: `last_seconds`
    is the wait for the last block `stream` handed back (a whole chunk on a local engine, a block of a
    Ray job, start-up included), `seconds` the waits of all, so a step's timing rows sum to the
    engine's time."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.model_name = engine.model_name
        self.last_seconds = 0.0
        self.seconds = 0.0

    def stream(
        self, requests: Iterable[ChatRequest], follow_up: FollowUp | None = None, window: int = DEFAULT_WINDOW
    ) -> Iterator[Block]:
        blocks = self.engine.stream(requests, follow_up, window)
        while True:
            started = time.perf_counter()
            try:
                block = next(blocks)
            except StopIteration:
                return
            finally:
                self.last_seconds = time.perf_counter() - started
                self.seconds += self.last_seconds
            yield block

    def close(self) -> None:
        self.engine.close()


def step_record(request: ChatRequest, result: ChatResult) -> dict:
    return {
        "id": request.id,
        "text": result.text,
        "finish_reason": result.finish_reason,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "seed": request.seed,
    }


def load_step(path: Path) -> dict[str, dict]:
    """Finished records of a step by id (a torn last line from a crash is dropped)."""
    return Ledger(path).done


def run_step(
    engines: Engines,
    role: str,
    step: str,
    label: str,
    out: Path,
    timing: Path,
    requests: Iterable[ChatRequest],
    total: int,
    chunk_size: int,
    passes: Callable[[dict], bool],
) -> None:
    """Generate `requests` in chunks, appending each chunk to `out` as soon as it is done.

    `passes` says whether a finished record survives this step; its share is the bar's kept%.
    """
    if total == 0:
        return  # nothing left: do not even start an engine
    timed = TimedEngine(engines.get(role))
    ledger = Ledger(out)  # appends only: the caller read what is done
    seen = [0, 0]

    def save(chunk: list[ChatRequest], results: list[ChatResult]) -> None:
        records = [step_record(request, result) for request, result in zip(chunk, results)]
        ledger.append(records)
        append_jsonl(
            timing,
            [
                {
                    "step": step,
                    "requests": len(records),
                    "seconds": round(timed.last_seconds, 3),
                    "prompt_tokens": sum(r["prompt_tokens"] for r in records),
                    "completion_tokens": sum(r["completion_tokens"] for r in records),
                }
            ],
        )
        seen[0] += len(records)
        seen[1] += sum(passes(r) for r in records)

    generate_in_chunks(
        timed,
        requests,
        chunk_size,
        save,
        total=total,
        desc=label,
        postfix=lambda: {"kept%": f"{100 * seen[1] / max(seen[0], 1):.0f}"},
    )


class _ChainLog:
    """Buffers the records of chained steps and appends them every `every` records (or `seconds`
    seconds), in step order, so a persisted record's predecessors are always persisted too.

    Steps overlap in one engine, so the engine time between two flushes is shared out to the steps
    by their output tokens; the timing rows' seconds still sum to the engine time exactly."""

    def __init__(self, outs: dict[str, Path], timing: Path, timed: TimedEngine, every: int, seconds: float = 10.0):
        self.outs, self.timing, self.timed = outs, timing, timed
        self.ledgers = {step: Ledger(path) for step, path in outs.items()}
        self.every, self.seconds = every, seconds
        self.buffer: dict[str, list[dict]] = {step: [] for step in outs}
        self.engine_mark, self.wall_mark = timed.seconds, time.monotonic()

    def add(self, step: str, record: dict) -> None:
        self.buffer[step].append(record)
        if sum(map(len, self.buffer.values())) >= self.every or time.monotonic() - self.wall_mark >= self.seconds:
            self.flush()

    def flush(self) -> None:
        engine_seconds = self.timed.seconds - self.engine_mark
        self.engine_mark, self.wall_mark = self.timed.seconds, time.monotonic()
        rows = {step: records for step, records in self.buffer.items() if records}
        if not rows:
            return
        tokens = {step: sum(r["completion_tokens"] for r in records) for step, records in rows.items()}
        weight = tokens if sum(tokens.values()) else {step: len(records) for step, records in rows.items()}
        for step, records in rows.items():
            self.ledgers[step].append(records)
        append_jsonl(
            self.timing,
            [
                {
                    "step": step,
                    "requests": len(records),
                    "seconds": round(engine_seconds * weight[step] / sum(weight.values()), 3),
                    "prompt_tokens": sum(r["prompt_tokens"] for r in records),
                    "completion_tokens": sum(r["completion_tokens"] for r in records),
                    "overlapped": True,
                }
                for step, records in rows.items()
            ],
        )
        self.buffer = {step: [] for step in self.outs}


def run_chained(
    engines: Engines,
    role: str,
    label: str,
    outs: dict[str, Path],
    timing: Path,
    first: Iterable[ChatRequest],
    follow_up: FollowUp,
    total: int,
    chunk_size: int,
    passes: dict[str, Callable[[dict], bool]],
    on_record: Callable[[ChatRequest, dict, bool], None] = lambda request, record, last: None,
) -> None:
    """Run chains of requests (one chain per pool item) on one engine, up to `chunk_size` in flight.

    `first` holds each chain's first missing request, its step in `request.purpose`; `follow_up`
    gets a finished request and its result and returns the chain's next request, or None when the
    chain is done. The engine's `stream` runs the chains (here on the local engine, on its replicas
    on Ray) and hands back finished pairs, a chain's in order. Records go to `outs[step]` as in
    `run_step`, and each to `on_record(request, record, last)` after its step's `passes` counted it
    (`last`: the chain ended with it, as `follow_up` says); the bar counts finished chains.
    """
    if total == 0:
        return
    from tqdm import tqdm

    timed = TimedEngine(engines.get(role))
    log = _ChainLog(outs, timing, timed, every=chunk_size)
    seen = {step: [0, 0] for step in outs}
    tokens = [0]
    bar = tqdm(total=total, desc=label, unit="item", dynamic_ncols=True, mininterval=1.0)

    def finished(request: ChatRequest, result: ChatResult, last: bool) -> None:
        record = step_record(request, result)
        log.add(request.purpose, record)
        seen[request.purpose][0] += 1
        seen[request.purpose][1] += passes[request.purpose](record)
        tokens[0] += result.completion_tokens
        on_record(request, record, last)
        bar.update(int(last))

    def show() -> None:
        bar.set_postfix(
            {
                "tok/s": f"{tokens[0] / max(timed.seconds, 1e-9):.0f}",
                **{f"{step} kept%": f"{100 * n[1] / n[0]:.0f}" for step, n in seen.items() if n[0]},
            }
        )

    try:
        for pairs in timed.stream(first, follow_up, chunk_size):
            for request, result in pairs:
                finished(request, result, follow_up(request, result) is None)
            show()
    finally:
        log.flush()  # finished records survive an error in a later request too
        bar.close()


def timing_totals(path: Path) -> dict[str, dict]:
    """Requests, seconds and tokens per step, summed over every process that worked on the round."""
    totals: dict[str, dict] = {}
    for row in read_jsonl_tolerant(path):
        step = totals.setdefault(
            row["step"], {"requests": 0, "seconds": 0.0, "prompt_tokens": 0, "completion_tokens": 0}
        )
        for key in ("requests", "seconds", "prompt_tokens", "completion_tokens"):
            step[key] += row[key]
    for step in totals.values():
        step["seconds"] = round(step["seconds"], 2)
        step["tokens_per_second"] = round(step["completion_tokens"] / step["seconds"], 1) if step["seconds"] else 0.0
    return totals
