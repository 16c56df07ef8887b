"""Bootstrap intervals and paired significance on constructed verdict sets whose answer is known."""

import re
from pathlib import Path

import pytest

from eval.judge import judge_pairs
from eval.report.ablation import difference_sentence
from eval.report.evaluation import load_scores
from eval.scores import Aggregation, aggregate, paired_difference, rescore
from pipeline.config import Config
from pipeline.core.jsonio import InputError, read_json, read_jsonl
from pipeline.engine.fake import FakeEngine
from pipeline.report import write_run_report
from tests.conftest import shown, write_answers


def verdicts(*pattern: tuple[str, int, float, float]) -> list[dict]:
    """(verdict, count, score_a, score_b) groups -> judgment rows with ids 0..n-1."""
    rows = []
    for verdict, count, a, b in pattern:
        rows += [{"verdict": verdict, "score_a": a, "score_b": b, "status": "judged"} for _ in range(count)]
    return [{**row, "id": str(i), "category": "Math", "difficulty": 5} for i, row in enumerate(rows)]


def test_all_ties_give_a_point_interval():
    o = aggregate(verdicts(("tie", 30, 6, 6)), {"a": "C1", "b": "C0"}, resamples=500, seed=1)["overall"]
    assert o["tie_rate_ci"] == [1.0, 1.0] and o["win_rate_ci"] == [0.0, 0.0] and o["lose_rate_ci"] == [0.0, 0.0]
    assert o["capacity_pct_ci"] == [100.0, 100.0]


def test_a_clear_win_set_excludes_even_odds_and_a_split_set_does_not():
    clear = aggregate(verdicts(("win", 34, 8, 4), ("lose", 6, 4, 8)), resamples=1000, seed=3)["overall"]
    assert clear["win_rate"] == 0.85 and clear["win_rate_ci"][0] > 0.5 and clear["capacity_pct_ci"][0] > 100
    assert clear["win_rate_ci"][0] < 0.85 < clear["win_rate_ci"][1]
    split = aggregate(verdicts(("win", 20, 8, 4), ("lose", 20, 4, 8)), resamples=1000, seed=3)["overall"]
    assert split["win_rate_ci"][0] < 0.5 < split["win_rate_ci"][1]
    assert split["capacity_pct_ci"][0] < 100 < split["capacity_pct_ci"][1]


def test_intervals_are_seeded_and_every_block_has_them():
    rows = verdicts(("win", 10, 8, 4), ("tie", 5, 6, 6), ("lose", 5, 3, 7))
    first, again = (aggregate(rows, {"a": "C1", "b": "C0"}, resamples=200, seed=7) for _ in range(2))
    assert first == again
    other = aggregate(rows, {"a": "C1", "b": "C0"}, resamples=200, seed=8)
    assert other["overall"]["capacity_pct_ci"] != first["overall"]["capacity_pct_ci"]
    for block in (first["per_skill"]["Math"], first["per_difficulty"]["5"]):
        assert block["win_rate_ci"] and block["capacity_pct_ci"]
    assert first["bootstrap"] == {**first["bootstrap"], "resamples": 200, "seed": 7}
    none = aggregate(rows, resamples=0)["overall"]
    assert none["win_rate_ci"] is None and none["win_rate"] == 0.5


def test_intervals_are_recomputed_for_another_resample_count_without_rejudging():
    rows = verdicts(("win", 10, 8, 4), ("lose", 10, 4, 8))
    scores = aggregate(rows, {"a": "C1", "b": "C0", "judge_model": "j"}, resamples=0, seed=5)
    redone, same_rows = rescore(scores, rows, Aggregation(resamples=300, seed=5))
    assert same_rows == rows
    assert redone["judge_model"] == "j" and redone["overall"]["win"] == 10
    assert redone["overall"]["win_rate_ci"] and redone["bootstrap"]["resamples"] == 300


@pytest.mark.parametrize(
    "second, significant",
    [
        (verdicts(("win", 36, 8, 4), ("tie", 4, 6, 6)), True),  # C_b clearly better than C_a
        (verdicts(("win", 14, 8, 4), ("lose", 13, 4, 8), ("tie", 13, 6, 6)), False),  # the same as C_a
    ],
)
def test_paired_difference_of_two_rounds_against_one_baseline(second, significant):
    first = verdicts(("win", 13, 8, 4), ("lose", 13, 4, 8), ("tie", 14, 6, 6))
    diff = paired_difference(first, second, resamples=1000, seed=11)
    cap = diff["capacity_points"]
    assert diff["items"] == 40 and cap["significant"] is significant
    assert cap["ci"][0] <= cap["difference"] <= cap["ci"][1]
    sentence = difference_sentence("C2", "C1", "reference", diff)
    assert sentence.startswith(
        f"C2 vs C1 (both against reference): {cap['difference']:+.1f} capacity points, 95% CI ["
    )
    word = "significant" if significant else "not significant"
    assert f"]: {word} on 40 items" in sentence


