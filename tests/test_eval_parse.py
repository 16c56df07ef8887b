"""The judge output parser on well-formed, odd and broken texts."""

import pytest

from eval.judge_parse import parse_scores


@pytest.mark.parametrize(
    "text, first, second, method",
    [
        ("7 5\nAssistant 1 is right; Assistant 2 skips a step.", 7, 5, "first_line"),
        ("8, 6\nreason", 8, 6, "first_line"),
        ("**9 3**\n\nThe first reply is correct.", 9, 3, "first_line"),
        ("7/10 5/10\nok", 7, 5, "first_line"),
        ("Scores: 4 and 6", 4, 6, "first_line"),
        ("7.5 6.5\nclose call", 7.5, 6.5, "first_line"),
        ("Score A: 7\nScore B: 5\nA is better.", 7, 5, "labelled"),
        ("Assistant 1: 7 ... Assistant 2: 5", 7, 5, "labelled"),
        ("Assistant 2: 5\nAssistant 1: 9", 9, 5, "labelled"),  # labels, not positions, decide
        ("Both are fine.\nAssistant 1 gets 8/10. Assistant 2 gets 4 out of 10.", 8, 4, "labelled"),
        ("The score for assistant 1 is 9, the score for assistant 2 is 2.", 9, 2, "labelled"),
        ("I would give the first one 7/10 and the other one 3/10.", 7, 3, "out_of_ten"),
    ],
)
def test_reasonable_variants_parse(text, first, second, method):
    parsed = parse_scores(text)
    assert parsed.ok, parsed.error
    assert (parsed.first, parsed.second, parsed.method) == (first, second, method)


def test_explanation_is_the_text_after_the_score_line():
    parsed = parse_scores("6 9\nThe second reply handles the edge case.")
    assert parsed.explanation == "The second reply handles the edge case."


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "empty"),
        ("   \n  ", "empty"),
        ("Assistant 1 is better because it is more detailed.", "no pair"),
        ("7/10", "no pair"),  # a single score is not a verdict on the pair
        ("1. Assistant 1 provides a list\n2. Assistant 2 provides prose", "no pair"),
        ("0 5\nnone", "outside 1-10"),
        ("11 3", "outside 1-10"),
        ("Assistant 1: 12, Assistant 2: 4", "outside 1-10"),
    ],
)
def test_broken_outputs_fail_with_a_reason_and_never_raise(text, reason):
    parsed = parse_scores(text)
    assert not parsed.ok
    assert parsed.first is None and parsed.second is None and parsed.method is None
    assert reason in parsed.error


def test_both_score_parsers_share_the_scale_and_the_out_of_ten_rule():
    from eval.analysis.complexity import parse_difficulty
    from eval.scoreparse import out_of_ten, scale_error

    assert out_of_ten("clarity **7/10**, depth 6 out of 10, not 3/100") == [7.0, 6.0]
    assert out_of_ten("2.5/10") == [2.5]
    assert scale_error(10.0, "x") is None and scale_error(0.0, "labelled") == "score 0 is outside 1-10 (labelled)"
    assert parse_scores("11 5").error == scale_error(11.0, "first_line")
    assert parse_difficulty("11").error == scale_error(11.0, "first_line")
    assert parse_scores("It is 7/10 and then 4 out of 10.").method == "out_of_ten"
    assert parse_difficulty("It deserves 7 out of 10.").score == 7.0
