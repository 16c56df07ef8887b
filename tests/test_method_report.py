"""The evolving method in the report and the ablation of two runs (operations vs an optimised method),
built from scripted fake runs: the method named with its failure rate per optimisation step, the kept
rate per round with intervals, survival per rule, and a warning when the runs differ in more than the
method."""

import pytest
from click.testing import CliRunner

from eval.report.evaluation import render_markdown
from eval.report.method import method_comparison, method_section, newcombe, wilson
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
    ((header, rows),) = section.tables
    assert [row[0] for row in rows] == [0, 1, 2]
    for row, step in zip(rows, summary["history"]):
        assert f"{100 * step['failure_rate']:.1f}%" in row[2] and step["hash"] in row[1]


def test_the_ablation_compares_the_same_seeds_round_by_round_and_rule_by_rule(two_runs, tmp_path):
    ops, method, _ = two_runs
    section, data = method_comparison(ops, method)
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


def test_runs_that_differ_in_more_than_the_method_are_flagged(tmp_path):
    ops = evolve(tmp_path, "ops")
    other = evolve(tmp_path, "other", "run.seed=7")
    section, data = method_comparison(ops, other)
    assert data["differ_in"] == ["run_seed"] and section.paragraphs[1].startswith("Warning")


def test_evol_compare_methods_writes_the_comparison_and_refuses_an_unfinished_run(two_runs, tmp_path):
    ops, method, _ = two_runs
    result = CliRunner().invoke(main, ["compare-methods", str(ops), str(method)])
    assert result.exit_code == 0, result.output
    assert (method / "comparison.md").read_text().count("## ") == 2  # the ablation and the method
    assert read_json(method / "comparison.json")["per_round"]
    result = CliRunner().invoke(main, ["compare-methods", str(ops), str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "has no finished evolution" in result.output
    with pytest.raises(InputError):
        method_comparison(tmp_path / "nothing", ops)
