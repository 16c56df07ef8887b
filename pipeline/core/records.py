"""The round record: what the evolution stage writes for every attempt, and the vocabulary its
readers (eval/analysis/, the reports, finetune's data loading) share with it.

    evol evolve --config configs/tiny.yaml --out runs/tiny && head -1 runs/tiny/evolve/round_1.jsonl

    from pipeline.core.records import RoundRecord, RULES, KEPT
    record = RoundRecord.from_dict(json.loads(line))

One `RoundRecord` is one line of evolve/round_<k>.jsonl (every attempt, kept or not, with its
lineage); a kept one also becomes one line of data/C<k>.jsonl through `training_row()`. An
eliminated attempt names the first rule that fired; `RULES` is every name it can hold, in the
order the rules run (see evolve_local/eliminate.py for what each one means). `iter_attempts(run_dir)`
reads every attempt of a run (the evolution tree), as `evol export` does.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path

from pipeline.core.jsonio import InputError, iter_jsonl
from pipeline.core.paths import RunDir

TOO_LONG_RULE = "too_long"
NO_INFORMATION_GAIN = "no_information_gain"
COPIED_PROMPT_WORDS = "copied_prompt_words"
REFUSAL_SHORT = "refusal_short"
STOPWORDS_ONLY = "stopwords_only"
NEAR_DUPLICATE = "near_duplicate"
CONTAMINATED = "contaminated"
RULES = (
    TOO_LONG_RULE,
    NO_INFORMATION_GAIN,
    COPIED_PROMPT_WORDS,
    REFUSAL_SHORT,
    STOPWORDS_ONLY,
    NEAR_DUPLICATE,
    CONTAMINATED,
)

# The equality verdict of a check, as parsed from the model's text.
EQUAL, DIFFERENT, UNPARSED = "equal", "different", "unparsed"

# A record's status.
KEPT, ELIMINATED = "kept", "eliminated"

SEED_OPERATION = "seed"  # the operation of every round-0 record
SEED_FILE = "seed file"  # the responder_model of a seed whose answer came from the seed file

# Fields that only an evolution (round >= 1) has: a seed is never checked, and its lines in
# round_0.jsonl leave them out rather than carry four nulls.
EVOLUTION_ONLY = ("verdict", "verdict_text", "equality_model", "answer_finish_reason")


@dataclass
class RoundRecord:
    """One attempt of one round, with its lineage. Written in this field order."""

    id: str  # "<root_id>@r<k>" for the evolution of round k; the seed's own id in round 0
    parent_id: str | None  # the pool item this was evolved from; None for a seed
    root_id: str  # the seed at the start of the lineage (the pool holds one item per root)
    round: int  # k: 0 for the seeds, 1..M for evolutions
    operation: str  # the evolution operation (pipeline.config.evolve.OPERATIONS) or "seed"
    instruction: str  # the evolved instruction (stripped), or the seed's instruction
    response: str | None  # the answer (stripped); None when none was generated (rejected before)
    status: str = KEPT  # KEPT or ELIMINATED
    elimination_rule: str | None = None  # the first rule that fired (one of RULES); None when kept
    elimination_detail: str | None = None  # why, in one sentence; for near_duplicate the kept twin's id
    verdict: str | None = None  # EQUAL / DIFFERENT / UNPARSED; None when not checked (round >= 1 only)
    verdict_text: str | None = None  # the equality model's raw reply (round >= 1 only)
    evolver_model: str | None = None  # the model that wrote the instruction; None for a seed
    equality_model: str | None = None  # the model that gave the verdict (round >= 1 only)
    responder_model: str | None = None  # the model that wrote the response, SEED_FILE, or None
    answer_finish_reason: str | None = None  # "stop", "length" or "too_long" (round >= 1 only)
    tokens: dict = field(default_factory=dict)  # step -> {"prompt", "completion"} token counts
    seeds: dict = field(default_factory=dict)  # step -> the sampling seed of that request

    @property
    def kept(self) -> bool:
        return self.status == KEPT

    def eliminate(self, rule: str, detail: str) -> None:
        self.status, self.elimination_rule, self.elimination_detail = ELIMINATED, rule, detail

    def to_dict(self) -> dict:
        """The line of round_<k>.jsonl: every field in declaration order (round 0 without EVOLUTION_ONLY)."""
        return {name: getattr(self, name) for name in field_names(self.round)}

    @classmethod
    def from_dict(cls, data: dict) -> RoundRecord:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})

    def training_row(self) -> dict:
        """The line of data/C<k>.jsonl: the instruction and answer as chat `messages`, and the lineage."""
        return {
            "id": self.id,
            "messages": [
                {"role": "user", "content": self.instruction},
                {"role": "assistant", "content": self.response or ""},
            ],
            "round": self.round,
            "root_id": self.root_id,
            "parent_id": self.parent_id,
            "operation": self.operation,
        }


def field_names(round_k: int) -> list[str]:
    """The keys of a round_<k>.jsonl line, in the order they are written."""
    return [f.name for f in fields(RoundRecord) if round_k or f.name not in EVOLUTION_ONLY]


def round_files(run_dir: str | Path, last: int | None = None) -> list[Path]:
    """evolve/round_<k>.jsonl of a run in round order: k = 0, 1, ... while the file exists (up to `last`;
    a file beyond the run's rounds_done can be left from an earlier, longer evolution)."""
    run, files = RunDir(run_dir), []
    while (last is None or len(files) <= last) and run.round(len(files)).is_file():
        files.append(run.round(len(files)))
    return files


def iter_attempts(run_dir: str | Path, last: int | None = None) -> Iterator[RoundRecord]:
    """Every attempt of a run's evolution (the tree: each record names its parent), round by round in
    file order up to round `last`; a line that is not a round record is an InputError naming its line."""
    for path in round_files(run_dir, last):
        for lineno, data in iter_jsonl(path):
            missing = [name for name in ("id", "round", "operation", "instruction") if name not in data]
            if missing:
                raise InputError(f"{path}:{lineno}: no {', '.join(missing)}; not an `evol evolve` round record.")
            yield RoundRecord.from_dict(data)


# The details evolve_local/dedup.py writes for the two rules that point at another item.
_MATCH = re.compile(
    r"^(?:the same text as|a near-duplicate of|shares \d+ words in a row with test item|similar to test item) "
    r"(.+?)(?: \(similarity [\d.]+\))?$"
)


def elimination_match(record: RoundRecord) -> str | None:
    """The id a near_duplicate (the kept twin) or contaminated (the test item) elimination points at."""
    if record.elimination_rule not in (NEAR_DUPLICATE, CONTAMINATED) or not record.elimination_detail:
        return None
    found = _MATCH.match(record.elimination_detail)
    return found.group(1) if found else None
