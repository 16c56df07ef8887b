"""Evol-Instruct with a local model: evolve a seed pool for M rounds, eliminating failed evolutions.

    evol evolve --config configs/tiny.yaml --rounds 2 --out runs/tiny

Round 0 answers the seeds (or keeps their answers) and writes the seed pool. Each round k >= 1:
  1. pick one of six operations per pool item (seeded RNG) and evolve the item;
  2. ask the equality model whether an evolution that passed the instruction rules gained
     anything over its parent;
  3. answer the survivors with the responder;
  4. eliminate (eliminate.py, then near-duplicates and test-set overlap, dedup.py): a kept
     evolution replaces its parent in the pool, a failed item goes back unchanged.
The verdict comes before the answer, although the paper lists them the other way round: it
needs no answer, and answering only instructions that passed it skips the largest generation
for every rejected item (and, with a separate responder, one engine swap per round).
When one model plays every role (the default) steps 1-3 run as chains on one engine: an item's
check is sent the moment its evolution ends, so the engine never waits for a step's slowest
request (`evolve.overlap_steps`). With different models, each step runs over the whole pool in
chunks, so each model starts once per round.

Outputs (the run-directory contract): evolve/round_<k>.jsonl (one record per attempt),
evolve/stats.json, evolve/manifest.json, data/C<k>.jsonl (seeds + kept evolutions of rounds 1..k,
chat `messages`). Work in progress lives in evolve/work/ (see steps.py); a killed run resumes there.
`run_evolve` takes a ModelSet (an engine factory per role), so unit tests pass FakeEngines.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from evolve_local import eliminate as rules
from evolve_local.dedup import NearDuplicates, TestSetFilter
from evolve_local.inputs import Inputs, key_material, load_inputs
from evolve_local.prompts import equality_prompt, evolution_prompt, messages
from evolve_local.records import RoundTally, c_record, write_stats
from evolve_local.seeds import Seed
from evolve_local.steps import Engines, JsonlWriter, ModelSet, iter_pool, load_step, run_chained, run_step
from pipeline.config import Config, semantic_dict
from pipeline.config.evolve import OPERATIONS
from pipeline.core.jsonio import read_json, write_json
from pipeline.core.manifest import begin_stage, finish_stage
from pipeline.core.seeds import derive_seed
from pipeline.engine import ChatRequest

STAGE = "evolve"


# ---------------------------------------------------------------- the run


@dataclass
class Run:
    config: Config
    models: ModelSet
    engines: Engines
    stage_dir: Path
    data_dir: Path
    dedup: NearDuplicates
    tests: TestSetFilter

    @property
    def seed(self) -> int:
        return self.config.run.seed

    def work(self, k: int, step: str) -> Path:
        return self.stage_dir / "work" / f"round_{k}.{step}.jsonl"

    def pool(self, k: int) -> Path:
        return self.stage_dir / "work" / f"pool_{k}.jsonl"  # written last: its presence = round done

    def round_stats(self, k: int) -> Path:
        return self.stage_dir / "work" / f"stats_{k}.json"

    def training_set(self, k: int) -> Path:
        return self.data_dir / f"C{k}.jsonl"


def run_evolve(
    config: Config, run_dir: str | Path, models: ModelSet, inputs: Inputs | None = None, quiet: bool = False
) -> dict:
    """Evolve for `config.evolve.rounds` rounds into `run_dir`; returns the stats written."""
    inputs = inputs or load_inputs(config)
    run_dir = Path(run_dir)
    rounds = config.evolve.rounds
    material = key_material(config, inputs, models)
    stage = begin_stage(run_dir, STAGE, material, quiet=quiet)
    if stage.done:
        finished = read_json(stage.manifest_path)
        if finished.get("rounds_done", -1) >= rounds:
            return read_json(stage.dir / "stats.json")
        print(
            f"[evolve] {finished.get('rounds_done')} rounds were done; continuing to round {rounds}", file=sys.stderr
        )
        stage.manifest_path.unlink()
        stage = begin_stage(run_dir, STAGE, material, quiet=True)

    e = config.evolve
    run = Run(
        config,
        models,
        Engines(models),
        stage.dir,
        run_dir / "data",
        NearDuplicates(e.dedup_threshold, e.dedup_shingle_chars, e.minhash_permutations, e.dedup),
        TestSetFilter(
            inputs.tests, e.decontam_ngram, e.decontam_threshold, e.dedup_shingle_chars, e.minhash_permutations
        ),
    )
    if not run.pool(0).exists():
        for stale in run.data_dir.glob("C*.jsonl"):  # from an earlier evolution with other inputs
            stale.unlink()
    all_stats = []
    try:
        for k in range(rounds + 1):
            if run.pool(k).exists():
                rebuild_index(run, k)
            elif k == 0:
                seed_round(run, inputs.seeds)
            else:
                evolve_round(run, k)
            all_stats.append(read_json(run.round_stats(k)))
            write_stats(stage.dir / "stats.json", all_stats, inputs, models, run.tests)
    finally:
        run.engines.close()
    stats = read_json(stage.dir / "stats.json")
    finish_stage(
        stage,
        config=semantic_dict(config),
        rows={f"C{k}": s["training_set_size"] for k, s in enumerate(all_stats)},
        models={role: models.names[role] for role in ("evolver", "equality", "responder")},
        seeds={"run_seed": config.run.seed},
        extra={"rounds_done": rounds, "backend": config.engine.backend},
    )
    return stats


def rebuild_index(run: Run, k: int) -> None:
    """A finished round from an earlier process: put its kept instructions back in the index."""
    with (run.stage_dir / f"round_{k}.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            if record["status"] == "kept":
                run.dedup.check_and_add(record["id"], record["instruction"])


# ---------------------------------------------------------------- round 0: the seed pool


def seed_round(run: Run, seeds: list[Seed]) -> None:
    e, limit = run.config.evolve, run.config.engine.max_model_len
    regenerate = e.regenerate_seed_answers

    def needs_answer(seed: Seed) -> bool:
        return (
            (seed.output is None or regenerate)
            and len(rules.words(seed.instruction)) < limit
            and run.tests.overlap(seed.instruction) is None
        )

    done = load_step(run.work(0, "answer"))
    todo = [s for s in seeds if s.id not in done and needs_answer(s)]
    requests = (
        ChatRequest(
            id=s.id,
            messages=messages(s.instruction),
            max_tokens=e.answer_max_tokens,
            seed=derive_seed(run.seed, s.id, 0, "answer"),
        )
        for s in todo
    )
    run_step(
        run.engines,
        "responder",
        "answer",
        "round 0 seed answers",
        run.work(0, "answer"),
        run.work(0, "timing"),
        requests,
        len(todo),
        run.config.engine.chunk_size,
        passes=lambda r: r["finish_reason"] != "too_long",
    )

    answers = load_step(run.work(0, "answer"))
    tally = RoundTally(0)
    with (
        JsonlWriter(run.stage_dir / "round_0.jsonl") as out,
        JsonlWriter(run.training_set(0)) as training,
        JsonlWriter(run.pool(0).with_suffix(".tmp-pool")) as pool,
    ):
        for seed in seeds:
            answer = answers.get(seed.id)
            generated = answer is not None
            record = {
                "id": seed.id,
                "parent_id": None,
                "root_id": seed.id,
                "round": 0,
                "operation": "seed",
                "instruction": seed.instruction,
                "response": answer["text"].strip() if generated else seed.output,
                "status": "kept",
                "elimination_rule": None,
                "elimination_detail": None,
                "evolver_model": None,
                "responder_model": run.models.names["responder"] if generated else "seed file",
                "tokens": {"answer": _tokens(answer)} if generated else {},
                "seeds": {"answer": answer["seed"]} if generated else {},
            }
            too_long = (
                rules.too_long("too_long", "answer")
                if len(rules.words(seed.instruction)) >= limit
                else rules.too_long(answer["finish_reason"], "answer")
                if generated
                else None
            )
            decide(run, record, [(rules.TOO_LONG_RULE, too_long)])
            tally.add(record, operation=None)
            out.write(record)
            if record["status"] == "kept":
                training.write(c_record(record))
                pool.write(_pool_item(record))
    _commit_round(run, 0, tally, training_size=training.count, pool_size=pool.count)


# ---------------------------------------------------------------- round k >= 1


def choose_operation(run_seed: int, item_id: str, k: int, weights: dict[str, float]) -> str:
    rng = random.Random(derive_seed(run_seed, item_id, k, "operation"))
    ops = [op for op in OPERATIONS if weights.get(op, 0) > 0]
    return rng.choices(ops, weights=[weights[op] for op in ops])[0]


def attempt_id(item: dict, k: int) -> str:
    return f"{item['root_id']}@r{k}"  # one attempt per root per round: the pool holds one item per root


def instruction_problem(item: dict, evolved: dict) -> tuple[str, str] | None:
    """The first instruction-level rule that fires for an evolution, decided with no model."""
    checks = (
        (rules.TOO_LONG_RULE, lambda: rules.too_long(evolved["finish_reason"], "evolution")),
        (rules.NO_INFORMATION_GAIN, lambda: rules.unchanged_evolution(item["instruction"], evolved["text"])),
        (rules.COPIED_PROMPT_WORDS, lambda: rules.copied_prompt_words(evolved["text"])),
    )
    for rule, check in checks:
        detail = check()
        if detail:
            return rule, detail
    return None


STEPS = ("evolve", "check", "answer")  # an attempt's requests, each needing the one before
ROLE_OF = {"evolve": "evolver", "check": "equality", "answer": "responder"}


def next_step(k: int, item: dict, done: dict[str, dict]) -> str | None:
    """The attempt's next missing request, or None when it needs no more: an evolution that broke
    an instruction rule is never checked, one the verdict rejected is never answered."""
    aid = attempt_id(item, k)
    evolved = done["evolve"].get(aid)
    if evolved is None:
        return "evolve"
    if instruction_problem(item, evolved) is not None:
        return None
    check = done["check"].get(aid)
    if check is None:
        return "check"
    if check["finish_reason"] == "too_long" or rules.parse_verdict(check["text"]) == rules.EQUAL:
        return None
    return None if aid in done["answer"] else "answer"


def step_request(run: Run, k: int, item: dict, step: str, done: dict[str, dict]) -> ChatRequest:
    e, aid = run.config.evolve, attempt_id(item, k)
    if step == "evolve":
        operation = choose_operation(run.seed, item["id"], k, e.operation_weights)
        return ChatRequest(
            id=aid,
            purpose=step,
            max_tokens=e.evolution_max_tokens,
            messages=messages(evolution_prompt(operation, item["instruction"])),
            seed=derive_seed(run.seed, item["id"], k, "evolve"),
        )
    evolved = done["evolve"][aid]["text"].strip()
    if step == "check":
        return ChatRequest(
            id=aid,
            purpose=step,
            temperature=0.0,
            max_tokens=e.verdict_max_tokens,
            choice=["EQUAL", "DIFFERENT"] if e.constrained_verdict else None,
            messages=messages(equality_prompt(item["instruction"], evolved)),
            seed=derive_seed(run.seed, item["id"], k, "equality"),
        )
    return ChatRequest(
        id=aid,
        purpose=step,
        max_tokens=e.answer_max_tokens,
        messages=messages(evolved),
        seed=derive_seed(run.seed, item["id"], k, "answer"),
    )


def step_passes(e) -> dict:
    """Whether a finished record survives its step (the progress bar's kept%)."""
    return {
        "evolve": lambda r: bool(rules.words(r["text"])),
        "check": lambda r: rules.parse_verdict(r["text"]) != rules.EQUAL,
        "answer": lambda r: (
            not (rules.refusal_short(r["text"], e.refusal_max_words) or rules.stopwords_only(r["text"]))
        ),
    }


def overlapped(run: Run) -> bool:
    """One model in every role: the steps can share one engine and run as chains. On Ray each step
    is one job over the pool instead (see pipeline/engine/ray_backend.py and README "Running on a
    cluster"): a job holds one model copy per replica, so a large model fits where three would not."""
    if run.config.engine.backend == "ray":
        return False
    return run.config.evolve.overlap_steps and len({run.models.identity(ROLE_OF[step]) for step in STEPS}) == 1


def evolve_round(run: Run, k: int) -> None:
    pool_in = run.pool(k - 1)
    done = {step: load_step(run.work(k, step)) for step in STEPS}  # what an earlier process finished
    if overlapped(run):
        generate_chained(run, k, pool_in, done)
    else:
        generate_by_step(run, k, pool_in, done)
    eliminate_round(run, k, pool_in, done)


def generate_by_step(run: Run, k: int, pool_in: Path, done: dict[str, dict]) -> None:
    """Each step over the whole pool in large chunks, then the next: with a different model per role,
    each model's engine starts once per round. `done` gains each step's records as it ends."""
    chunk, passes = run.config.engine.chunk_size, step_passes(run.config.evolve)
    for step in STEPS:
        total = sum(next_step(k, item, done) == step for item in iter_pool(pool_in))
        requests = (
            step_request(run, k, item, step, done) for item in iter_pool(pool_in) if next_step(k, item, done) == step
        )
        run_step(
            run.engines,
            ROLE_OF[step],
            step,
            f"round {k} {step}",
            run.work(k, step),
            run.work(k, "timing"),
            requests,
            total,
            chunk,
            passes=passes[step],
        )
        done[step] = load_step(run.work(k, step))


def generate_chained(run: Run, k: int, pool_in: Path, done: dict[str, dict]) -> None:
    """Every step at once on the one engine: an item's check is sent as soon as its evolution ends,
    its answer as soon as its check does, so the engine's batch stays full across the steps.
    `done` gains every record as it finishes (and is saved)."""
    active: dict[str, dict] = {}  # pool items with a request in flight, by attempt id

    def first() -> Iterator[ChatRequest]:
        for item in iter_pool(pool_in):
            step = next_step(k, item, done)
            if step is not None:
                active[attempt_id(item, k)] = item
                yield step_request(run, k, item, step, done)

    def follow_up(request: ChatRequest, record: dict) -> ChatRequest | None:
        done[request.purpose][request.id] = record
        item = active[request.id]
        step = next_step(k, item, done)
        if step is None:
            del active[request.id]
            return None
        return step_request(run, k, item, step, done)

    total = sum(next_step(k, item, done) is not None for item in iter_pool(pool_in))
    run_chained(
        run.engines,
        "evolver",
        f"round {k}",
        {step: run.work(k, step) for step in STEPS},
        run.work(k, "timing"),
        first(),
        follow_up,
        total,
        run.config.engine.chunk_size,
        step_passes(run.config.evolve),
    )


def eliminate_round(run: Run, k: int, pool_in: Path, done: dict[str, dict]) -> None:
    """Apply the rules, then write the round, the next pool and C_k."""
    tally = RoundTally(k)
    with (
        JsonlWriter(run.stage_dir / f"round_{k}.jsonl") as out,
        JsonlWriter(run.training_set(k)) as training,
        JsonlWriter(run.pool(k).with_suffix(".tmp-pool")) as pool,
    ):
        training.copy_lines(run.training_set(k - 1))
        for item in iter_pool(pool_in):
            record = attempt_record(run, k, item, done["evolve"], done["check"], done["answer"])
            tally.add(record, operation=record["operation"])
            out.write(record)
            if record["status"] == "kept":
                training.write(c_record(record))
                pool.write(_pool_item(record))
            else:
                pool.write(item)  # a failed item goes back as it was and is evolved again
    _commit_round(run, k, tally, training_size=training.count, pool_size=pool.count)


def attempt_record(run: Run, k: int, item: dict, evolutions: dict, checks: dict, answers: dict) -> dict:
    e = run.config.evolve
    aid = attempt_id(item, k)
    evolved, check, answer = evolutions[aid], checks.get(aid), answers.get(aid)
    verdict = rules.parse_verdict(check["text"]) if check and check["finish_reason"] != "too_long" else None
    record = {
        "id": aid,
        "parent_id": item["id"],
        "root_id": item["root_id"],
        "round": k,
        "operation": choose_operation(run.seed, item["id"], k, e.operation_weights),
        "instruction": evolved["text"].strip(),
        "response": answer["text"].strip() if answer else None,
        "status": "kept",
        "elimination_rule": None,
        "elimination_detail": None,
        "verdict": verdict,
        "verdict_text": check["text"] if check else None,
        "evolver_model": run.models.names["evolver"],
        "equality_model": run.models.names["equality"] if check else None,
        "responder_model": run.models.names["responder"] if answer else None,
        "answer_finish_reason": answer["finish_reason"] if answer else None,
        "tokens": {step: _tokens(r) for step, r in (("evolve", evolved), ("check", check), ("answer", answer)) if r},
        "seeds": {step: r["seed"] for step, r in (("evolve", evolved), ("check", check), ("answer", answer)) if r},
    }
    first = instruction_problem(item, evolved)
    ordered = [first or (None, None)]
    if first is None:
        ordered += [
            (rules.TOO_LONG_RULE, rules.too_long(check["finish_reason"], "equality check")),
            (rules.NO_INFORMATION_GAIN, rules.judged_equal(verdict, check["text"])),
        ]
        if answer is not None:
            ordered += [
                (rules.TOO_LONG_RULE, rules.too_long(answer["finish_reason"], "answer")),
                (rules.REFUSAL_SHORT, rules.refusal_short(answer["text"], e.refusal_max_words)),
                (rules.STOPWORDS_ONLY, rules.stopwords_only(answer["text"])),
            ]
    decide(run, record, ordered)
    return record


def decide(run: Run, record: dict, ordered: list[tuple[str | None, str | None]]) -> None:
    """Mark the record with the first rule that fired; survivors then face the test set and the
    near-duplicate index, which admits them (only kept items ever enter the index)."""
    for rule, detail in ordered:
        if detail:
            record.update(status="eliminated", elimination_rule=rule, elimination_detail=detail)
            return
    overlap = run.tests.overlap(record["instruction"])
    if overlap:
        record.update(status="eliminated", elimination_rule=rules.CONTAMINATED, elimination_detail=overlap)
        return
    twin = run.dedup.check_and_add(record["id"], record["instruction"])
    if twin:
        record.update(status="eliminated", elimination_rule=rules.NEAR_DUPLICATE, elimination_detail=twin)


def _commit_round(run: Run, k: int, tally: RoundTally, training_size: int, pool_size: int) -> None:
    """Round stats, then the pool last: the pool file's presence means the round is done."""
    stats = tally.summary(run.work(k, "timing"), training_size=training_size, pool_size=pool_size)
    write_json(run.round_stats(k), stats)
    run.pool(k).with_suffix(".tmp-pool").replace(run.pool(k))
    print(tally.line(stats), file=sys.stderr)


def _pool_item(record: dict) -> dict:
    return {
        "id": record["id"],
        "root_id": record["root_id"],
        "instruction": record["instruction"],
        "round": record["round"],
    }


def _tokens(result: dict) -> dict:
    return {"prompt": result["prompt_tokens"], "completion": result["completion_tokens"]}
