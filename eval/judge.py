"""`evol judge`: a local model compares two answer sets item by item, in both orders, at temperature 0.

    evol judge --answers runs/tiny/answers/C1 --baseline runs/tiny/answers/base --judge smollm2-135m \\
        --out runs/tiny/judge

Writes `<out>/<A>__vs__<B>/` (A, B: the answer labels):
  orders.jsonl     one line per (item, order) as it is judged: raw judge text, parsed scores, parser
                   rule or failure reason; appended per chunk, so an interrupted run resumes
  judgments.jsonl  one line per item: both orders, averaged scores, final verdict for A
                   ("win" / "tie" / "lose", null when unjudged), status, position consistency
  scores.json      the aggregate numbers (eval/scores.py); manifest.json last

Order "AB" shows A as Assistant 1 and B as Assistant 2; order "BA" swaps them. Per order, the
higher score wins and equal scores tie. Both orders must give the same verdict for it to stand:
a verdict that flips with the order, or a win in one order and a tie in the other, is a tie.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from eval.answer import ANSWERS_FILE
from eval.judge_parse import parse_scores
from eval.judge_prompt import CUT_MARK, PROMPT_VERSION, judge_messages
from eval.length_control import Lengths, answer_lengths
from eval.scores import Aggregation, aggregate, combine, rescore, verdict_of
from pipeline.config import Config
from pipeline.core.jsonio import InputError, iter_jsonl, read_json, read_jsonl, write_json, write_jsonl
from pipeline.core.ledger import Ledger
from pipeline.core.manifest import Stage, begin_stage, file_hash, finish_stage
from pipeline.core.paths import RunDir, pair_name
from pipeline.core.seeds import derive_seed
from pipeline.core.text import clip
from pipeline.engine import (
    ENGINE_ERROR,
    TOO_LONG,
    ChatRequest,
    ChatResult,
    ChunkStats,
    Engine,
    generate_in_chunks,
    model_identity,
    server_urls,
)

ORDERS = ("AB", "BA")
ORDERS_FILE, JUDGMENTS_FILE, SCORES_FILE = "orders.jsonl", "judgments.jsonl", "scores.json"


# ---------------------------------------------------------------- inputs


@dataclass
class AnswerSet:
    label: str
    dir: Path
    records: dict[str, dict]  # id -> answer record
    order: list[str]  # ids in test set order
    testset_hash: str | None


def load_answer_set(path: str | Path, option: str) -> AnswerSet:
    """A finished `evol answer` output directory; anything else is refused before the judge loads."""
    path = Path(path)
    answers, manifest = path / ANSWERS_FILE, path / "manifest.json"
    if not answers.is_file():
        raise InputError(
            f"{option} {path}: no {ANSWERS_FILE} there; point at a label directory written by "
            f"`evol answer` (e.g. runs/tiny/answers/base)."
        )
    if not manifest.is_file():
        raise InputError(
            f"{option} {path}: the answers are unfinished (no manifest.json); rerun the same "
            f"`evol answer` command to complete them."
        )
    meta = read_json(manifest)
    if not isinstance(meta, dict) or not isinstance(meta.get("testset") or {}, dict):
        raise InputError(f"{manifest}: not the manifest of an `evol answer` output; rerun that command.")
    records: dict[str, dict] = {}
    for lineno, record in iter_jsonl(answers):
        missing = [k for k in ("id", "instruction", "answer") if k not in record]
        if missing:
            raise InputError(f"{answers}:{lineno}: missing {', '.join(missing)}; not an `evol answer` output.")
        records[str(record["id"])] = record
    label = meta.get("label") or path.name
    return AnswerSet(label, path, records, list(records), (meta.get("testset") or {}).get("hash"))


def pair_items(a: AnswerSet, b: AnswerSet) -> list[str]:
    if a.dir.resolve() == b.dir.resolve():
        raise InputError(f"--answers and --baseline are the same directory ({a.dir}); compare two answer sets.")
    if a.label == b.label:
        raise InputError(
            f"--answers and --baseline both carry the label {a.label!r}; "
            f"answer them with distinct --label / --adapter names."
        )
    if a.testset_hash and b.testset_hash and a.testset_hash != b.testset_hash:
        raise InputError(
            f"{a.dir} and {b.dir} answer different test sets (hash {a.testset_hash} vs "
            f"{b.testset_hash}); answer both on the same --testset."
        )
    shared = [item_id for item_id in a.order if item_id in b.records]
    if not shared:
        raise InputError(f"{a.dir} and {b.dir} have no test item id in common.")
    if len(shared) != len(a.order) or len(shared) != len(b.records):
        raise InputError(
            f"{a.dir} ({len(a.order)} items) and {b.dir} ({len(b.records)} items) do not cover the "
            f"same items ({len(shared)} shared); answer both with the same eval.limit."
        )
    return shared


def judge_settings(config: Config) -> dict:
    """What a verdict depends on: the judge's stage key. How verdicts are counted (eval.high_difficulty,
    eval.single_order_fallback, the bootstrap) is left out: see `recount` and eval/scores.py's Aggregation."""
    e = config.eval
    return {
        "prompt_version": PROMPT_VERSION,
        "temperature": 0.0,
        "max_tokens": e.judge_max_tokens,
        "use_reference": e.use_reference,
        "answer_max_chars": e.judge_answer_max_chars,
        "constrained_judge": e.constrained_judge,
        "score_line": SCORE_LINE_REGEX if e.constrained_judge else None,
        "dtype": config.engine.dtype,
        "max_model_len": config.engine.max_model_len,
        "seed": config.run.seed,
    }


