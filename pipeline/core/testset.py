"""Read a test set into `TestItem`s through the field mapping of the `eval` config: the one reader
of test sets, for the answers and judge (`load_testset`) and for decontamination (`read_testset`).

    items = load_testset(testset_path(config.eval.testset), config.eval)

The default mapping reads the Evol-Instruct schema (`idx`, `Skill`, `Difficulty` 1-10,
`Instruction`); any other JSONL (or JSON array) works by naming its keys, e.g.
`--set eval.id_field=question_id --set eval.instruction_field=prompt --set eval.category_field=category
--set eval.difficulty_field= --set eval.reference_field=answer`. The whole file is checked before
any model loads: every problem names the file and line. FastChat (Vicuna-80, MT-bench), Arena-Hard
and AlpacaEval question files are recognised and read without options (pipeline/core/testset_formats.py).
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from pipeline.config.eval import EvalConfig
from pipeline.core import testset_formats as formats
from pipeline.core.jsonio import InputError, iter_records

# A test instruction this long is a broken file (e.g. a whole document in one field), not a question.
MAX_INSTRUCTION_CHARS = 100_000


@dataclass
class TestItem:
    __test__ = False  # not a pytest test class despite the name

    id: str
    instruction: str
    category: str
    difficulty: int | None = None
    reference: str | None = None
    turns: int = 1  # turns of the source question; only the first is asked (see pipeline/core/testset_formats.py)

    def to_dict(self) -> dict:
        return asdict(self)


def _text(record: dict, key: str, where: str, option: str, required: bool) -> str | None:
    if not key:
        return None
    if key not in record or record[key] is None:
        if required:
            raise InputError(
                f'{where}: missing field "{key}" (set eval.{option} to the right key '
                f"if this test set uses another name)."
            )
        return None
    value = record[key]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise InputError(f'{where}: field "{key}" must be a string, got {type(value).__name__}.')
    return value


def _difficulty(record: dict, key: str, where: str) -> int | None:
    if not key or record.get(key) in (None, ""):
        return None
    value = record[key]
    try:
        number = int(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError, OverflowError):  # OverflowError: Infinity
        number = None
    if number is None or (isinstance(value, float) and value != number):
        raise InputError(f'{where}: field "{key}" must be a whole number (a difficulty level), got {value!r}.')
    return number


def load_testset(path: str | Path, settings: EvalConfig) -> list[TestItem]:
    """The items a run asks: every item of the file, validated, then `settings.limit` keeps N evenly
    spaced items, in file order. Says once when multi-turn questions are cut to their first turn."""
    path = Path(path)
    items = evenly_spaced(read_testset(path, settings), settings.limit)
    multi = sum(item.turns > 1 for item in items)
    if multi:
        print(
            f"[testset] {path.name}: {multi} of {len(items)} questions have several turns; only the first "
            f"turn is asked and judged (answers and scores record it).",
            file=sys.stderr,
        )
    return items


def read_testset(path: str | Path, settings: EvalConfig) -> list[TestItem]:
    """Every item of the file, validated (eval.limit is not applied: decontamination checks them all)."""
    path = Path(path)
    if not settings.id_field or not settings.instruction_field:
        raise InputError(
            "eval.id_field and eval.instruction_field must name keys of the test set; they cannot be empty."
        )
    if settings.limit < 0:
        raise InputError(f"eval.limit must be 0 (all items) or a positive count, got {settings.limit}.")
    records, settings = _records_and_mapping(path, settings)
    items: list[TestItem] = []
    seen: dict[str, int] = {}
    for lineno, record in records:
        where = f"{path}:{lineno}"
        item_id = _text(record, settings.id_field, where, "id_field", required=True).strip()
        if not item_id:
            raise InputError(f'{where}: empty id in field "{settings.id_field}".')
        if item_id in seen:
            raise InputError(f"{where}: duplicate id {item_id!r} (first seen on line {seen[item_id]}).")
        seen[item_id] = lineno
        instruction = _text(record, settings.instruction_field, where, "instruction_field", required=True)
        if not instruction.strip():
            raise InputError(f'{where}: empty instruction in field "{settings.instruction_field}".')
        if len(instruction) > MAX_INSTRUCTION_CHARS:
            raise InputError(
                f"{where}: the instruction has {len(instruction)} characters (more than "
                f"{MAX_INSTRUCTION_CHARS}); this does not look like a test question."
            )
        category = _text(record, settings.category_field, where, "category_field", required=False)
        reference = _text(record, settings.reference_field, where, "reference_field", required=False)
        items.append(
            TestItem(
                id=item_id,
                instruction=instruction,
                category=(category or "").strip() or "uncategorised",
                difficulty=_difficulty(record, settings.difficulty_field, where),
                reference=reference if reference and reference.strip() else None,
                turns=record.get(formats.TURNS, 1),
            )
        )
    if not items:
        raise InputError(f"{path}: the test set has no items.")
    return items


def _records_and_mapping(path: Path, settings: EvalConfig) -> tuple[list[tuple[int, dict]], EvalConfig]:
    """The file's records, converted to the Evol-Instruct keys when it is a standard format.

    Formats are only detected under the default mapping: a mapping the user set always wins.
    """
    records = list(iter_records(path))
    default = EvalConfig()
    if not records or (settings.id_field, settings.instruction_field) != (default.id_field, default.instruction_field):
        return records, settings
    lineno, first = records[0]
    if formats.is_evol_instruct(first):
        return records, settings
    fmt = formats.detect(first)
    if fmt is None:
        raise InputError(
            f"{path}:{lineno}: a test set format I do not recognise (keys: {', '.join(map(_shown, sorted(first))) or 'none'}). "
            f"Accepted: {formats.ACCEPTED}."
        )
    converted = []
    for lineno, record in records:
        try:
            converted.append((lineno, formats.convert(record, fmt, lineno)))
        except formats.FormatError as err:
            raise InputError(f"{path}:{lineno}: {err}.") from None
    mapping = replace(
        settings,
        id_field=formats.ID,
        instruction_field=formats.INSTRUCTION,
        category_field=formats.CATEGORY,
        difficulty_field="",
        reference_field=formats.REFERENCE,
    )
    return converted, mapping


def evenly_spaced(items: list, limit: int) -> list:
    """`limit` items evenly spaced over the list, in order (0 or more than there are: all of them)."""
    if not limit or limit >= len(items):
        return items
    # Evenly spaced rather than the first N: test sets are often sorted by skill, and a smoke run
    # should still see every kind of question.
    return [items[i * len(items) // limit] for i in range(limit)]


def _shown(key: str) -> str:
    """A key as the message shows it: one that is not a plain single-line word is quoted, escapes and all."""
    return key if key.isprintable() and key.strip() == key and key else repr(key)
