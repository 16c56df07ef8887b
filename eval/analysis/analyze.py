"""`evol analyze RUN_DIR`: complexity, diversity and survival of a finished evolution, per round.

    evol analyze runs/tiny                                  # reads runs/tiny/config.yaml when present
    evol analyze runs/tiny --config configs/tiny.yaml --set analysis.difficulty=false

Reads evolve/round_<k>.jsonl (every attempt) and data/C<k>.jsonl (the training sets); writes
runs/<name>/analysis/:
  ratings.jsonl     judge-rated difficulty 1-10 of a seeded sample of each round's kept
                    instructions (round 0: the seeds): raw text, parsed score, parser rule or failure;
                    appended per chunk, so an interrupted analysis resumes where it stopped
  projection.jsonl  the 2-D point of each analysed instruction (id, round, x, y)
  analysis.json     per round, per cumulative set C0..CM and per operation: word counts,
                    constraint-like clauses, attached-data share, difficulty, diversity (mean
                    pairwise cosine distance, k-means clusters covered, cluster-size entropy),
                    survival (kept rate, eliminations per rule)
  plots/*.png, manifest.json (last)
The plots and the report section built from analysis.json are in eval/report/analysis.py.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from eval.analysis import metrics
from eval.analysis.complexity import PROMPT_VERSION, SCORE_REGEX, difficulty_request, rating_record
from eval.report.analysis import ANALYSIS_FILE, STAGE, plot_all
from pipeline.config import Config, model_roles, semantic_dict, stable_hash
from pipeline.config.analysis import AnalysisConfig
from pipeline.config.evolve import OPERATIONS
from pipeline.core.jsonio import InputError, iter_jsonl, read_json, read_jsonl_tolerant, write_json, write_jsonl
from pipeline.core.ledger import Ledger
from pipeline.core.manifest import begin_stage, file_hash, finish_stage
from pipeline.core.paths import RunDir
from pipeline.core.records import KEPT
from pipeline.core.seeds import derive_seed
from pipeline.engine import ChatRequest, ChatResult, Engine, generate_in_chunks, server_urls

RATINGS_FILE, PROJECTION_FILE = "ratings.jsonl", "projection.jsonl"
# The fields of a round record (pipeline.core.records.RoundRecord) the analysis reads.
RECORD_FIELDS = ("id", "round", "operation", "instruction", "status")


# ---------------------------------------------------------------- inputs, checked before any model loads


@dataclasses.dataclass
class EvolvedRun:
    dir: Path
    rounds: list[list[dict]]  # every attempt of round k (round 0: the seeds)
    sets: list[list[dict]]  # C<k> rows as {"id", "round", "instruction"}
    files: list[Path]


def load_run(run_dir: str | Path) -> EvolvedRun:
    run_dir = Path(run_dir)
    run = RunDir(run_dir)
    if not run.evolve_manifest.is_file() or not run.evolve_stats.is_file():
        raise InputError(
            f"{run_dir}: no finished evolution there (evolve/manifest.json or evolve/stats.json missing); "
            f"run `evol evolve --out {run_dir}` to completion first."
        )
    last = read_json(run.evolve_stats).get("rounds_done")
    if not isinstance(last, int) or last < 0:
        raise InputError(f"{run.evolve_stats}: no integer rounds_done; not written by `evol evolve`.")
    rounds, sets, files = [], [], []
    for k in range(last + 1):
        path = run.round(k)
        records = []
        for lineno, record in iter_jsonl(path):
            missing = [f for f in RECORD_FIELDS if f not in record]
            if missing or not isinstance(record["instruction"], str):
                raise InputError(
                    f"{path}:{lineno}: missing or non-text {', '.join(missing) or 'instruction'}; "
                    f"not an `evol evolve` round record."
                )
            # Only what the analysis reads: answers are left out, so a paper-size run fits in memory.
            records.append({f: record.get(f) for f in (*RECORD_FIELDS, "elimination_rule")})
        path_c = run.data(k)
        rows = []
        for lineno, row in iter_jsonl(path_c):
            user = next(
                (
                    m.get("content")
                    for m in row.get("messages") or []
                    if isinstance(m, dict) and m.get("role") == "user"
                ),
                None,
            )
            if "id" not in row or not isinstance(user, str):
                raise InputError(f"{path_c}:{lineno}: no id or no user message; not a C<k> training row.")
            rows.append({"id": row["id"], "round": row.get("round", 0), "instruction": user})
        rounds.append(records)
        sets.append(rows)
        files += [path, path_c]
    return EvolvedRun(run_dir, rounds, sets, files)


def sample(items: list[dict], n: int, seed: int, purpose: str) -> list[dict]:
    """A seeded sample of n items (0: all), independent of file order, returned in file order."""
    if not n or len(items) <= n:
        return list(items)
    chosen = {item["id"] for item in sorted(items, key=lambda i: derive_seed(seed, purpose, i["id"]))[:n]}
    return [item for item in items if item["id"] in chosen]


def kept(records: list[dict]) -> list[dict]:
    return [r for r in records if r["status"] == KEPT]


# ---------------------------------------------------------------- difficulty (the judge)


def difficulty_sample(run: EvolvedRun, s: AnalysisConfig, seed: int) -> list[dict]:
    """A seeded sample of each round's kept instructions (round 0: the seeds), rounds in order."""
    return [
        item
        for k, records in enumerate(run.rounds)
        for item in sample(kept(records), s.difficulty_per_round, seed, f"difficulty-{k}")
    ]