def begin_judge(config: Config, a: AnswerSet, b: AnswerSet, judge_hash: str, out_dir: Path) -> Stage:
    material = {
        "a": {"label": a.label, "answers": file_hash(a.dir / ANSWERS_FILE)},
        "b": {"label": b.label, "answers": file_hash(b.dir / ANSWERS_FILE)},
        "judge_model": judge_hash,
        "settings": judge_settings(config),
    }
    return begin_stage(out_dir, pair_name(a.label, b.label), material)


# ---------------------------------------------------------------- one order, then the pair

# With constrained_judge: "<score 1> <score 2>", a newline, then one to three lines of reasons.
# No upper bound on a line's length (judge_max_tokens is one): with counted bounds such as {10,400}
# xgrammar took 6 s to compile the pattern, once in every judge process; this form takes 0.1 s.
SCORE_LINE_REGEX = r"(10|[1-9]) (10|[1-9])\n[^\n]{10,}(\n[^\n]+){0,2}"


def order_request(item_id: str, order: str, a: dict, b: dict, config: Config) -> tuple[ChatRequest, bool]:
    """The judge request for one order; also says whether an answer had to be cut to fit."""
    limit = config.eval.judge_answer_max_chars
    text_a, cut_a = clip(a.get("answer") or "", limit, CUT_MARK)
    text_b, cut_b = clip(b.get("answer") or "", limit, CUT_MARK)
    first, second = (text_a, text_b) if order == "AB" else (text_b, text_a)
    reference = a.get("reference") if config.eval.use_reference else None
    request = ChatRequest(
        id=f"{item_id}\x1f{order}",
        messages=judge_messages(a["instruction"], first, second, reference),
        max_tokens=config.eval.judge_max_tokens,
        temperature=0.0,
        top_p=1.0,
        seed=derive_seed(config.run.seed, item_id, order, "judge"),
        regex=SCORE_LINE_REGEX if config.eval.constrained_judge else None,
    )
    return request, cut_a or cut_b


def read_order(item_id: str, order: str, result: ChatResult, clipped: bool) -> dict:
    """Parse one order and map 'Assistant 1/2' back to A and B."""
    parsed = parse_scores(result.text)
    error = parsed.error
    if result.finish_reason == TOO_LONG:
        error = "the pair does not fit the judge's context (lower eval.judge_answer_max_chars)"
    first, second = (parsed.first, parsed.second) if error is None else (None, None)
    score_a, score_b = (first, second) if order == "AB" else (second, first)
    return {
        "id": item_id,
        "order": order,
        "raw": result.text,
        "finish_reason": result.finish_reason,
        "score_a": score_a,
        "score_b": score_b,
        "verdict": verdict_of(score_a, score_b),
        "method": parsed.method if error is None else None,
        "error": error,
        "explanation": parsed.explanation,
        "answers_clipped": clipped,
    }