def test_paired_difference_uses_only_items_judged_in_both():
    first = verdicts(("win", 5, 8, 4), ("tie", 5, 6, 6))
    second = verdicts(("win", 10, 8, 4))
    second[0]["verdict"] = None  # unjudged in the second comparison: left out of the pairing
    assert paired_difference(first, second, 100, 1)["items"] == 9
    assert paired_difference(first, [], 100, 1) is None


def judge_by_content(request):
    """'good' answers score 8, anything else 4, in both orders."""
    prompt = request.messages[-1]["content"]
    return f"{8 if shown(prompt, 1).startswith('good') else 4} {8 if shown(prompt, 2).startswith('good') else 4}\nok"


def graded_run(run: Path) -> Config:
    """A run whose models answer 0, 0, 20 and 40 of 40 items well (reference, C0, C1, C2), judged by a
    scripted judge that scores a good answer 8 and any other 4; its report written."""
    items = [{"id": str(i), "instruction": f"Task {i}.", "category": "Math", "difficulty": 5} for i in range(40)]
    quality = {"reference": 0, "C0": 0, "C1": 20, "C2": 40}  # how many items each model answers well
    dirs = {
        label: write_answers(
            run / "answers" / label, label, {str(i): "good" if i < n else "bad" for i in range(40)}, items
        )
        for label, n in quality.items()
    }
    config = Config()
    config.run.rounds = [0, 1, 2]
    config.eval.bootstrap_resamples = 400
    pairs = [("C1", "C0"), ("C2", "C0"), ("C0", "reference"), ("C1", "reference"), ("C2", "reference")]
    for a, b in pairs:
        judge_pairs(config, [(dirs[a], dirs[b])], run / "judge", "fake-judge", engine=FakeEngine(judge_by_content))[0]
    write_run_report(run, config)
    return config


def test_run_report_shows_intervals_and_significance_lines(tmp_path):
    run = tmp_path / "run"
    config = graded_run(run)
    md = (run / "report.md").read_text()
    assert "C2 vs C1 (both against reference): +" in md and "C2 vs C1 (both against C0): +" in md
    assert re.search(
        r"C2 vs C1 \(both against reference\): \+\d+\.\d capacity points, 95% CI \[[\d.]+, [\d.]+\]: "
        r"significant on 40 items",
        md,
    )
    assert "C0 vs reference" in md and "100.0% [100.0, 100.0]" in md  # identical answers: a point interval
    assert "C1 vs C0 (judged directly): capacity" in md and "significant on 40 items." in md
    report = read_json(run / "report.json")
    rows = {r["rounds"]: r for r in report["ablation"]}
    assert rows[2]["vs_reference"]["capacity_pct_ci"][0] > 100 and rows[0]["vs_reference"]["win_rate_ci"] == [0, 0]
    pairs_seen = {(d["a"], d["b"], d["baseline"]) for d in report["round_differences"]}
    assert pairs_seen == {
        ("C0", "C1", "reference"),
        ("C0", "C2", "reference"),
        ("C1", "C2", "reference"),
        ("C1", "C2", "C0"),
    }
    assert all(d["capacity_points"]["significant"] for d in report["round_differences"])
    # The judge's scores.json was written with 400 draws: the report reused it, nothing was re-judged.
    scores = load_scores(run / "judge" / "C2__vs__reference", Aggregation.of(config))
    assert scores == read_json(run / "judge" / "C2__vs__reference" / "scores.json")
    assert len(read_jsonl(run / "judge" / "C2__vs__reference" / "orders.jsonl")) == 80


def test_a_negative_resample_count_is_refused_before_the_judge_loads(tmp_path):
    config = Config()
    config.eval.bootstrap_resamples = -5
    engine = FakeEngine(judge_by_content)
    with pytest.raises(InputError, match="eval.bootstrap_resamples must be 0 .* got -5"):
        judge_pairs(config, [(tmp_path / "a", tmp_path / "b")], tmp_path / "judge", "j", engine=engine)[0]
    assert engine.calls == 0


def test_the_headline_names_the_best_round_count_first(tmp_path):
    """report.md opens with the headline: a row per model, a column per instrument; C2 wins on the judge,
    significantly after Holm's correction over its two comparisons with C0; the scripted judge is healthy."""
    run = tmp_path / "run"
    graded_run(run)
    md = (run / "report.md").read_text()
    assert md.index("## Headline: which round count wins") < md.index("## Summary")
    head = read_json(run / "report.json")["headline"]
    win = next(i for i in head["instruments"] if i["name"] == "win rate vs reference")
    assert win["best"] == "C2" and win["differences_from_C0"]["C2"]["significant_holm"]
    assert win["correction"] == "Holm over 2 comparisons with C0" and win["n"] == 40
    assert "win rate vs reference: C2 scores highest" in md and "significant (p " in md
    assert head["judge"]["uninformative"] is False and head["judge"]["tie_rate"] < 0.9
    assert {i["name"] for i in head["instruments"]} >= {"capacity vs reference (%)", "Bradley-Terry strength"}
