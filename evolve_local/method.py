"""Evolving methods (Auto Evol-Instruct): one prompt that rewrites any instruction, used in place of the
six hand-written operations, and the file that holds an optimised one.

    evol optimize --config configs/tiny.yaml --out runs/tiny-opt     # writes runs/tiny-opt/best_method.json
    evol run --config configs/tiny.yaml --set evolve.method=runs/tiny-opt/best_method.json

`evolve.method: ops` (the default) keeps the operations of prompts.py; a path names a method file:

    {"format": "evol-method/1",                 # this file's kind and version
     "name": "step2-c1",                        # a label for reports
     "text": "... {instruction} ...",           # the prompt; {instruction} appears exactly once
     "lineage": {"parent": "<hash>", "step": 2, "candidate": 1, "problems": ["..."]},
     "score": {"failure_rate": 0.25, "attempted": 8, "eliminated": {"<rule>": 2}},
     "history": [{"step": 0, "hash": "...", "failure_rate": 0.5}, ...]}

Only `format` and `text` are required; a method's identity is the hash of its text (`Method.hash`),
which is what the evolve stage key and manifest hold. `load_method` says in one sentence what is
wrong with a file before any model loads. The evolver's whole reply is taken as the new instruction,
as with the operations, so a method asks for the rewritten instruction alone, and a reply that echoes
the labels of its tail (prompts.METHOD_TAIL) is caught by the `copied_prompt_words` rule. The
prompts themselves (the starting method, the optimiser's two prompts) are in prompts.py.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from evolve_local.prompts import GENERAL_METHOD, METHOD_PLACEHOLDER, METHOD_TAIL
from pipeline.core.jsonio import InputError, atomic_write_text, read_text_file

FORMAT = "evol-method/1"
PLACEHOLDER = METHOD_PLACEHOLDER
TAIL = METHOD_TAIL
__all__ = ["GENERAL_METHOD", "Method", "load_method", "resolve_method", "describe"]
OPS = "ops"  # evolve.method's default: the six hand-written operations
METHOD_OPERATION = "evol_method"  # the `operation` of an attempt evolved by a method


@dataclass(frozen=True)
class Method:
    """An evolving method: its prompt text (with one {instruction}) and what the file said about it."""

    text: str
    name: str = "general"
    lineage: dict = field(default_factory=dict)
    score: dict | None = None
    history: list = field(default_factory=list)

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()[:16]

    def prompt(self, instruction: str) -> str:
        """The user message that asks the evolver to rewrite `instruction` (no str.format: a method
        may hold braces of its own, such as a JSON example)."""
        return self.text.replace(PLACEHOLDER, instruction)

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "name": self.name,
            "hash": self.hash,
            "text": self.text,
            "lineage": self.lineage,
            "score": self.score,
            "history": self.history,
        }

    def save(self, path: Path) -> Path:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")
        return path


def text_problem(text: object) -> str | None:
    """Why `text` cannot be a method's prompt (a phrase), or None."""
    if not isinstance(text, str) or not text.strip():
        return "its 'text' must be a non-empty string"
    count = text.count(PLACEHOLDER)
    if count != 1:
        return f"its 'text' must hold the placeholder {PLACEHOLDER} exactly once (it holds it {count} times)"
    return None


def load_method(path: str | Path, key: str = "evolve.method") -> Method:
    """A method file, checked: one InputError sentence naming the file, the setting that named it (`key`:
    evolve.method, or optimize.start for evol optimize's starting method) and what is wrong."""
    path = Path(path)
    where = f"Method file {path} ({key})"
    if not path.is_file():
        default = "'general' for the starting method" if key == "optimize.start" else f"'{OPS}' for the operations"
        raise InputError(
            f"{where} {'is a directory' if path.is_dir() else 'not found'}; give a file written by evol optimize, "
            f"or {default}."
        )
    try:
        data = json.loads(read_text_file(path))
    except json.JSONDecodeError as err:
        raise InputError(f"{where} is not JSON ({err.msg} at line {err.lineno}).") from None
    if not isinstance(data, dict):
        raise InputError(f"{where} must hold a JSON object with 'format' and 'text'.")
    if data.get("format") != FORMAT:
        found = f"its 'format' is {data['format']!r}, not" if "format" in data else "it has no 'format',"
        raise InputError(f"{where} is not an evolving method: {found} {FORMAT!r}.")
    problem = text_problem(data.get("text"))
    if problem:
        raise InputError(f"{where}: {problem}, where the instruction to evolve goes.")
    for key, kind in (("lineage", dict), ("history", list), ("name", str)):
        if key in data and not isinstance(data[key], kind):
            raise InputError(f"{where}: its {key!r} must be a JSON {'object' if kind is dict else kind.__name__}.")
    if data.get("score") is not None and not isinstance(data["score"], dict):
        raise InputError(f"{where}: its 'score' must be a JSON object or null.")
    if "hash" in data and data["hash"] != Method(data["text"]).hash:
        raise InputError(
            f"{where}: its 'hash' {data['hash']!r} does not match its text (edited by hand?); "
            f"remove the 'hash' line or restore the text."
        )
    return Method(
        text=data["text"],
        name=data.get("name") or path.stem,
        lineage=data.get("lineage") or {},
        score=data.get("score"),
        history=data.get("history") or [],
    )


def resolve_method(setting: str) -> Method | None:
    """evolve.method: None for the hand-written operations, else the checked method file."""
    return None if setting == OPS else load_method(setting)


def describe(method: Method | None) -> dict:
    """What the manifest and the report say about the method of an evolution."""
    if method is None:
        return {"kind": OPS, "name": "hand-written operations", "hash": OPS}
    return {"kind": "method", "name": method.name, "hash": method.hash}
