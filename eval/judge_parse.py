"""Read the two 1-10 scores out of a judge's raw text, tolerant of the ways models bend the format.

    parsed = parse_scores("7 5\\nAssistant 1 is correct; Assistant 2 misses the second part.")
    parsed.first, parsed.second, parsed.method   # 7.0, 5.0, "first_line"

Tried in order, the first that yields two scores wins:
  first_line  the first non-empty line is two numbers: "7 5", "7, 5", "7/10 5/10", "Scores: 7 and 5"
  labelled    a label, then a number: "Assistant 1: 7 ... Assistant 2: 5", "Score A: 7", "Answer 2 gets 5/10"
  out_of_ten  two "N/10" or "N out of 10" anywhere, taken in order of appearance
Anything else, or a score outside 1-10, is a failure with a reason: recorded and counted by the
caller, never raised. A small judge (SmolLM2-135M) fails often; that must show in the numbers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from eval.scoreparse import NUMBER, OF_TEN, out_of_ten, scale_error, undecorated

FIRST_LINE = re.compile(
    rf"^(?:scores?\s*[:=]?\s*)?{NUMBER}{OF_TEN}\s*(?:[,;]|\s|\band\b|\bvs\.?)+\s*{NUMBER}{OF_TEN}\s*\.?$",
    re.IGNORECASE,
)
LABELLED = re.compile(
    rf"(?:(?:assistant|answer|response|reply|score)\s*(?:#|no\.?)?\s*(1|2|a|b)\b"
    rf"|score\s+(?:for|of)\s+(?:assistant|answer|response|reply)\s*(1|2|a|b)\b)"
    rf"[^0-9\n.]{{0,40}}?{NUMBER}{OF_TEN}",
    re.IGNORECASE,
)
EXPLANATION_CHARS = 600


@dataclass
class ParsedScores:
    first: float | None  # score of the answer shown as Assistant 1
    second: float | None
    method: str | None  # which rule matched; None: a failure
    error: str | None  # why parsing failed; None: it worked
    explanation: str

    @property
    def ok(self) -> bool:
        return self.error is None


def _failure(reason: str, text: str) -> ParsedScores:
    return ParsedScores(None, None, None, reason, text.strip()[:EXPLANATION_CHARS])


def _first_line(lines: list[str]) -> tuple[float, float] | None:
    first = undecorated(lines[0]).strip()
    match = FIRST_LINE.match(first)
    return (float(match.group(1)), float(match.group(2))) if match else None


def _labelled(text: str) -> tuple[float, float] | None:
    found: dict[str, float] = {}
    for match in LABELLED.finditer(undecorated(text)):
        which = (match.group(1) or match.group(2)).lower()
        slot = "1" if which in ("1", "a") else "2"
        found.setdefault(slot, float(match.group(3)))  # the first mention of each label counts
    return (found["1"], found["2"]) if len(found) == 2 else None


def _out_of_ten(text: str) -> tuple[float, float] | None:
    numbers = out_of_ten(text)
    return (numbers[0], numbers[1]) if len(numbers) >= 2 else None


def parse_scores(text: str) -> ParsedScores:
    if not text or not text.strip():
        return _failure("empty judge output", text or "")
    lines = [line for line in text.strip().splitlines() if line.strip()]
    rules = (
        ("first_line", lambda: _first_line(lines), "\n".join(lines[1:])),
        ("labelled", lambda: _labelled(text), text),
        ("out_of_ten", lambda: _out_of_ten(text), text),
    )
    for method, rule, explanation in rules:
        scores = rule()
        if scores is None:
            continue
        error = next(filter(None, (scale_error(score, method) for score in scores)), None)
        if error:
            return _failure(error, text)
        return ParsedScores(scores[0], scores[1], method, None, explanation.strip()[:EXPLANATION_CHARS])
    return _failure("no pair of scores found", text)
