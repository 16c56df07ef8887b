"""The headline's statistics against hand-computed values, and the instrument health flags on fixtures.

Hand computations (normal approximation): z(0.975) = 1.959964, z(0.80) = 0.841621, their sum 2.801585.
MDD(sd 0.5, n 218) = 2.801585 * 0.5 / sqrt(218) = 0.094874; items for 5 points at sd 0.5:
ceil((2.801585 * 0.5 / 0.05)^2) = ceil(784.888) = 785; at sd 70.71 points (the pass/fail default):
ceil((2.801585 * 70.71 / 5)^2) = ceil(1569.7) = 1570. A 95% interval [-2, 6] holds se = 8 / 3.919928 =
2.040854, so sd on 100 items = 20.40854, and the difference 2 has p = 2 (1 - Phi(0.979982)) = 0.32709.
"""

import json

import pytest

from eval.power import (
    holm,
    items_needed,
    minimum_detectable_difference,
    p_value,
    paired_sd,
    sd_from_interval,
    z_sum,
)
from eval.report.headline import Instrument, assess, judge_health, verified_health


def test_detectable_difference_and_sample_size_match_the_hand_computation():
    assert z_sum() == pytest.approx(2.801585, abs=1e-6)
    assert minimum_detectable_difference(0.5, 218) == pytest.approx(0.094874, abs=1e-6)
    assert items_needed(0.5, 0.05) == 785
    assert items_needed(70.71, 5) == 1570
    assert items_needed(0.0, 5) is None  # no variance measured: no claim
    assert minimum_detectable_difference(0.5, 0) is None
    assert sd_from_interval([-2, 6], 100) == pytest.approx(20.40854, abs=1e-4)
    assert p_value(2, [-2, 6]) == pytest.approx(0.32709, abs=1e-4)
    assert paired_sd([1, 0, -1, 0]) == pytest.approx(0.816497, abs=1e-6)  # sqrt(2/3)


def test_holm_on_a_worked_example():
    # m = 4 at alpha 0.05: thresholds 0.0125, 0.01667, 0.025, 0.05 for the sorted p-values
    assert holm([0.01, 0.04, 0.03, 0.005]) == [True, False, False, True]  # 0.005, 0.01 pass; 0.03 > 0.025 stops
    assert holm([0.005, 0.011, 0.02, 0.04]) == [True, True, True, True]
    assert holm([0.02, 0.03]) == [True, True]  # m = 2: 0.02 <= 0.025, then 0.03 <= 0.05
    assert holm([0.03, 0.02, 0.2]) == [False, False, False]  # m = 3: the smallest, 0.02, exceeds 0.0167


def write_scores(run_dir, name, n, ties, consistent, unparsed, orders):
    folder = run_dir / "judge" / name
    folder.mkdir(parents=True)
    scores = {
        "overall": {"n": n, "tie": ties, "win": n - ties, "lose": 0},
        "position_consistency": {"pairs_with_both_orders": n, "consistent": consistent},
        "judge_failures": {"orders_total": orders, "orders_unparsed": unparsed},
    }
    (folder / "scores.json").write_text(json.dumps(scores))


@pytest.mark.parametrize(
    "ties, consistent, uninformative",
    [(10, 10, True), (2, 3, True), (3, 8, False)],
    ids=["all ties", "order flips", "healthy"],
)
def test_the_judges_health_flags(tmp_path, ties, consistent, uninformative):
    write_scores(tmp_path, "C1__vs__C0", 10, ties, consistent, unparsed=1, orders=20)
    health = judge_health(tmp_path)
    assert health["uninformative"] is uninformative
    assert health["tie_rate"] == ties / 10 and health["unparsed_share"] == 0.05


def test_unscorable_prompts_are_counted_with_why(tmp_path):
    folder = tmp_path / "verify" / "ifeval" / "C0"
    folder.mkdir(parents=True)
    lines = [{"id": "1", "strict": [True]}, {"id": "2", "strict": None, "unscorable": "needs NLTK data x"}]
    (folder / "checks.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert verified_health(tmp_path, ["ifeval"]) == {
        "ifeval": {"prompts": 2, "scored": 1, "unscorable": {"needs NLTK data x": 1}}
    }


def test_the_sentence_names_the_best_round_count_with_holm():
    cells = {
        "C0": {"value": 0.5, "ci": [0.4, 0.6]},
        "C1": {"value": 0.55, "ci": [0.45, 0.65]},
        "C2": {"value": 0.7, "ci": [0.6, 0.8]},
    }
    diffs = {"C1": {"difference": 5.0, "ci": [-3.0, 13.0]}, "C2": {"difference": 20.0, "ci": [10.0, 30.0]}}
    result = assess(Instrument("ifeval prompt-level strict", "verified", cells, 100.0, diffs, 200))
    assert result["best"] == "C2" and result["differences_from_C0"]["C2"]["significant_holm"]
    assert not result["differences_from_C0"]["C1"]["significant_holm"]
    assert "C2 scores highest (0.7 [0.6, 0.8]), +20.0 points over C0 [+10.0, +30.0], significant" in result["sentence"]
    assert "Holm over 2 comparisons with C0" in result["sentence"]
    # sd from the widest paired interval (C2's, 20 points): 20 / 3.919928 * sqrt(200) = 72.155;
    # MDD = 2.801585 * 72.155 / sqrt(200) = 14.294; items = ceil((2.801585 * 72.155 / 5)^2) = ceil(1634.5)
    assert result["minimum_detectable_difference_points"] == pytest.approx(14.294, abs=0.01)
    assert result["items_for_5_points"] == 1635


