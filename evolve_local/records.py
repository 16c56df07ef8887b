"""The per-round statistics of evolve/stats.json, tallied from the round records
(pipeline.core.records.RoundRecord, which also defines the rows of data/C<k>.jsonl).

    evol evolve --config configs/tiny.yaml --out runs/tiny && cat runs/tiny/evolve/stats.json

A round's stats: attempted, kept, eliminated per rule, unparsed verdicts, operation
counts, mean instruction length in words, generation seconds and tokens per step.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from evolve_local.steps import timing_totals
from pipeline.config.evolve import OPERATIONS
from pipeline.core.jsonio import write_json
from pipeline.core.records import CONTAMINATED, NEAR_DUPLICATE, RULES, UNPARSED, RoundRecord
from pipeline.core.text import words


class RoundTally:
    """Counts one round's attempts as they are decided."""

    def __init__(self, k: int):
        self.k = k
        self.attempted = 0
        self.kept = 0
        self.rules: Counter = Counter()
        self.verdicts: Counter = Counter()
        self.operations: Counter = Counter()
        self.kept_operations: Counter = Counter()
        self.words_all: list[int] = []
        self.words_kept: list[int] = []

    def add(self, record: RoundRecord) -> None:
        self.attempted += 1
        length = len(words(record.instruction))
        self.words_all.append(length)
        operation = record.operation if record.round else None  # round 0 holds seeds, not operations
        if operation:
            self.operations[operation] += 1
        if record.verdict:
            self.verdicts[record.verdict] += 1
        if record.kept:
            self.kept += 1
            self.words_kept.append(length)
            if operation:
                self.kept_operations[operation] += 1
        else:
            self.rules[record.elimination_rule] += 1

    def summary(self, timing: Path, training_size: int, pool_size: int) -> dict:
        def mean(values: list[int]) -> float | None:
            return round(sum(values) / len(values), 1) if values else None

        generation = timing_totals(timing)
        return {
            "round": self.k,
            "attempted": self.attempted,
            "kept": self.kept,
            "kept_pct": round(100 * self.kept / self.attempted, 1) if self.attempted else 0.0,
            "eliminated": {rule: self.rules.get(rule, 0) for rule in RULES},
            "unparsed_verdicts": self.verdicts.get(UNPARSED, 0),
            "verdicts": dict(sorted(self.verdicts.items())),
            "near_duplicates": self.rules.get(NEAR_DUPLICATE, 0),
            "decontaminated": self.rules.get(CONTAMINATED, 0),
            "operations": {op: self.operations.get(op, 0) for op in OPERATIONS} if self.k else {},
            "kept_operations": {op: self.kept_operations.get(op, 0) for op in OPERATIONS} if self.k else {},
            "mean_instruction_words": {"attempted": mean(self.words_all), "kept": mean(self.words_kept)},
            "pool_size": pool_size,
            "training_set_size": training_size,
            "generation": generation,
            "generation_seconds": round(sum(s["seconds"] for s in generation.values()), 2),
            "generation_tokens": sum(s["prompt_tokens"] + s["completion_tokens"] for s in generation.values()),
        }

    def line(self, stats: dict) -> str:
        eliminated = {rule: n for rule, n in stats["eliminated"].items() if n}
        top = max(eliminated.items(), key=lambda kv: kv[1]) if eliminated else None
        what = "seeds" if self.k == 0 else "evolutions"
        return (
            f"[evolve] round {self.k}: kept {stats['kept']}/{stats['attempted']} {what} "
            f"({stats['kept_pct']}%), top elimination: {f'{top[0]} ({top[1]})' if top else 'none'}; "
            f"C{self.k} has {stats['training_set_size']} items"
        )


def write_stats(path: Path, rounds: list[dict], inputs, models, tests) -> None:
    totals = {
        "attempted": 0,
        "kept": 0,
        "eliminated": Counter(),
        "unparsed_verdicts": 0,
        "generation_seconds": 0.0,
        "generation_tokens": 0,
    }
    for stats in rounds[1:]:  # evolution rounds only; round 0 is the seed pool
        totals["attempted"] += stats["attempted"]
        totals["kept"] += stats["kept"]
        totals["eliminated"].update(stats["eliminated"])
        totals["unparsed_verdicts"] += stats["unparsed_verdicts"]
    for stats in rounds:
        totals["generation_seconds"] += stats["generation_seconds"]
        totals["generation_tokens"] += stats["generation_tokens"]
    totals["eliminated"] = {rule: totals["eliminated"].get(rule, 0) for rule in RULES}
    totals["generation_seconds"] = round(totals["generation_seconds"], 2)
    write_json(
        path,
        {
            "seeds_file": str(inputs.seeds_file),
            "seed_format": inputs.seed_format,
            "seeds": len(inputs.seeds),
            "testset": str(inputs.testset_file) if inputs.testset_file else None,
            "test_instructions": tests.size_of_set,
            "models": dict(models.names),
            "rounds_done": len(rounds) - 1,
            "evolution_totals": totals,
            "rounds": rounds,
        },
    )
