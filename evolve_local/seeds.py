"""Read a seed file in any of the common instruction formats and turn it into seed items.

    evol evolve --config configs/tiny.yaml --seeds my_seeds.json --out runs/mine

Accepted (a JSON array or JSONL, read by pipeline.core.jsonio.iter_records; one format per file,
detected from the first record):
  alpaca        {"instruction", "input", "output"}        (input and output optional)
  self-instruct {"instruction", "instances": [{"input", "output"}, ...]}   (first instance used)
  sharegpt      {"conversations": [{"from": "human", "value"}, {"from": "gpt", "value"}, ...]}
  chat          {"messages": [{"role": "user", "content"}, {"role": "assistant", "content"}, ...]}
  plain         {"instruction"}
Instruction and input are joined into one instruction; the first user turn and the assistant turn
after it are the instruction and answer of a conversation. Every problem names the file and line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.core.chat import messages_problem
from pipeline.core.jsonio import InputError, iter_records

FORMATS = {
    "alpaca": '{"instruction", "input", "output"}',
    "self-instruct": '{"instruction", "instances": [{"input", "output"}]}',
    "sharegpt": '{"conversations": [{"from", "value"}]}',
    "chat": '{"messages": [{"role", "content"}]}',
    "plain": '{"instruction"}',
}
_HUMAN = {"human", "user"}
_BOT = {"gpt", "assistant", "bot", "chatgpt", "model"}


@dataclass
class Seed:
    id: str
    instruction: str
    output: str | None  # None: the responder writes the answer


def accepted_formats() -> str:
    return "; ".join(f"{name} {shape}" for name, shape in FORMATS.items())


def detect_format(record: dict) -> str | None:
    if "conversations" in record:
        return "sharegpt"
    if "messages" in record:
        return "chat"
    if "instances" in record:
        return "self-instruct"
    if "instruction" in record:
        return "alpaca" if ("input" in record or "output" in record) else "plain"
    return None


def _records(path: Path):
    """(location, record) pairs from a JSON array or a JSONL file."""
    if not path.exists():
        raise InputError(f"Seed file {path} not found; pass --seeds FILE or set evolve.seeds.")
    for lineno, record in iter_records(path):
        yield f"{path}:{lineno}", record


def _text(value, where: str, field: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InputError(f'{where}: "{field}" must be a string.')
    return value.strip()


def _join(instruction: str, extra: str) -> str:
    return f"{instruction}\n\n{extra}" if extra else instruction


def _from_turns(turns, where: str, field: str, role_key: str, text_key: str) -> tuple[str, str | None]:
    problem = messages_problem(turns, field, role_key, text_key, roles=None)  # roles are mapped below
    if problem:
        raise InputError(f"{where}: {problem}.")
    first = next((i for i, t in enumerate(turns) if str(t[role_key]).lower() in _HUMAN), None)
    if first is None:
        raise InputError(f'{where}: "{field}" has no user turn to use as the instruction.')
    answer = None
    if first + 1 < len(turns) and str(turns[first + 1][role_key]).lower() in _BOT:
        answer = turns[first + 1][text_key].strip() or None
    return turns[first][text_key].strip(), answer


def parse_record(record: dict, fmt: str, where: str) -> tuple[str, str | None]:
    """(instruction, answer or None) of one record in format `fmt`."""
    if fmt == "sharegpt":
        return _from_turns(record.get("conversations"), where, "conversations", "from", "value")
    if fmt == "chat":
        return _from_turns(record.get("messages"), where, "messages", "role", "content")
    if "instruction" not in record:
        raise InputError(f'{where}: missing "instruction" (the file is in {fmt} format, {FORMATS[fmt]}).')
    instruction = _text(record["instruction"], where, "instruction")
    if fmt == "self-instruct":
        instances = record.get("instances")
        if not isinstance(instances, list) or not instances or not isinstance(instances[0], dict):
            raise InputError(f'{where}: "instances" must be a non-empty list of {{input, output}} objects.')
        first = instances[0]
        return (
            _join(instruction, _text(first.get("input"), where, "instances[0].input")),
            _text(first.get("output"), where, "instances[0].output") or None,
        )
    return (
        _join(instruction, _text(record.get("input"), where, "input")),
        _text(record.get("output"), where, "output") or None,
    )


def load_seeds(path: str | Path) -> tuple[list[Seed], str]:
    """All seeds of the file and its detected format; the whole file is checked before returning."""
    path = Path(path)
    seeds: list[Seed] = []
    seen: dict[str, str] = {}
    fmt = None
    for index, (where, record) in enumerate(_records(path)):
        found = detect_format(record)
        if fmt is None:
            if found is None:
                keys = ", ".join(k if k.isprintable() else repr(k) for k in sorted(record))
                raise InputError(
                    f"{where}: unknown seed format (keys: {keys or 'none'}); accepted formats: {accepted_formats()}."
                )
            fmt = found
        elif found != fmt and not {found, fmt} <= {"alpaca", "plain"}:
            raise InputError(
                f"{where}: looks like {found or 'an unknown format'} but the file started as {fmt}; "
                f"use one format per file."
            )
        instruction, output = parse_record(record, fmt if fmt not in ("alpaca", "plain") else "alpaca", where)
        if not instruction:
            raise InputError(f"{where}: the instruction is empty.")
        raw_id = record.get("id", record.get("idx"))
        item_id = str(raw_id) if raw_id not in (None, "") else f"seed-{index:06d}"
        if item_id in seen:
            raise InputError(f"{where}: duplicate id {item_id!r} (first at {seen[item_id]}).")
        seen[item_id] = where
        seeds.append(Seed(item_id, instruction, output))
    if not seeds:
        raise InputError(f"Seed file {path} holds no seeds; accepted formats: {accepted_formats()}.")
    return seeds, fmt