def test_compare_methods_headline_says_whether_the_intervals_tell_the_methods_apart():
    from eval.report.headline import methods_headline

    def report(c0, c2):
        cells = {"C0": c0, "C2": c2}
        return {"headline": {"instruments": [{"name": "ifeval prompt-level strict", "best": "C2", "cells": cells}]}}

    a = report({"value": 0.40, "ci": [0.35, 0.45]}, {"value": 0.50, "ci": [0.45, 0.55]})
    b = report({"value": 0.41, "ci": [0.36, 0.46]}, {"value": 0.70, "ci": [0.65, 0.75]})
    section, data = methods_headline(a, b)
    assert (
        section.title.startswith("Headline")
        and data[0]["apart"]
        and data[0]["sentence"].startswith("ifeval prompt-level strict: B scores higher")
    )
    close = report({"value": 0.40, "ci": [0.35, 0.45]}, {"value": 0.66, "ci": [0.55, 0.72]})
    _, data = methods_headline(close, b)
    assert not data[0]["apart"] and "not told apart" in data[0]["sentence"]
    assert methods_headline({}, b) == (None, [])  # a run without a headline yet: nothing to compare


def test_the_plan_sizes_a_config_before_spending(tmp_path):
    """evol run --plan: what each model answers, and what that detects, from the conservative defaults or
    from a finished run's measured variances (--like)."""
    from pipeline.config import load_config
    from pipeline.sizing import plan_sizes

    config = load_config("configs/tiny.yaml")
    rows, answers = plan_sizes(config)
    assert answers["models"] == ["reference", "C0", "C1", "C2"] and answers["test_items"] == 12
    assert answers["verified_prompts"] == {"ifeval": 16, "ifbench": 16}
    ifeval = next(r for r in rows if r["instrument"] == "ifeval prompt-level strict")
    # 2.801585 * 70.71 / sqrt(16) = 49.5 points; (2.801585 * 70.71 / 5)^2 = 1569.7 -> 1570
    assert (ifeval["sd_from"], ifeval["minimum_detectable_difference_points"]) == ("conservative default", 49.5)
    assert ifeval["needed_for_5_points"] == 1570
    like = tmp_path / "run"
    like.mkdir()
    measured = {
        "name": "ifeval prompt-level strict",
        "paired_sd_points": 30.0,
        "sd_source": "this run's paired differences",
    }
    (like / "report.json").write_text(json.dumps({"headline": {"instruments": [measured]}}))
    ifeval = next(r for r in plan_sizes(config, like)[0] if r["instrument"] == "ifeval prompt-level strict")
    # 2.801585 * 30 / 4 = 21.0; (2.801585 * 30 / 3)^2 = 784.9 -> 785 prompts for 3 points
    assert ifeval["minimum_detectable_difference_points"] == 21.0 and ifeval["needed_for_3_points"] == 785


def test_length_controlled_and_bradley_terry_carry_paired_differences_from_c0():
    from eval.report.headline import instruments

    lc_block = {"lc_win_rate": 0.5, "lc_win_rate_ci": [0.4, 0.6]}
    row = {"win_rate": 0.5, "win_rate_ci": [0.4, 0.6], "capacity_pct": 100.0, "length_controlled": lc_block}
    diff = {"difference": 4.0, "ci": [-2.0, 10.0]}
    pieces = {
        "ablation": [{"label": f"C{k}", "vs_reference": row} for k in (0, 1)],
        "round_differences": [
            {
                "a": "C0",
                "b": "C1",
                "baseline": "reference",
                "items": 60,
                "win_rate_points": diff,
                "capacity_points": diff,
                "lc_win_rate_points": {**diff, "items": 58},
            }
        ],
        "bradley_terry": {
            "items": 60,
            "models": {
                "reference": {"strength": 0.0, "strength_ci": [0, 0], "vs_C0": {"difference": 0.1, "ci": [-0.2, 0.4]}},
                "C0": {"strength": -0.1, "strength_ci": [-0.3, 0.1], "vs_C0": None},
                "C1": {"strength": 0.3, "strength_ci": [0.1, 0.5], "vs_C0": {"difference": 0.4, "ci": [0.1, 0.7]}},
            },
        },
    }
    found = {i.name: i for i in instruments(pieces)}
    lc = found["length-controlled win rate vs reference"]
    assert lc.differences["C1"]["difference"] == 4.0 and lc.n == 58
    bt = found["Bradley-Terry strength"]
    assert list(bt.differences) == ["C1"] and bt.n == 60 and bt.unit == "logits"  # the reference is not a round
    result = assess(bt)
    assert "+0.40 logits over C0 [+0.10, +0.70], significant" in result["sentence"]
    assert result["unit"] == "logits" and "items_for_5_points" not in result  # 5 points mean nothing in logits
    # sd = 0.6 / 3.919928 * sqrt(60) = 1.1856; MDD = 2.801585 * 1.1856 / sqrt(60) = 0.4288, to 2 digits
    assert result["minimum_detectable_difference_points"] == 0.43
