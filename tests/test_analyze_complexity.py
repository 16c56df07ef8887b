"""The difficulty judge: prompt, request settings, constrained pattern and the tolerant parser."""

import re

import pytest

from eval.analysis.complexity import (
    DIFFICULTY_PROMPT,
    SCORE_REGEX,
    difficulty_request,
    parse_difficulty,
    rating_record,
)
from pipeline.config.analysis import AnalysisConfig
from pipeline.engine import ChatResult


@pytest.mark.parametrize(
    "text, score, method",
    [
        ("7\nSeveral constraints must be met at once.", 7, "first_line"),
        ("10\nExpert knowledge.", 10, "first_line"),
        ("**6**\nTwo parts.", 6, "first_line"),
        ("Difficulty: 4\nOne step.", 4, "first_line"),
        ("8/10", 8, "first_line"),
        ("3 - a single everyday step", 3, "leading"),
        ("I would rate this task a difficulty of 5 because it has parts.", 5, "labelled"),
        ("This is about a 6 out of 10 overall.", 6, "out_of_ten"),
    ],
)
def test_parse_difficulty_readable_forms(text, score, method):
    parsed = parse_difficulty(text)
    assert (parsed.score, parsed.method, parsed.error) == (score, method, None)


@pytest.mark.parametrize(
    "text, error",
    [
        ("", "empty judge output"),
        ("1. Open the file.\n2. Read it.", "no score found"),  # the judge did the task instead
        ("Snow falls softly on the hill.", "no score found"),
        ("Difficulty: 12", "score 12 is outside 1-10 (first_line)"),
        ("0\nTrivial.", "score 0 is outside 1-10 (first_line)"),
    ],
)
def test_parse_difficulty_failures_are_reasons_not_crashes(text, error):
    parsed = parse_difficulty(text)
    assert parsed.score is None and parsed.error == error


def test_constrained_pattern_accepts_the_format_and_the_parser_reads_it():
    pattern = re.compile(SCORE_REGEX)
    for text in ("7\nMany requirements at once.", "10\nExpert reasoning under tight limits."):
        assert pattern.fullmatch(text) and parse_difficulty(text).score == int(text.split()[0])
    for text in ("11\nToo high value.", "0\nZero is out.", "7 Many requirements on one line"):
        assert not pattern.fullmatch(text)


def test_request_is_greedy_constrained_and_clips_long_instructions():
    settings = AnalysisConfig(instruction_max_chars=50)
    request, cut = difficulty_request("a@r1", "Explain tides in detail. " * 10, settings, seed=42)
    assert cut and "in detail.\n[... cut for length ...]\n>>>" in request.prompt_text  # cut at 50, space trimmed
    assert request.temperature == 0.0 and request.top_p == 1.0 and request.regex == SCORE_REGEX
    assert request.max_tokens == settings.difficulty_max_tokens
    assert request.seed == difficulty_request("a@r1", "other", settings, seed=42)[0].seed
    free, cut = difficulty_request("b", "Short task.", AnalysisConfig(constrained_difficulty=False), seed=42)
    assert not cut and free.regex is None and "Short task." in free.prompt_text
    assert "Do not carry out the task" in DIFFICULTY_PROMPT


def test_rating_record_keeps_raw_text_and_marks_too_long():
    item = {"id": "x", "round": 2, "operation": "deepen"}
    ok = rating_record(item, ChatResult("x", "6\nTwo parts.", 10, 4, "stop"), False, "k")
    assert (ok["score"], ok["method"], ok["raw"], ok["round"], ok["rating_key"]) == (
        6,
        "first_line",
        "6\nTwo parts.",
        2,
        "k",
    )
    long = rating_record(item, ChatResult("x", "", 3000, 0, "too_long"), True, "k")
    assert long["score"] is None and "instruction_max_chars" in long["error"] and long["instruction_clipped"]
