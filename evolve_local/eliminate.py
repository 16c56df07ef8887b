"""The elimination rules of Evol-Instruct, each a small named function that returns why it fired
(a short sentence) or None.

    evol evolve --config configs/tiny.yaml --out runs/tiny      # applies these after each step

Rules on the evolved instruction run before anything else is generated for it, the model's
equality verdict next, rules on the answer last, and an item records the first rule that fired:

    too_long             the evolution prompt, the verdict prompt or the answer prompt did not fit
    no_information_gain  empty or unchanged evolution, or the model judged it EQUAL to its parent
    copied_prompt_words  the instruction repeats our prompt's labels or phrases ("given prompt"...),
                         or, evolved with an evolving method (evolve.method), METHOD_COPY_WORDS words
                         in a row of the method's own text that its parent did not hold
    refusal_short        the answer contains "sorry" and has fewer than `refusal_max_words` words
    stopwords_only       the answer is nothing but punctuation and stop words (maintained list)

A verdict that says neither EQUAL nor DIFFERENT is counted as unparsed and eliminates nothing.
`step_problem` is the survival rule of one step: the round files and the progress bar's kept%
both ask it, so they always agree.
Near-duplicates and test-set overlaps (`near_duplicate`, `contaminated`) are decided in dedup.py.
"""

from __future__ import annotations

import functools
import re

from evolve_local.prompts import MARKER_PHRASES, METHOD_PLACEHOLDER, METHOD_TAIL
from pipeline.core.records import (
    COPIED_PROMPT_WORDS,
    DIFFERENT,
    EQUAL,
    NO_INFORMATION_GAIN,
    REFUSAL_SHORT,
    STOPWORDS_ONLY,
    TOO_LONG_RULE,
    UNPARSED,
)
from pipeline.core.text import normalise as _normal
from pipeline.core.text import words
from pipeline.engine import TOO_LONG

# ---------------------------------------------------------------- rules on the instruction


def too_long(finish_reason: str, step: str) -> str | None:
    return f"the {step} prompt does not fit the context" if finish_reason == TOO_LONG else None


def unchanged_evolution(parent: str, evolved: str) -> str | None:
    """The cheap half of no_information_gain: nothing came back, or the same words came back."""
    if not words(evolved):
        return "the evolution is empty"
    if _normal(evolved) == _normal(parent):
        return "the evolution repeats its parent word for word"
    return None


def copied_prompt_words(instruction: str) -> str | None:
    lowered = instruction.lower()
    for phrase in MARKER_PHRASES:
        if phrase in lowered:
            return f"the instruction contains the prompt phrase {phrase!r}"
    return None


# An evolving method is a prompt of its own, written by a model: one that carries an example ("What is 15%
# of 240? The answer is 2.") gets it copied into the instructions it evolves, and those pass the fixed phrase
# list above. Measured on the tiny config: 8 of the 13 instructions a SmolLM2-written method kept held its
# example, and the lower failure rate this gave chose that method (BENCHMARKS.md, "Auto Evol-Instruct").
METHOD_COPY_WORDS = 4  # "the answer is 2": 3 words in a row matched phrases an instruction may hold by chance
METHOD_RULE_VERSION = f"copied-method-words-{METHOD_COPY_WORDS}"  # in the evolve key of a method's evolution


def _runs_of_words(text: str) -> set[tuple[str, ...]]:
    tokens = [w.lower() for w in words(text)]
    return {tuple(tokens[i : i + METHOD_COPY_WORDS]) for i in range(len(tokens) - METHOD_COPY_WORDS + 1)}


@functools.lru_cache(maxsize=16)
def method_phrases(method_text: str) -> frozenset[tuple[str, ...]]:
    """Every METHOD_COPY_WORDS words in a row of a method's own text (its tail's labels and the
    {instruction} placeholder left out, as the phrase list covers the labels), but runs of stop words
    alone ("and it must be"), which an instruction may say without copying anything."""
    own = method_text.replace(METHOD_TAIL.strip(), "\n").replace(METHOD_PLACEHOLDER, "\n")
    return frozenset(run for run in _runs_of_words(own) if not all(w in stop_words() for w in run))


