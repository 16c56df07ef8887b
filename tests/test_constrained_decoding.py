"""Answers a program must read (the equality verdict, the judge's two scores) are constrained by
the engine's structured outputs unless the config turns that off."""

import re

from eval.judge import SCORE_LINE_REGEX, order_request
from evolve_local.evolve import run_evolve
from pipeline.config import load_config
from tests.conftest import Factory, make_config


def verdict_requests(factory):
    return [r for r in factory.requests if "EQUAL or DIFFERENT" in r.prompt_text]


def test_equality_verdict_is_constrained_to_the_two_words(tmp_path):
    factory = Factory()
    run_evolve(make_config(tmp_path), tmp_path / "run", factory.models, quiet=True)
    checks = verdict_requests(factory)
    assert checks and all(r.choice == ["EQUAL", "DIFFERENT"] and r.temperature == 0.0 for r in checks)
    others = [r for r in factory.requests if r not in checks]
    assert others and all(r.choice is None and r.regex is None for r in others)

    free = Factory()
    run_evolve(make_config(tmp_path, "evolve.constrained_verdict=false"), tmp_path / "run2", free.models, quiet=True)
    assert all(r.choice is None for r in verdict_requests(free))


def test_judge_first_line_is_forced_to_two_scores():
    item = {"instruction": "Add 2 and 2.", "answer": "4"}
    request, _ = order_request("7", "AB", item, {"instruction": "Add 2 and 2.", "answer": "5"}, load_config())
    assert request.regex == SCORE_LINE_REGEX and request.temperature == 0.0
    assert re.fullmatch(SCORE_LINE_REGEX, "9 2\nThe first reply is right; the second adds wrongly.")
    assert re.fullmatch(SCORE_LINE_REGEX, "10 1\nCorrect versus wrong.\nNothing else to add.")
    for bad in ("11 2\nBecause.........", "0 5\nBecause.........", "7\nOnly one score here", "7 5"):
        assert not re.fullmatch(SCORE_LINE_REGEX, bad)
    request, _ = order_request("7", "BA", item, item, load_config(None, ["eval.constrained_judge=false"]))
    assert request.regex is None