def rate_difficulty(
    config: Config,
    items: list[dict],
    ratings_path: Path,
    settings_key: str,
    engine: Engine | None,
    judge_path: Path | None,
    cached: list[dict],
) -> list[dict]:
    """Rate every item not yet in ratings.jsonl (resume), starting the judge only if work remains."""
    s = config.analysis
    expected = {item["id"]: stable_hash([settings_key, item["instruction"]]) for item in items}
    # a rating of an item no longer sampled, or made with other settings, does not count
    ratings = Ledger(ratings_path, keep=lambda r: expected.get(r.get("id")) == r.get("rating_key"))
    if not ratings_path.exists() and cached:  # the stage restarted for a diversity knob: keep valid ratings
        ratings.append([r for r in cached if ratings.keep(r)])
    todo = ratings.left(items)
    by_id, clipped = {item["id"]: item for item in items}, {}

    def requests():
        for item in todo:
            request, cut = difficulty_request(item["id"], item["instruction"], s, config.run.seed)
            clipped[item["id"]] = cut
            yield request

    def save(chunk: list[ChatRequest], results: list[ChatResult]) -> None:
        records = [
            rating_record(by_id[r.id], result, clipped[r.id], expected[r.id]) for r, result in zip(chunk, results)
        ]
        ratings.append(records)

    if todo:
        own_engine = engine is None
        if own_engine:
            from pipeline.engine import make_engine

            engine = make_engine(config, judge_path, role="analysis")
        try:
            generate_in_chunks(
                engine, requests(), s.chunk_size or config.engine.chunk_size, save, total=len(todo), desc="difficulty"
            )
        finally:
            if own_engine:
                engine.close()  # free the accelerator before the embedding model loads
    return [ratings.done[item["id"]] for item in items]


# ---------------------------------------------------------------- diversity (the embeddings)


@dataclasses.dataclass
class Embeddings:
    vectors: np.ndarray
    labels: np.ndarray  # the k-means cluster of each vector
    row: dict[str, int]  # instruction text -> its row in vectors and labels

    def diversity(self, items: list[dict]) -> dict:
        index = [self.row[item["instruction"]] for item in items]
        return metrics.diversity_summary(self.vectors[index], self.labels[index])


def diversity_groups(run: EvolvedRun, s: AnalysisConfig, seed: int) -> dict[str, list[dict]]:
    """A seeded sample of each round's kept instructions ("round k") and of each C<k> ("Ck")."""
    groups = {
        f"round {k}": sample(kept(records), s.diversity_per_set, seed, f"diversity-round-{k}")
        for k, records in enumerate(run.rounds)
    }
    groups.update(
        {f"C{k}": sample(rows, s.diversity_per_set, seed, f"diversity-C{k}") for k, rows in enumerate(run.sets)}
    )
    return groups


def embed_sets(groups: dict[str, list[dict]], embedder, s: AnalysisConfig, seed: int) -> Embeddings:
    """Embed each group's instructions once (unique texts), fit k-means over all of them."""
    texts = list(dict.fromkeys(item["instruction"] for items in groups.values() for item in items))
    vectors = np.asarray(embedder(texts), dtype=np.float64)
    if vectors.shape[0] != len(texts):
        raise ValueError(f"the embedder returned {vectors.shape[0]} vectors for {len(texts)} texts")
    labels = metrics.kmeans_labels(vectors, s.clusters, seed) if texts else np.zeros(0, dtype=int)
    return Embeddings(vectors, labels, {text: i for i, text in enumerate(texts)})


