"""The evolving method in the report and the ablation of two runs (operations vs an optimised method),
built from scripted fake runs: the method named with its failure rate per optimisation step, the kept
rate per round with intervals, survival per rule, and a warning when the runs differ in more than the
method."""

import json

import pytest
from click.testing import CliRunner

from eval.report.evaluation import render_markdown
from eval.report.method import difficulty_ci, method_comparison, method_section, newcombe, wilson
from evolve_local.evolve import run_evolve
from evolve_local.inputs import load_inputs
from pipeline.cli import main
from pipeline.core.jsonio import InputError, read_json
from tests.test_optimize import OptFactory, opt_config, optimise


def evolve(tmp_path, name, *overrides):
    config = opt_config(tmp_path, *overrides)
    run_evolve(config, tmp_path / name, OptFactory().models, load_inputs(config), quiet=True)
    return tmp_path / name


@pytest.fixture
def two_runs(tmp_path):
    summary, _ = optimise(tmp_path)
    best = tmp_path / "opt" / "best_method.json"
    return evolve(tmp_path, "ops"), evolve(tmp_path, "method", f"evolve.method={best}"), summary


def test_wilson_and_newcombe_intervals():
    low, high = wilson(0, 10)
    assert low == 0 and high == pytest.approx(0.2775, abs=1e-4)
    low, high = wilson(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-4) and high == pytest.approx(0.7634, abs=1e-4)
    assert wilson(0, 0) is None
    low, high = newcombe(2, 10, 8, 10)  # B kept 60 points more
    assert 0 < low < 0.6 < high < 1


def test_the_report_names_the_method_and_the_failure_rate_per_step(two_runs, tmp_path):
    ops, method, summary = two_runs
    assert "six hand-written operations" in method_section(ops).paragraphs[0]
    section = method_section(method)
    assert summary["chosen"] in section.paragraphs[0]
    assert section.code == [read_json(tmp_path / "opt" / "best_method.json")["text"]]  # the prompt itself
    ((header, rows),) = section.tables
    assert [row[0] for row in rows] == [0, 1, 2]
    for row, step in zip(rows, summary["history"]):
        assert f"{100 * step['failure_rate']:.1f}%" in row[2] and step["hash"] in row[1]


def test_the_ablation_compares_the_same_seeds_round_by_round_and_rule_by_rule(two_runs, tmp_path):
    ops, method, _ = two_runs
    (section,), data = method_comparison(ops, method)  # no report.json: the evolution only
    assert data["differ_in"] == [] and "same seeds" in section.paragraphs[1]
    stats_a, stats_b = read_json(ops / "evolve" / "stats.json"), read_json(method / "evolve" / "stats.json")
    assert [r["round"] for r in data["per_round"]] == [1, 2]
    for row in data["per_round"]:
        a, b = stats_a["rounds"][row["round"]], stats_b["rounds"][row["round"]]
        assert row["a"]["kept"] == a["kept"] and row["b"]["attempted"] == b["attempted"]
        low, high = row["b_kept_ci"]
        assert low <= b["kept"] / b["attempted"] <= high
    text = render_markdown("t", [section], tmp_path)
    assert "| no_information_gain |" in text and "B - A" in text
    assert data["b"]["method"]["kind"] == "method" and data["a"]["method"]["kind"] == "ops"


def test_the_run_report_says_what_the_evolver_rewrote_with(two_runs):
    from pipeline.report import _evolved_with

    ops, method, summary = two_runs
    assert _evolved_with(ops) == "the hand-written operations"
    assert _evolved_with(method) == f"the evolving method {read_json(method / 'evolve' / 'method.json')['name']}"


def test_runs_that_differ_in_more_than_the_method_are_flagged(tmp_path):
    ops = evolve(tmp_path, "ops")
    other = evolve(tmp_path, "other", "run.seed=7")
    (section,), data = method_comparison(ops, other)
    assert data["differ_in"] == ["run_seed"] and section.paragraphs[1].startswith("Warning")


def test_evol_compare_methods_writes_the_comparison_and_refuses_an_unfinished_run(two_runs, tmp_path):
    ops, method, _ = two_runs
    result = CliRunner().invoke(main, ["compare-methods", str(ops), str(method)])
    assert result.exit_code == 0, result.output
    assert (method / "comparison.md").read_text().count("## ") == 2  # the evolution and the method
    assert read_json(method / "comparison.json")["per_round"]
    result = CliRunner().invoke(main, ["compare-methods", str(ops), str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "has no finished evolution" in result.output
    with pytest.raises(InputError):
        method_comparison(tmp_path / "nothing", ops)


def _report(run_dir, capacity, strict, distribution):
    """A report.json with what compare-methods reads from it: C1's judge scores, verified accuracy of
    C0 and C1, and round 1's difficulty histogram and diversity."""
    block = {"capacity_pct": capacity, "capacity_pct_ci": [capacity - 5, capacity + 5], "win_rate": 0.25}
    verified = {
        label: {"prompt_strict": {"value": strict, "ci": [strict - 0.1, strict + 0.1]}, "scored": 15}
        for label in ("C1", "C0")
    }
    per_round = [{"round": 1, "difficulty": {"mean": 7.0, "rated": 3, "distribution": distribution}, "diversity": {}}]
    report = {
        "ablation": [{"rounds": 1, "vs_C0": block, "vs_reference": None}],
        "verified": {"ifbench": verified},
        "analysis": {"per_round": per_round},
    }
    (run_dir / "report.json").write_text(json.dumps(report))


def test_the_downstream_scores_and_the_analysis_stand_in_columns_of_their_own_with_intervals(two_runs, tmp_path):
    ops, method, _ = two_runs
    _report(ops, 95.0, 0.2, {"1": 1, "10": 2})
    _report(method, 101.5, 0.4, {"7": 3})
    evolution, downstream, analysis = method_comparison(ops, method)[0]
    assert downstream.title.endswith("downstream scores per fine-tune") and len(downstream.paragraphs) == 1
    ((header, rows),) = downstream.tables
    assert header == ["C<k>", "measure", "A [95% CI]", "B [95% CI]"]
    assert rows[0] == ["C1", "capacity vs C0", "95.0% [90.0, 100.0]", "101.5% [96.5, 106.5]"]
    assert len(rows) == 1 + 2  # C1 against the reference was not judged; IFBench for C0, then C1
    assert [r[0] for r in rows[1:]] == ["C0", "C1"]
    assert rows[2][2:] == ["20.0% [10.0, 30.0] of 15", "40.0% [30.0, 50.0] of 15"]
    ((header, rows),) = analysis.tables
    # 1, 10, 10: mean 7, sd sqrt(27), t(0.975, 2) = 4.303: 7 -+ 12.9, kept within the 1-10 scale
    assert rows == [[1, "7.00 [1.00, 10.00] (3)", "7.00 [7.00, 7.00] (3)", "-", "-"]]
    assert difficulty_ci({"distribution": {"6": 2, "8": 2}}) == pytest.approx(
        (5.1626, 8.8374), abs=1e-3
    )  # 7 -+ 3.182 * 1.155 / 2
    assert (
        difficulty_ci({"distribution": {"7": 3}}) == (7.0, 7.0) and difficulty_ci({"distribution": {"7": 1}}) is None
    )
    text = render_markdown("t", [evolution, downstream, analysis], tmp_path)
    assert text.index("Downstream, each fine-tune") < text.index("| C<k> | measure |")  # words above their table
