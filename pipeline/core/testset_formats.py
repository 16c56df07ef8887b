"""Standard benchmark question files, recognised from their keys and read without any option.

    load_testset("mt_bench_question.jsonl", EvalConfig())   # pipeline/core/testset.py calls `detect` and `convert`

Besides the Evol-Instruct schema (`idx`, `Skill`, `Difficulty`, `Instruction`), which the default
field mapping reads, these shapes are recognised from the first line of the file:
  fastchat     FastChat llm_judge questions (Vicuna-80, MT-bench): `question_id`, `category`,
               `turns` a list of strings, optional `reference` a list of strings (one per turn)
  arena-hard   Arena-Hard: `question_id`, `category`, `turns` a list of `{"content": ...}`
  alpaca-eval  AlpacaEval: `instruction`, `dataset` (the category), optional `output` (used as the
               reference answer); no id in the file, so the id is the line number
Multi-turn questions: only the first turn is asked and judged. The item keeps the number of turns
its question had (`turns`), answers and scores count the items cut to their first turn, and the
loader prints a one-line notice, so a shortened MT-bench run never passes for a full one.
"""

from __future__ import annotations

# Converted records use the Evol-Instruct keys, so one validation path reads every format.
ID, INSTRUCTION, CATEGORY, REFERENCE, TURNS = "idx", "Instruction", "Skill", "Reference", "_turns"

ACCEPTED = (
    "the Evol-Instruct schema (idx, Skill, Difficulty, Instruction); FastChat llm_judge questions "
    "(Vicuna-80, MT-bench: question_id, category, turns as a list of strings); Arena-Hard (question_id, "
    'category, turns as a list of {"content": ...}); AlpacaEval (instruction, dataset, optional output); '
    "or any other JSONL by naming its keys with eval.id_field, eval.instruction_field, eval.category_field, "
    "eval.difficulty_field and eval.reference_field"
)


class FormatError(ValueError):
    """One line of a recognised format is malformed; the loader adds the file and line."""


def is_evol_instruct(record: dict) -> bool:
    return "Instruction" in record or "idx" in record


def detect(record: dict) -> str | None:
    """The format of a file from its first record, or None when no known shape fits."""
    if "question_id" in record and "turns" in record:
        turns = record["turns"]
        if isinstance(turns, list) and turns and all(isinstance(t, dict) for t in turns):
            return "arena-hard"
        return "fastchat"
    if "instruction" in record:
        return "alpaca-eval"
    return None


def _turn_texts(record: dict, fmt: str) -> list[str]:
    turns = record.get("turns")
    if not isinstance(turns, list) or not turns:
        raise FormatError('"turns" must be a non-empty list')
    texts = []
    for number, turn in enumerate(turns, start=1):
        if fmt == "arena-hard":
            text = turn.get("content") if isinstance(turn, dict) else None
        else:
            text = turn
        if not isinstance(text, str):
            shape = 'an object with a "content" string' if fmt == "arena-hard" else "a string"
            raise FormatError(f"turn {number} must be {shape}, got {type(turn).__name__}")
        texts.append(text)
    return texts


def _reference(value) -> str | None:
    # MT-bench keeps one reference per turn; only the first turn is asked, so only its reference counts.
    if isinstance(value, list):
        value = value[0] if value else None
    return value if isinstance(value, str) and value.strip() else None


def convert(record: dict, fmt: str, lineno: int) -> dict:
    """One record of `fmt` in the Evol-Instruct keys, plus how many turns the question had."""
    if fmt == "alpaca-eval":
        if not isinstance(record.get("instruction"), str):
            raise FormatError('"instruction" must be a string (the file was read as alpaca-eval from its first line)')
        return {
            ID: str(lineno),
            INSTRUCTION: record.get("instruction"),
            CATEGORY: record.get("dataset"),
            REFERENCE: _reference(record.get("output")),
            TURNS: 1,
        }
    if "question_id" not in record:
        raise FormatError(f'missing field "question_id" (the file was read as {fmt} from its first line)')
    texts = _turn_texts(record, fmt)
    return {
        ID: record["question_id"],
        INSTRUCTION: texts[0],
        CATEGORY: record.get("category"),
        REFERENCE: _reference(record.get("reference")),
        TURNS: len(texts),
    }