def judgment(item: dict, ab: dict, ba: dict, single_order_fallback: bool) -> dict:
    return {
        "id": item["id"],
        "category": item.get("category"),
        "difficulty": item.get("difficulty"),
        "instruction": item["instruction"],
        "has_reference": bool(item.get("reference")),
        **combine(ab, ba, single_order_fallback),
        "orders": {"AB": {k: v for k, v in ab.items() if k != "id"}, "BA": {k: v for k, v in ba.items() if k != "id"}},
        "prompt_version": PROMPT_VERSION,
    }


# ---------------------------------------------------------------- the stage


def judge_orders(
    engine: Engine, orders: Ledger, a: AnswerSet, b: AnswerSet, item_ids: list[str], config: Config
) -> ChunkStats:
    """Judge each (item, order) that `orders` still lacks, appending every chunk as it finishes; an
    order the engine failed on is sent once more. Returns the engine's throughput."""
    keys = [(item_id, order) for item_id in item_ids for order in ORDERS]
    clipped: dict[str, bool] = {}

    def requests(todo):
        for item_id, order in todo:
            request, cut = order_request(item_id, order, a.records[item_id], b.records[item_id], config)
            clipped[request.id] = cut
            yield request

    def save(chunk: list[ChatRequest], results: list[ChatResult]) -> None:
        records = []
        for request, result in zip(chunk, results):
            item_id, _, order = request.id.partition("\x1f")
            records.append(read_order(item_id, order, result, clipped[request.id]))
        orders.append(records)

    chunk_size = config.eval.chunk_size or config.engine.chunk_size
    todo = orders.left(keys, key=lambda key: key)
    stats = generate_in_chunks(engine, requests(todo), chunk_size, save, total=len(todo), desc="judge")
    failed = orders.left(keys, key=lambda key: key)
    if failed:  # once more; what fails again is counted as unparsed, with the engine's reason
        print(f"[judge] the engine failed on {len(failed)} order(s); sending them once more", file=sys.stderr)
        again = generate_in_chunks(engine, requests(failed), chunk_size, save, total=len(failed), desc="judge retry")
        for name in ("requests", "prompt_tokens", "completion_tokens", "too_long", "seconds"):
            setattr(stats, name, getattr(stats, name) + getattr(again, name))
    return stats


def run_judge(
    engine: Engine, stage: Stage, a: AnswerSet, b: AnswerSet, item_ids: list[str], config: Config, judge_model: str
) -> dict:
    """Judge every pair in both orders (resuming from orders.jsonl), then write judgments and scores."""
    # The last record of an order counts: a retried order is appended after the failed one. An order
    # the engine failed on (finish_reason "error": e.g. a grammar that did not compile in time) is not
    # a verdict: it is sent again, here and when an interrupted stage resumes.
    orders = Ledger(
        stage.dir / ORDERS_FILE,
        key=lambda r: (r["id"], r["order"]),
        redo=lambda r: r["finish_reason"] == ENGINE_ERROR,
    )
    stats = judge_orders(engine, orders, a, b, item_ids, config)
    done = orders.done
    judgments = [
        judgment(a.records[i], done[(i, "AB")], done[(i, "BA")], config.eval.single_order_fallback) for i in item_ids
    ]
    write_jsonl(stage.dir / JUDGMENTS_FILE, judgments)
    meta = {
        "a": a.label,
        "b": b.label,
        "answers_a": str(a.dir),
        "answers_b": str(b.dir),
        "judge_model": judge_model,
        "prompt_version": PROMPT_VERSION,
        "single_order_fallback": config.eval.single_order_fallback,
        # Multi-turn questions (MT-bench) are asked and judged on their first turn only.
        "first_turn_only_items": sum(a.records[i].get("turns", 1) > 1 for i in item_ids),
    }
    scores = aggregate(
        judgments,
        meta,
        high_difficulty=config.eval.high_difficulty,
        resamples=config.eval.bootstrap_resamples,
        seed=config.run.seed,
        lengths=answer_lengths([a.records[i] for i in item_ids], [b.records[i] for i in item_ids]),
    )
    write_json(stage.dir / SCORES_FILE, scores)
    finish_stage(
        stage,
        config=judge_settings(config),
        models={"judge": judge_model},
        rows={
            "items": len(judgments),
            "judged": scores["overall"]["n"],
            "orders_unparsed": scores["judge_failures"]["orders_unparsed"],
        },
        seeds={"run": config.run.seed},
        extra={
            **server_urls(config, ("judge",)),
            "throughput": {
                "requests": stats.requests,
                "seconds": round(stats.seconds, 1),
                "output_tokens_per_second": round(stats.tokens_per_second, 1),
            },
        },
    )
    return scores