def copied_method_words(instruction: str, parent: str, method_text: str | None) -> str | None:
    """The evolution repeats words of the method that evolved it, words its parent did not hold."""
    if not method_text:
        return None
    copied = (_runs_of_words(instruction) - _runs_of_words(parent)) & method_phrases(method_text)
    if copied:
        return f"the instruction repeats the method's words {' '.join(min(copied))!r}"
    return None


# ---------------------------------------------------------------- the equality verdict

_DIFFERENT = re.compile(r"\b(different|differ|not\s+equal|unequal|not\s+the\s+same)\b")
_EQUAL = re.compile(r"\b(equal|same|identical|equivalent)\b")


def parse_verdict(text: str) -> str:
    """EQUAL / DIFFERENT from the first line of the reply; anything else is UNPARSED."""
    head = text.strip().lower().split("\n", 1)[0][:80] if text.strip() else ""
    different, equal = _DIFFERENT.search(head), _EQUAL.search(head)
    if different and (not equal or different.start() <= equal.start()):
        return DIFFERENT  # "not equal" holds "equal" too: the earlier match is the verdict
    if equal:
        return EQUAL
    return UNPARSED


def judged_equal(verdict: str, verdict_text: str) -> str | None:
    if verdict == EQUAL:
        return f"the model judged it equal to its parent ({verdict_text.strip()[:40]!r})"
    return None


# ---------------------------------------------------------------- rules on the answer


def refusal_short(answer: str, max_words: int = 80) -> str | None:
    count = len(words(answer))
    if "sorry" in answer.lower() and count < max_words:
        return f"the answer says 'sorry' in {count} words (< {max_words})"
    return None


@functools.lru_cache(maxsize=1)
def stop_words() -> frozenset[str]:
    from stop_words import get_stop_words

    return frozenset(w.lower() for w in get_stop_words("en"))


def stopwords_only(answer: str) -> str | None:
    tokens = [w.lower() for w in words(answer)]
    if all(t in stop_words() for t in tokens):
        return "the answer is empty" if not tokens else "the answer holds only stop words and punctuation"
    return None


# ---------------------------------------------------------------- the survival rule of each step

STEPS = ("evolve", "check", "answer")  # an attempt's requests, each needing the one before


def verdict_of(check: dict) -> str | None:
    """The parsed verdict of a finished check; None when the check prompt did not fit."""
    return None if check["finish_reason"] == TOO_LONG else parse_verdict(check["text"])


def step_problem(
    step: str, parent: str, result: dict, refusal_max_words: int, method_text: str | None = None
) -> tuple[str, str] | None:
    """(rule, why) of the first rule that eliminates an attempt at `step`, judged from that step's
    finished record ({"text", "finish_reason"}), the parent instruction and the evolving method's text
    (None: the six operations); None: it goes on."""
    text, finish = result["text"], result["finish_reason"]
    if step == "evolve":
        checks = (
            (TOO_LONG_RULE, lambda: too_long(finish, "evolution")),
            (NO_INFORMATION_GAIN, lambda: unchanged_evolution(parent, text)),
            (COPIED_PROMPT_WORDS, lambda: copied_prompt_words(text)),
            (COPIED_PROMPT_WORDS, lambda: copied_method_words(text, parent, method_text)),
        )
    elif step == "check":
        checks = (
            (TOO_LONG_RULE, lambda: too_long(finish, "equality check")),
            (NO_INFORMATION_GAIN, lambda: judged_equal(verdict_of(result), text)),
        )
    elif step == "answer":
        checks = (
            (TOO_LONG_RULE, lambda: too_long(finish, "answer")),
            (REFUSAL_SHORT, lambda: refusal_short(text, refusal_max_words)),
            (STOPWORDS_ONLY, lambda: stopwords_only(text)),
        )
    else:
        raise ValueError(f"unknown step {step!r}; expected one of {STEPS}")
    for rule, check in checks:
        detail = check()
        if detail:
            return rule, detail
    return None
