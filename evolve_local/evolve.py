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
request (`evolve.overlap_steps`); on Ray each replica chains the blocks of the pool it takes the same way.
With different models, each step runs over the whole pool in chunks, so each model starts once
per round.

Outputs (the run-directory contract): evolve/round_<k>.jsonl (one RoundRecord per attempt, see
pipeline/core/records.py), evolve/stats.json, evolve/manifest.json, data/C<k>.jsonl (seeds + kept
evolutions of rounds 1..k, chat `messages`). Work in progress lives in evolve/work/ (see steps.py);
a killed run resumes there. The near-duplicate index and the round's finished records are looked up
in evolve/work/scratch.sqlite (pipeline/core/scratch.py), which each process rebuilds from those
files and deletes at its end. Which request an attempt needs next, and the two ways of generating a
round, are in generation.py.
`run_evolve` takes a ModelSet (an engine factory per role), so unit tests pass FakeEngines.
"""

from __future__ import annotations

import sys
from pathlib import Path

from evolve_local import eliminate as rules
from evolve_local.dedup import NearDuplicates, TestSetFilter
from evolve_local.generation import (
    STEPS,
    Run,
    attempt_id,
    attempts,
    generate_by_step,
    generate_chained,
    overlapped,
    pool_items,
    step_problem,
)
from evolve_local.inputs import Inputs, key_material, load_inputs
from evolve_local.method import describe
from evolve_local.prompts import messages
from evolve_local.records import RoundTally, write_stats
from evolve_local.seeds import Seed
from evolve_local.steps import Engines, ModelSet, run_step
from pipeline.config import Config, semantic_dict
from pipeline.core.jsonio import JsonlWriter, iter_jsonl, read_json, write_json
from pipeline.core.manifest import begin_stage, finish_stage
from pipeline.core.paths import RunDir
from pipeline.core.records import CONTAMINATED, NEAR_DUPLICATE, SEED_FILE, SEED_OPERATION, TOO_LONG_RULE, RoundRecord
from pipeline.core.scratch import Scratch
from pipeline.core.seeds import derive_seed
from pipeline.core.text import words
from pipeline.engine import TOO_LONG, ChatRequest, server_urls

STAGE = "evolve"
SCRATCH_FILE = "scratch.sqlite"  # in evolve/work/, made anew by each process and deleted at its end


def run_evolve(
    config: Config,
    run_dir: str | Path,
    models: ModelSet,
    inputs: Inputs | None = None,
    quiet: bool = False,
    engines: Engines | None = None,
) -> dict:
    """Evolve for `config.evolve.rounds` rounds into `run_dir`; returns the stats written.

    `engines`: a live engine holder to use and leave open (evol optimize runs many short evolutions
    on one engine); None: this evolution starts its own and closes it at the end."""
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

    # the near-duplicate index and a round's finished records, looked up on disk (rebuilt on resume)
    scratch = Scratch(stage.dir / "work" / SCRATCH_FILE)
    run = new_run(config, models, engines or Engines(models), stage.dir, RunDir(run_dir).data_dir, inputs, scratch)
    if inputs.method is not None:  # the method beside the rounds it wrote, for the report
        inputs.method.save(RunDir(run_dir).evolve_method)
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
        scratch.close()
        if engines is None:
            run.engines.close()
    stats = read_json(stage.dir / "stats.json")
    finish_stage(
        stage,
        config=semantic_dict(config),
        rows={f"C{k}": s["training_set_size"] for k, s in enumerate(all_stats)},
        models={role: models.names[role] for role in ("evolver", "equality", "responder")},
        seeds={"run_seed": config.run.seed},
        extra={
            "rounds_done": rounds,
            "backend": config.engine.backend,
            "method": describe(inputs.method),
            **server_urls(config, ("evolver", "equality", "responder")),
        },
        outputs=[run.data_dir / f"C{k}.jsonl" for k in range(rounds + 1)],
    )
    return stats


def new_run(
    config: Config,
    models: ModelSet,
    engines: Engines,
    stage_dir: Path,
    data_dir: Path,
    inputs: Inputs,
    scratch: Scratch,
) -> Run:
    """What every round of one evolution works with: its engines and directories, the near-duplicate
    index and the test-set filter (both kept in `scratch`), and the evolving method."""
    e = config.evolve
    return Run(
        config,
        models,
        engines,
        stage_dir,
        data_dir,
        NearDuplicates(e.dedup_threshold, e.dedup_shingle_chars, e.minhash_permutations, e.dedup, scratch),
        TestSetFilter(
            inputs.tests, e.decontam_ngram, e.decontam_threshold, e.dedup_shingle_chars, e.minhash_permutations
        ),
        scratch,
        inputs.method,
    )


def rebuild_index(run: Run, k: int) -> None:
    """A finished round from an earlier process: put its kept instructions back in the index."""
    for _, data in iter_jsonl(run.stage_dir / f"round_{k}.jsonl"):
        record = RoundRecord.from_dict(data)
        if record.kept:
            run.dedup.check_and_add(record.id, record.instruction)


# ---------------------------------------------------------------- round 0: the seed pool


def seed_round(run: Run, seeds: list[Seed]) -> None:
    """Round 0: the seeds answered where they need it, then round_0.jsonl, C0 and the seed pool."""
    answer_seeds(run, seeds)
    answers = run.finished(0, "answer")
    tally = RoundTally(0)
    with (
        JsonlWriter(run.stage_dir / "round_0.jsonl") as out,
        JsonlWriter(run.training_set(0)) as training,
        JsonlWriter(run.pool(0).with_suffix(".tmp-pool")) as pool,
    ):
        for seed in seeds:
            record = _seed_record(run, seed, answers.get(seed.id))
            tally.add(record)
            out.write(record.to_dict())
            if record.kept:
                training.write(record.training_row())
                pool.write(_pool_item(record))
    _commit_round(run, 0, tally, training_size=training.count, pool_size=pool.count)


def answer_seeds(run: Run, seeds: list[Seed]) -> None:
    """The responder answers each seed that came without an answer (every seed with
    evolve.regenerate_seed_answers), unless it is too long for the context or overlaps the test set."""
    e, limit = run.config.evolve, run.config.engine.max_model_len
    regenerate = e.regenerate_seed_answers

    def needs_answer(seed: Seed) -> bool:
        return (
            (seed.output is None or regenerate)
            and len(words(seed.instruction)) < limit
            and run.tests.overlap(seed.instruction) is None
        )

    done = run.finished(0, "answer")
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
        passes=lambda r: rules.too_long(r["finish_reason"], "answer") is None,
    )


def _seed_record(run: Run, seed: Seed, answer: dict | None) -> RoundRecord:
    """A seed's round-0 record with its answer (generated, or the seed file's), kept or eliminated:
    an instruction too long for the context, or an answer cut at its limit, is too_long."""
    generated = answer is not None
    record = RoundRecord(
        id=seed.id,
        parent_id=None,
        root_id=seed.id,
        round=0,
        operation=SEED_OPERATION,
        instruction=seed.instruction,
        response=answer["text"].strip() if generated else seed.output,
        responder_model=run.models.names["responder"] if generated else SEED_FILE,
        tokens={"answer": _tokens(answer)} if generated else {},
        seeds={"answer": answer["seed"]} if generated else {},
    )
    too_long = (
        rules.too_long(TOO_LONG, "answer")
        if len(words(seed.instruction)) >= run.config.engine.max_model_len
        else rules.too_long(answer["finish_reason"], "answer")
        if generated
        else None
    )
    decide(run, record, [(TOO_LONG_RULE, too_long)])
    return record


# ---------------------------------------------------------------- round k >= 1


def evolve_round(run: Run, k: int) -> None:
    pool_in = run.pool(k - 1)
    done = {step: run.finished(k, step) for step in STEPS}  # what an earlier process finished
    if overlapped(run):
        generate_chained(run, k, pool_in, done)
    else:
        generate_by_step(run, k, pool_in, done)
    eliminate_round(run, k, pool_in, done)
    for records in done.values():  # the round is written: its lookups are not needed again
        records.drop()


def eliminate_round(run: Run, k: int, pool_in: Path, done: dict[str, dict]) -> None:
    """Apply the rules, then write the round, the next pool and C_k."""
    tally = RoundTally(k)
    with (
        JsonlWriter(run.stage_dir / f"round_{k}.jsonl") as out,
        JsonlWriter(run.training_set(k)) as training,
        JsonlWriter(run.pool(k).with_suffix(".tmp-pool")) as pool,
    ):
        training.copy_lines(run.training_set(k - 1))
        for item in pool_items(pool_in):
            record = attempt_record(run, k, item, done)
            tally.add(record)
            out.write(record.to_dict())
            if record.kept:
                training.write(record.training_row())
                pool.write(_pool_item(record))
            else:
                pool.write(item)  # a failed item goes back as it was and is evolved again
    _commit_round(run, k, tally, training_size=training.count, pool_size=pool.count)


def attempt_record(run: Run, k: int, item: dict, done: dict[str, dict]) -> RoundRecord:
    aid = attempt_id(item, k)
    results = {step: done[step][aid] for step in STEPS if aid in done[step]}
    evolved, check, answer = results["evolve"], results.get("check"), results.get("answer")
    record = RoundRecord(
        id=aid,
        parent_id=item["id"],
        root_id=item["root_id"],
        round=k,
        operation=attempts(run, k).operation(item),
        instruction=evolved["text"].strip(),
        response=answer["text"].strip() if answer else None,
        verdict=rules.verdict_of(check) if check else None,
        verdict_text=check["text"] if check else None,
        evolver_model=run.models.names["evolver"],
        equality_model=run.models.names["equality"] if check else None,
        responder_model=run.models.names["responder"] if answer else None,
        answer_finish_reason=answer["finish_reason"] if answer else None,
        tokens={step: _tokens(result) for step, result in results.items()},
        seeds={step: result["seed"] for step, result in results.items()},
    )
    # The first step whose rule fired; the generation never went past it.
    problems = (step_problem(run, item, step, result) for step, result in results.items())
    decide(run, record, [next((p for p in problems if p), (None, None))])
    return record


def decide(run: Run, record: RoundRecord, ordered: list[tuple[str | None, str | None]]) -> None:
    """Mark the record with the first rule that fired; survivors then face the test set and the
    near-duplicate index, which admits them (only kept items ever enter the index)."""
    for rule, detail in ordered:
        if detail:
            record.eliminate(rule, detail)
            return
    overlap = run.tests.overlap(record.instruction)
    if overlap:
        record.eliminate(CONTAMINATED, overlap)
        return
    twin = run.dedup.check_and_add(record.id, record.instruction)
    if twin:
        record.eliminate(NEAR_DUPLICATE, twin)


def _commit_round(run: Run, k: int, tally: RoundTally, training_size: int, pool_size: int) -> None:
    """Round stats, then the pool last: the pool file's presence means the round is done."""
    stats = tally.summary(run.work(k, "timing"), training_size=training_size, pool_size=pool_size)
    write_json(run.round_stats(k), stats)
    run.pool(k).with_suffix(".tmp-pool").replace(run.pool(k))
    print(tally.line(stats), file=sys.stderr)


def _pool_item(record: RoundRecord) -> dict:
    return {"id": record.id, "root_id": record.root_id, "instruction": record.instruction, "round": record.round}


def _tokens(result: dict) -> dict:
    return {"prompt": result["prompt_tokens"], "completion": result["completion_tokens"]}
