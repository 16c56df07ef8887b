"""The length-controlled win rate (eval/length_control.py) on synthetic verdicts, and its place in scores.json."""

import warnings

import numpy as np
import pytest

from eval.judge import recount
from eval.length_control import answer_lengths, length_controlled
from eval.scores import Aggregation, aggregate, rescore
from pipeline.core.jsonio import read_json, write_json, write_jsonl


def verdicts(labels):
    return [{"id": str(i), "verdict": v} for i, v in enumerate(labels)]


def lengths_of(a, b):
    return {str(i): (int(x), int(y)) for i, (x, y) in enumerate(zip(a, b))}, "tokens"


def test_wins_that_come_only_with_longer_answers_are_mostly_explained_by_length():
    # 200 items, A longer on 150 of them and winning exactly those: the win is the length
    diff = np.linspace(-100, 300, 200).round()
    judged = verdicts(["win" if d > 0 else "lose" for d in diff])
    lc = length_controlled(judged, lengths_of(200 + diff, np.full(200, 200)), resamples=200, seed=1)
    assert lc["fitted"] and lc["note"] is None and lc["unit"] == "tokens"
    assert lc["raw_win_rate"] == pytest.approx(0.745, abs=0.01)
    assert lc["lc_win_rate"] < lc["raw_win_rate"] - 0.15
    assert lc["explained_points"] > 15 and lc["explained_points_ci"][0] > 0
    assert lc["slope"] > 0
    low, high = lc["lc_win_rate_ci"]
    assert low <= lc["lc_win_rate"] <= high


def test_lengths_unrelated_to_the_verdicts_leave_the_win_rate_as_it_is():
    pattern = ["win", "win", "tie", "lose", "win"] * 40  # raw (ties half) 0.7
    diff = np.tile([-50, 10, 80, -20, 30, 0, 60], 30)[:200]  # period 7 against period 5: independent
    lc = length_controlled(verdicts(pattern), lengths_of(300 + diff, np.full(200, 300)), resamples=200, seed=1)
    assert lc["fitted"] and lc["raw_win_rate"] == 0.7
    assert abs(lc["lc_win_rate"] - lc["raw_win_rate"]) < 0.03
    assert abs(lc["explained_points"]) < 3


def test_all_ties_give_fifty_and_all_wins_a_hundred_without_a_fit_or_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ties = length_controlled(verdicts(["tie"] * 30), lengths_of(range(30), [15] * 30), resamples=100, seed=3)
        wins = length_controlled(verdicts(["win"] * 30), lengths_of(range(30), [15] * 30), resamples=100, seed=3)
    assert ties["lc_win_rate"] == ties["raw_win_rate"] == 0.5 and ties["lc_win_rate_ci"] == [0.5, 0.5]
    assert wins["lc_win_rate"] == 1.0 and wins["explained_points"] == 0.0
    assert not ties["fitted"] and "same verdict" in ties["note"]


def test_a_constant_length_difference_cannot_be_fitted_and_lc_equals_raw():
    judged = verdicts(["win", "lose", "tie", "win"] * 10)
    lc = length_controlled(judged, lengths_of([120] * 40, [100] * 40), resamples=100, seed=3)
    assert not lc["fitted"] and "cannot be fitted" in lc["note"]
    assert lc["lc_win_rate"] == lc["raw_win_rate"] == 0.625
    assert lc["lc_win_rate_ci"] == lc["raw_win_rate_ci"] and lc["explained_points_ci"] == [0.0, 0.0]