def write_projection(
    path: Path, run: EvolvedRun, groups: dict[str, list[dict]], embedded: Embeddings, s: AnalysisConfig, seed: int
):
    """The 2-D point of each round's sampled instruction, written to projection.jsonl; returns
    ([(item, round)], their points) for the plot."""
    points = [(item, k) for k in range(len(run.rounds)) for item in groups[f"round {k}"]]
    xy = (
        metrics.project(
            embedded.vectors[[embedded.row[item["instruction"]] for item, _ in points]], s.projection, seed
        )
        if points
        else np.zeros((0, 2))
    )
    write_jsonl(
        path,
        (
            {"id": item["id"], "round": k, "x": round(float(x), 4), "y": round(float(y), 4)}
            for (item, k), (x, y) in zip(points, xy)
        ),
    )
    return points, xy


# ---------------------------------------------------------------- the numbers: per round, per C<k>, per operation


def difficulty_scores(ratings: list[dict]) -> dict[tuple[str, object], list]:
    """The rated scores by ("round", k) and by ("operation", name)."""
    scores = defaultdict(list)
    for rating in ratings:
        scores[("round", rating["round"])].append(rating["score"])
        scores[("operation", rating["operation"])].append(rating["score"])
    return scores


def per_round_numbers(run: EvolvedRun, groups, embedded: Embeddings, scores, rated: bool) -> list[dict]:
    per_round = []
    for k, records in enumerate(run.rounds):
        texts = [r["instruction"] for r in kept(records)]
        per_round.append(
            {
                "round": k,
                "text": {
                    "kept": metrics.text_summary(texts),
                    "attempted": metrics.text_summary([r["instruction"] for r in records]),
                },
                "difficulty": metrics.score_summary(scores[("round", k)]) if rated else None,
                "diversity": embedded.diversity(groups[f"round {k}"]),
                "survival": metrics.survival(records) if k else None,
            }
        )
    return per_round


def cumulative_numbers(
    run: EvolvedRun, groups, embedded: Embeddings, per_round: list[dict], rated: bool
) -> list[dict]:
    """Per C<k>; its difficulty is the mean of its rounds' rated means, weighted by its rows per round."""
    round_means = {r["round"]: r["difficulty"]["mean"] for r in per_round if r["difficulty"]}
    return [
        {
            "set": f"C{k}",
            "rows": len(rows),
            "text": metrics.text_summary([r["instruction"] for r in rows]),
            "difficulty_mean": metrics.stratified_mean(rows, round_means) if rated else None,
            "diversity": embedded.diversity(groups[f"C{k}"]),
        }
        for k, rows in enumerate(run.sets)
    ]


def per_operation_numbers(run: EvolvedRun, scores, rated: bool) -> dict[str, dict]:
    """Per operation over all evolution rounds; the known operations first, in their order."""
    per_operation = {}
    evolved = [r for records in run.rounds[1:] for r in records]
    for op in (*OPERATIONS, *sorted({r["operation"] for r in evolved} - set(OPERATIONS))):
        mine = [r for r in evolved if r["operation"] == op]
        per_operation[op] = {
            **metrics.survival(mine),
            "text_kept": metrics.text_summary([r["instruction"] for r in kept(mine)]),
            "text_attempted": metrics.text_summary([r["instruction"] for r in mine]),
            "difficulty": metrics.score_summary(scores[("operation", op)]) if rated else None,
        }
    return per_operation


# ---------------------------------------------------------------- the stage key


def judge_identity(config: Config, engine: Engine | None) -> tuple[Path | None, str | None]:
    """(the judge's model directory when this stage starts it, what the ratings depend on of it)."""
    if not config.analysis.difficulty:
        return None, None
    if engine is not None:
        return None, engine.model_name
    from pipeline.engine.factory import locate_model, model_identity

    judge_path = locate_model(config, model_roles(config)["analysis.judge_model"], "analysis")
    return judge_path, f"{judge_path.name} {model_identity(config, judge_path, 'analysis')}"


def embedder_identity(embedder) -> str:
    if embedder is None:
        from eval.analysis.embed import model_id

        return model_id()  # checks the package is there before the judge starts
    return getattr(embedder, "name", type(embedder).__name__)


def rating_key(s: AnalysisConfig, judge_id: str | None, engine_settings: dict, seed: int) -> str:
    """What one rating depends on (with the instruction's text): ratings carry it, and survive a
    restart of the stage for a diversity knob."""
    return stable_hash(
        [
            judge_id,
            engine_settings,
            PROMPT_VERSION,
            s.difficulty_max_tokens,
            s.constrained_difficulty,
            SCORE_REGEX if s.constrained_difficulty else None,
            s.instruction_max_chars,
            seed,
        ]
    )


