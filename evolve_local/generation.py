"""How a round's attempts are generated: the evolution's state (`Run`), the operation and the next
missing request of each attempt, and the two schedules (chained on one engine, or step by step).

    evol evolve --config configs/tiny.yaml --out runs/tiny      # evolve.py runs a round with these

An attempt's steps are evolve, check, answer, each needing the one before; an attempt stops at the
first step whose rule fires (eliminate.step_problem), and the progress bar counts with that rule.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from evolve_local import eliminate as rules
from evolve_local.dedup import NearDuplicates, TestSetFilter
from evolve_local.method import METHOD_OPERATION, Method
from evolve_local.prompts import equality_prompt, evolution_prompt, messages
from evolve_local.steps import Engines, ModelSet, run_chained, run_step, step_record
from pipeline.config import Config
from pipeline.config.evolve import OPERATIONS, EvolveConfig
from pipeline.core.jsonio import iter_jsonl
from pipeline.core.ledger import Ledger
from pipeline.core.paths import RunDir
from pipeline.core.scratch import Scratch, ScratchRecords
from pipeline.core.seeds import derive_seed
from pipeline.engine import ChatRequest, ChatResult

# ---------------------------------------------------------------- the run


@dataclass
class Run:
    """One evolution: its config, who plays each role, the live engine, the two filters and its files."""

    config: Config
    models: ModelSet
    engines: Engines
    stage_dir: Path
    data_dir: Path
    dedup: NearDuplicates
    tests: TestSetFilter
    scratch: Scratch  # where the near-duplicate index and a round's finished records are looked up
    method: Method | None = None  # evolve.method (evolve_local/method.py); None: the six operations

    @property
    def seed(self) -> int:
        return self.config.run.seed

    def work(self, k: int, step: str) -> Path:
        return self.stage_dir / "work" / f"round_{k}.{step}.jsonl"

    def pool(self, k: int) -> Path:
        return RunDir(self.stage_dir.parent).pool(k)  # written last: its presence = round done

    def finished(self, k: int, step: str) -> ScratchRecords:
        """The step's finished records of round k by attempt id, from its work file: in the scratch
        file, so memory does not grow with the pool."""
        return Ledger(self.work(k, step), into=self.scratch.records(f"round_{k}_{step}")).done

    def round_stats(self, k: int) -> Path:
        return self.stage_dir / "work" / f"stats_{k}.json"

    def training_set(self, k: int) -> Path:
        return self.data_dir / f"C{k}.jsonl"


# ---------------------------------------------------------------- one attempt of round k >= 1


def choose_operation(run_seed: int, item_id: str, k: int, weights: dict[str, float]) -> str:
    rng = random.Random(derive_seed(run_seed, item_id, k, "operation"))
    ops = [op for op in OPERATIONS if weights.get(op, 0) > 0]
    return rng.choices(ops, weights=[weights[op] for op in ops])[0]


def attempt_id(item: dict, k: int) -> str:
    return f"{item['root_id']}@r{k}"  # one attempt per root per round: the pool holds one item per root


STEPS = rules.STEPS
ROLE_OF = {"evolve": "evolver", "check": "equality", "answer": "responder"}


def step_problem(run: Run, item: dict, step: str, result: dict) -> tuple[str, str] | None:
    """The one survival rule (eliminate.step_problem): the files, the next request and the bar ask it."""
    method_text = run.method.text if run.method else None
    return rules.step_problem(step, item["instruction"], result, run.config.evolve.refusal_max_words, method_text)


@dataclass(frozen=True)
class Attempts:
    """How round k's attempts go on: the next missing step of an attempt and its request.

    It holds only plain values, and `follow_up` reads nothing but the request's `context` (the pool
    item and the attempt's finished records), so on Ray it travels to the engine replicas and each
    chains its attempts there (`Engine.stream` with this follow-up), exactly as the local engine chains them."""

    evolve: EvolveConfig
    seed: int
    k: int
    method: Method | None = None  # evolve.method's file, read on the driver; None: the six operations

    def operation(self, item: dict) -> str:
        """What the attempt's evolution prompt is: a seeded choice of operation, or the method."""
        if self.method is not None:
            return METHOD_OPERATION
        return choose_operation(self.seed, item["id"], self.k, self.evolve.operation_weights)

    def evolution_prompt(self, item: dict) -> str:
        if self.method is not None:
            return self.method.prompt(item["instruction"])
        return evolution_prompt(self.operation(item), item["instruction"])

    def next_step(self, item: dict, results: dict[str, dict]) -> str | None:
        """The attempt's next missing step, or None when it needs no more: an evolution that broke an
        instruction rule is never checked, one the verdict rejected is never answered."""
        for step in STEPS:
            result = results.get(step)
            if result is None:
                return step
            method_text = self.method.text if self.method else None
            if rules.step_problem(step, item["instruction"], result, self.evolve.refusal_max_words, method_text):
                return None
        return None

    def request(self, item: dict, step: str, results: dict[str, dict]) -> ChatRequest:
        e, aid, k = self.evolve, attempt_id(item, self.k), self.k
        context = {"item": item, "results": results}
        if step == "evolve":
            return ChatRequest(
                id=aid,
                purpose=step,
                max_tokens=e.evolution_max_tokens,
                messages=messages(self.evolution_prompt(item)),
                seed=derive_seed(self.seed, item["id"], k, "evolve"),
                context=context,
            )
        evolved = results["evolve"]["text"].strip()
        if step == "check":
            return ChatRequest(
                id=aid,
                purpose=step,
                temperature=0.0,
                max_tokens=e.verdict_max_tokens,
                choice=["EQUAL", "DIFFERENT"] if e.constrained_verdict else None,
                messages=messages(equality_prompt(item["instruction"], evolved)),
                seed=derive_seed(self.seed, item["id"], k, "equality"),
                context=context,
            )
        return ChatRequest(
            id=aid,
            purpose=step,
            max_tokens=e.answer_max_tokens,
            messages=messages(evolved),
            seed=derive_seed(self.seed, item["id"], k, "answer"),
            context=context,
        )

    def follow_up(self, request: ChatRequest, result: ChatResult) -> ChatRequest | None:
        """The attempt's next request after `request` finished with `result`, or None: it is done."""
        item = request.context["item"]
        results = {**request.context["results"], request.purpose: step_record(request, result)}
        step = self.next_step(item, results)
        return None if step is None else self.request(item, step, results)