def test_a_bootstrap_draw_of_one_verdict_value_is_the_raw_rate_of_that_draw():
    # 19 wins and one loss: many draws hold only wins, whose fit would run off to infinity
    judged = verdicts(["win"] * 19 + ["lose"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lc = length_controlled(judged, lengths_of(range(20), [10] * 20), resamples=300, seed=5)
    assert lc["fitted"] and lc["lc_win_rate_ci"][1] == 1.0
    assert not any(np.isnan(v) for v in lc["lc_win_rate_ci"])


def test_tokens_when_every_answer_has_them_else_characters():
    a = [{"id": 1, "answer": "abcd", "completion_tokens": 3}, {"id": 2, "answer": "ab", "completion_tokens": 1}]
    b = [{"id": 2, "answer": "abcdef", "completion_tokens": 2}, {"id": 1, "answer": "", "completion_tokens": 0}]
    assert answer_lengths(a, b) == ({"1": (3, 0), "2": (1, 2)}, "tokens")
    del b[0]["completion_tokens"]
    assert answer_lengths(a, b) == ({"1": (4, 0), "2": (2, 6)}, "characters")


def test_scores_json_carries_it_and_a_recount_adds_it_to_an_older_scores_json(tmp_path):
    judged = [
        {"id": str(i), "verdict": v, "status": "judged", "score_a": 1, "score_b": 1, "category": "x"}
        for i, v in enumerate(["win", "lose"] * 5)
    ]
    lengths = lengths_of([10, 5] * 5, [5, 10] * 5)
    scores = aggregate(judged, {"a": "C1", "b": "C0"}, resamples=50, seed=1, lengths=lengths)
    block = scores["overall"]["length_controlled"]
    assert block["n"] == 10 and block["raw_win_rate"] == 0.5 and block["unit"] == "tokens"
    assert "length_controlled" not in scores["per_skill"]["x"]
    # a judge directory written before the length control: recount adds it from the answers files
    run = tmp_path / "run"
    for label, lens in (("C1", [10, 5]), ("C0", [5, 10])):
        answers = [{"id": str(i), "answer": "x" * lens[i % 2], "completion_tokens": lens[i % 2]} for i in range(10)]
        write_jsonl(run / "answers" / label / "answers.jsonl", answers)
    judge_dir = run / "judge" / "C1__vs__C0"
    old = aggregate(judged, {"a": "C1", "b": "C0", "single_order_fallback": True}, resamples=50, seed=1)
    del old["overall"]["length_controlled"]
    write_json(judge_dir / "scores.json", old)
    write_jsonl(judge_dir / "judgments.jsonl", judged)
    again = recount(judge_dir, Aggregation(resamples=50, seed=1))
    assert again["overall"]["length_controlled"] == block
    assert read_json(judge_dir / "scores.json")["overall"]["length_controlled"] == block
    # nothing changed since: the same objects come back, nothing is recounted
    assert rescore(again, judged, Aggregation(resamples=50, seed=1), lengths)[0] is again


def test_the_paired_lc_difference_refits_both_comparisons_on_their_common_items():
    from eval.length_control import paired_lc_difference

    # Lengths constant across items: no length term, so LC is the raw rate and the difference is raw's:
    # C0 wins 40 of 100 against the reference, C2 wins 70 of the same 100 (and one item only C2 was judged on)
    first = verdicts(["win"] * 40 + ["lose"] * 60)
    second = verdicts(["win"] * 70 + ["lose"] * 30) + [{"id": "extra", "verdict": "win"}]
    same = lengths_of(np.full(100, 120), np.full(100, 100))
    extra = ({**same[0], "extra": (5, 5)}, "tokens")
    diff = paired_lc_difference(first, second, (same, extra), resamples=400, seed=3)
    assert diff["items"] == 100 and diff["difference"] == pytest.approx(30.0)
    low, high = diff["ci"]
    assert low <= 30.0 <= high and low > 0 and diff["significant"]
    # Wins that come with longer answers: C2's raw gain is mostly length, so its LC gain is smaller than its raw one
    d = np.linspace(-100, 300, 200).round()
    longer = verdicts(["win" if x > 0 else "lose" for x in d])
    even = verdicts(["win" if i % 2 else "lose" for i in range(200)])
    lengths_even = lengths_of(np.full(200, 200), np.full(200, 200) + (np.arange(200) % 7))
    lengths_longer = lengths_of(200 + d, np.full(200, 200))
    lc = paired_lc_difference(even, longer, (lengths_even, lengths_longer), resamples=0, seed=0)
    raw_gain = 100 * (sum(x > 0 for x in d) / 200 - 0.5)
    assert lc["ci"] is None and lc["difference"] < raw_gain - 10
    assert paired_lc_difference(first, second, (same, ({}, "tokens")), 10, 0) is None  # no common item