def stored_lengths(judge_dir: Path, scores: dict) -> Lengths | None:
    """The answer lengths of a finished comparison, for its length-controlled win rate: read from the
    answers.jsonl that scores.json names (answers_a, answers_b; relative to where the judge ran), else
    from the run's layout beside the judge directory (<run>/answers/<label>); None when either is gone."""
    sides = []
    for side in ("a", "b"):
        places = [Path(p) for p in (scores.get(f"answers_{side}"),) if p]
        places.append(RunDir(Path(judge_dir).parent.parent).answers / str(scores.get(side)))
        found = [p / ANSWERS_FILE for p in places if (p / ANSWERS_FILE).is_file()]
        try:
            sides.append(read_jsonl(found[0]))
        except (IndexError, InputError):  # gone, or unreadable: the report says so instead of failing
            return None
    try:
        return answer_lengths(*sides)
    except (KeyError, TypeError):  # records without an id: not an `evol answer` output
        return None


def recount(judge_dir: Path, settings: Aggregation) -> dict:
    """A finished comparison counted as `settings` say, from its stored orders (no engine): when that
    changes anything, judgments.jsonl and scores.json are rewritten, judgments first."""
    scores = read_json(judge_dir / SCORES_FILE)
    lengths = stored_lengths(judge_dir, scores)
    counted, judgments = rescore(scores, read_jsonl(judge_dir / JUDGMENTS_FILE), settings, lengths)
    if counted is not scores:
        write_jsonl(judge_dir / JUDGMENTS_FILE, judgments)
        write_json(judge_dir / SCORES_FILE, counted)
    return counted


def judge_pairs(
    config: Config,
    pairs: list[tuple[str | Path, str | Path]],
    out_dir: str | Path,
    judge_model: str | Path,
    engine: Engine | None = None,
) -> list[tuple[Path, dict]]:
    """Judge several (answers, baseline) pairs with one judge engine, started only if work remains.

    Every pair is checked before the engine starts; finished pairs are read back from disk.
    """
    config.validate("engine", "eval")  # the sections this stage reads (pipeline/config/)
    judge_model = Path(judge_model)
    judge_hash = model_identity(config, judge_model, "judge")  # a content hash, or what the server reports
    loaded = []
    for answers_dir, baseline_dir in pairs:
        a = load_answer_set(answers_dir, "--answers")
        b = load_answer_set(baseline_dir, "--baseline")
        loaded.append((a, b, pair_items(a, b)))
    results: list[tuple[Path, dict]] = []
    own_engine = engine is None
    try:
        for a, b, item_ids in loaded:
            stage = begin_judge(config, a, b, judge_hash, Path(out_dir))
            if stage.done:
                results.append((stage.dir, recount(stage.dir, Aggregation.of(config))))
                continue
            if engine is None:
                from pipeline.engine import make_engine

                engine = make_engine(config, judge_model, role="judge")
            results.append((stage.dir, run_judge(engine, stage, a, b, item_ids, config, judge_model.name)))
    finally:
        if own_engine and engine is not None:
            engine.close()
    return results