def judge_engine(config: Config) -> dict:
    """The engine settings a rating depends on."""
    return {"dtype": config.engine.dtype, "max_model_len": config.engine.max_model_len}


def stage_material(config: Config, run: EvolvedRun, judge_id: str | None, embedder_id: str) -> dict:
    """The analysis stage's key: its inputs' content, the analysis settings, and the judge and embedding
    model by identity (analysis.judge_model is the name that found the judge, keyed by content here)."""
    settings = semantic_dict(config.analysis)
    settings.pop("judge_model")
    return {
        "inputs": {str(p.relative_to(run.dir)): file_hash(p) for p in run.files},
        "settings": settings,
        "judge": judge_id,
        "judge_engine": judge_engine(config),
        "prompt_version": PROMPT_VERSION,
        "embedding_model": embedder_id,
        "seed": config.run.seed,
    }


# ---------------------------------------------------------------- the analysis


def analyze_run(config: Config, run_dir: str | Path, engine: Engine | None = None, embedder=None) -> dict:
    """Everything `evol analyze` does; `engine` (the judge) and `embedder` are built here when None."""
    s = config.analysis
    s.validate()  # the analysis section's values, before the run is read
    run = load_run(run_dir)
    seed = config.run.seed

    # 0. skip when nothing the numbers depend on changed; keep the ratings when only a diversity knob did
    judge_path, judge_id = judge_identity(config, engine)
    embedder_id = embedder_identity(embedder)
    ratings_path = run.dir / STAGE / RATINGS_FILE
    cached = read_jsonl_tolerant(ratings_path) if ratings_path.is_file() else []
    stage = begin_stage(run.dir, STAGE, stage_material(config, run, judge_id, embedder_id))
    if stage.done:
        return read_json(stage.dir / ANALYSIS_FILE)

    # 1. difficulty of a seeded sample of each round's kept instructions, judged and saved per chunk
    to_rate = difficulty_sample(run, s, seed)
    settings_key = rating_key(s, judge_id, judge_engine(config), seed)
    ratings = (
        rate_difficulty(config, to_rate, stage.dir / RATINGS_FILE, settings_key, engine, judge_path, cached)
        if s.difficulty
        else []
    )

    # 2. embeddings of a seeded sample per round and per C<k>; k-means over all of them at once
    groups = diversity_groups(run, s, seed)
    if embedder is None:
        from eval.analysis.embed import MiniLMEmbedder

        embedder = MiniLMEmbedder(batch_size=s.embedding_batch_size, device=s.embedding_device or None)
    embedded = embed_sets(groups, embedder, s, seed)

    # 3. the numbers: per round, per C<k>, per operation
    scores = difficulty_scores(ratings)
    per_round = per_round_numbers(run, groups, embedded, scores, s.difficulty)
    cumulative = cumulative_numbers(run, groups, embedded, per_round, s.difficulty)
    per_operation = per_operation_numbers(run, scores, s.difficulty)

    # 4. the projection, plots and analysis.json; the manifest last
    points, xy = write_projection(stage.dir / PROJECTION_FILE, run, groups, embedded, s, seed)
    labels = embedded.labels
    failures = Counter(r["error"] for r in ratings if r["error"])
    result = {
        "run": run.dir.name,
        "rounds": len(run.rounds) - 1,
        "settings": semantic_dict(s),
        "judge_model": judge_id,
        "prompt_version": PROMPT_VERSION,
        "embedding_model": embedder_id,
        "clusters": {"k": int(labels.max()) + 1 if len(labels) else 0, "fitted_on": len(labels)},
        "judge_failures": {"rated": len(ratings), "unparsed": sum(failures.values()), "reasons": dict(failures)},
        "per_round": per_round,
        "cumulative": cumulative,
        "per_operation": per_operation,
    }
    result["plots"] = [str(p.relative_to(run.dir)) for p in plot_all(result, points, xy, stage.dir / "plots")]
    write_json(stage.dir / ANALYSIS_FILE, result)
    finish_stage(
        stage,
        config=semantic_dict(s),
        models={"judge": judge_id, "embedding": embedder_id},
        rows={"rated": len(ratings), "unparsed": result["judge_failures"]["unparsed"], "embedded": len(labels)},
        seeds={"run": seed},
        extra=server_urls(config, ("analysis",)),
    )
    return result
