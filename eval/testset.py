"""Load a test set into `TestItem`s through the field mapping of the `eval` config.

    items = load_testset(testset_path(config.eval.testset), config.eval)

The default mapping reads the Evol-Instruct schema (`idx`, `Skill`, `Difficulty` 1-10,
`Instruction`); any other JSONL (or JSON array) works by naming its keys, e.g.
`--set eval.id_field=question_id --set eval.instruction_field=prompt --set eval.category_field=category
--set eval.difficulty_field= --set eval.reference_field=answer`. The whole file is checked before
any model loads: every problem names the file and line.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.config.eval import EvalConfig
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
    """Every item of the file, validated; `settings.limit` keeps N evenly spaced items, in file order."""
    path = Path(path)
    if not settings.id_field or not settings.instruction_field:
        raise InputError(
            "eval.id_field and eval.instruction_field must name keys of the test set; they cannot be empty."
        )
    if settings.limit < 0:
        raise InputError(f"eval.limit must be 0 (all items) or a positive count, got {settings.limit}.")
    items: list[TestItem] = []
    seen: dict[str, int] = {}
    for lineno, record in iter_records(path):
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
            )
        )
    if not items:
        raise InputError(f"{path}: the test set has no items.")
    if not settings.limit or settings.limit >= len(items):
        return items
    # Evenly spaced rather than the first N: test sets are often sorted by skill, and a smoke run
    # should still see every kind of question.
    return [items[i * len(items) // settings.limit] for i in range(settings.limit)]