def attempts(run: Run, k: int) -> Attempts:
    return Attempts(run.config.evolve, run.seed, k, run.method)


def attempt_results(done: dict[str, dict], aid: str) -> dict[str, dict]:
    """The finished records of one attempt, by step."""
    return {step: done[step][aid] for step in STEPS if aid in done[step]}


def next_step(run: Run, k: int, item: dict, done: dict[str, dict]) -> str | None:
    return attempts(run, k).next_step(item, attempt_results(done, attempt_id(item, k)))


def step_passes(run: Run, step: str, item_of: Callable[[str], dict]) -> Callable[[dict], bool]:
    """Whether a finished record of `step` survives it, for the progress bar's kept%; `item_of`
    gives the pool item of an attempt id."""
    return lambda record: step_problem(run, item_of(record["id"]), step, record) is None


def overlapped(run: Run) -> bool:
    """One model in every role: the steps share one engine and run as chains, on the local engine
    or, on Ray, on each replica (one model copy per replica; see docs/ray.md, "What lands where")."""
    return run.config.evolve.overlap_steps and len({run.models.identity(ROLE_OF[step]) for step in STEPS}) == 1


def generate_by_step(run: Run, k: int, pool_in: Path, done: dict[str, ScratchRecords]) -> None:
    """Each step over the whole pool in large chunks, then the next: with a different model per role,
    each model's engine starts once per round. `done` gains each step's records as it ends."""
    for step in STEPS:
        sent: dict[str, dict] = {}  # attempt id -> pool item, for the records the bar has not counted yet
        total = sum(next_step(run, k, item, done) == step for item in pool_items(pool_in))
        run_step(
            run.engines,
            ROLE_OF[step],
            step,
            f"round {k} {step}",
            run.work(k, step),
            run.work(k, "timing"),
            step_requests(run, k, pool_in, done, step, sent),
            total,
            run.config.engine.chunk_size,
            passes=step_passes(run, step, sent.pop),
        )
        done[step] = run.finished(k, step)


def step_requests(
    run: Run, k: int, pool_in: Path, done: dict[str, dict], step: str, sent: dict[str, dict]
) -> Iterator[ChatRequest]:
    """The requests of one step for the attempts that need it next; `sent` gains their pool items."""
    plan = attempts(run, k)
    for item in pool_items(pool_in):
        results = attempt_results(done, attempt_id(item, k))
        if plan.next_step(item, results) == step:
            sent[attempt_id(item, k)] = item
            request = plan.request(item, step, results)
            request.context = None  # no follow-up: a step at a time
            yield request


def generate_chained(run: Run, k: int, pool_in: Path, done: dict[str, ScratchRecords]) -> None:
    """Every step at once on the one engine: an item's check is sent as soon as its evolution ends,
    its answer as soon as its check does, so the engine's batch stays full across the steps.
    `done` gains every record as it finishes (and is saved)."""
    plan = attempts(run, k)
    active: dict[str, dict] = {}  # pool items with a chain under way, by attempt id

    def first() -> Iterator[ChatRequest]:
        for item in pool_items(pool_in):
            results = attempt_results(done, attempt_id(item, k))
            step = plan.next_step(item, results)
            if step is not None:
                active[attempt_id(item, k)] = item
                yield plan.request(item, step, results)

    def finished(request: ChatRequest, record: dict, last: bool) -> None:
        done[request.purpose][request.id] = record
        if last:
            active.pop(request.id, None)

    total = sum(next_step(run, k, item, done) is not None for item in pool_items(pool_in))
    run_chained(
        run.engines,
        "evolver",
        f"round {k}",
        {step: run.work(k, step) for step in STEPS},
        run.work(k, "timing"),
        first(),
        plan.follow_up,
        total,
        run.config.engine.chunk_size,
        passes={step: step_passes(run, step, active.__getitem__) for step in STEPS},
        on_record=finished,
    )


def pool_items(path: Path) -> Iterator[dict]:
    """The pool of a round, one item at a time (never the whole file in memory)."""
    return (item for _, item in iter_jsonl(path))
