"""Bradley-Terry strengths (eval/ranking.py) on synthetic verdicts with known strengths."""

import numpy as np
import pytest

from eval.ranking import bradley_terry, fixed_model

TRUE = {"reference": 0.0, "C0": -0.6, "C1": 0.4, "C2": 1.0}


def simulate(a, b, items=400, seed=0):
    """A's verdicts against B drawn from the Bradley-Terry model with TRUE strengths, no ties."""
    rng = np.random.default_rng(seed)
    p = 1 / (1 + np.exp(-(TRUE[a] - TRUE[b])))
    return [{"id": str(i), "verdict": "win" if rng.random() < p else "lose"} for i in range(items)]


def run_like(items=400):
    pairs = [("C0", "reference"), ("C1", "reference"), ("C2", "reference"), ("C1", "C0"), ("C2", "C0")]
    return [(a, b, simulate(a, b, items, seed=k)) for k, (a, b) in enumerate(pairs)]


def test_recovers_known_strengths_and_their_order_with_the_reference_at_zero():
    bt = bradley_terry(run_like(), resamples=300, seed=1)
    models = bt["models"]
    assert bt["fixed"] == "reference" and bt["note"] is None and bt["items"] == 400
    assert models["reference"]["strength"] == 0.0 and models["reference"]["strength_ci"] == [0.0, 0.0]
    order = sorted(TRUE, key=lambda m: models[m]["strength"])
    assert order == ["C0", "reference", "C1", "C2"]
    for name, true in TRUE.items():
        low, high = models[name]["strength_ci"]
        assert low <= models[name]["strength"] <= high
        assert models[name]["strength"] == pytest.approx(true, abs=0.25)
    c2 = models["C2"]
    assert c2["win_rate_vs_fixed"] == pytest.approx(1 / (1 + np.exp(-c2["strength"])), abs=1e-4)
    assert c2["verdicts"] == 800 and models["reference"]["verdicts"] == 1200


def test_ties_count_half_a_win_to_each_side():
    # A wins 30, ties 40, loses 30 of 100: exactly even, strength 0 (the penalty pulls toward 0 too)
    even = [{"id": str(i), "verdict": v} for i, v in enumerate(["win"] * 30 + ["tie"] * 40 + ["lose"] * 30)]
    assert bradley_terry([("C1", "reference", even)])["models"]["C1"]["strength"] == 0.0
    # 60 wins and 40 ties: 80 of 100 halves won, strength near log(80/20)
    ahead = [{"id": str(i), "verdict": v} for i, v in enumerate(["win"] * 60 + ["tie"] * 40)]
    assert bradley_terry([("C1", "reference", ahead)])["models"]["C1"]["strength"] == pytest.approx(
        np.log(4), abs=0.01
    )


def test_a_model_that_won_everything_stays_finite_and_unjudged_verdicts_are_left_out():
    allwins = [{"id": str(i), "verdict": "win"} for i in range(20)] + [{"id": "x", "verdict": None}]
    model = bradley_terry([("C1", "C0", allwins)], resamples=50, seed=3)["models"]["C1"]
    assert 3 < model["strength"] < 20 and model["verdicts"] == 20
    assert model["win_rate_vs_fixed"] > 0.95 and model["strength_ci"][0] <= model["strength"]


def test_a_model_with_no_chain_to_the_fixed_one_gets_no_strength():
    comparisons = run_like(100) + [("C3", "C4", simulate("C1", "C2", 50))]
    bt = bradley_terry(comparisons, resamples=20, seed=1)
    assert bt["models"]["C3"]["strength"] is None and bt["models"]["C4"]["strength_ci"] is None
    assert "C3, C4 have no chain" in bt["note"] and bt["models"]["C2"]["strength"] > 0


def test_c0_is_fixed_when_the_run_has_no_reference_comparisons():
    comparisons = [("C1", "C0", simulate("C1", "C0", 100)), ("C2", "C0", simulate("C2", "C0", 100))]
    bt = bradley_terry(comparisons)
    assert bt["fixed"] == "C0" and bt["models"]["C0"]["strength"] == 0.0 and bt["models"]["C1"]["strength"] > 0
    assert fixed_model(["C1", "base", "C0"]) == "base" and fixed_model(["C2", "C1"]) == "C1"
    assert bradley_terry([])["models"] == {}


def test_every_strength_is_also_a_paired_difference_from_c0_with_its_interval():
    bt = bradley_terry(run_like(), resamples=300, seed=1)
    models = bt["models"]
    c2, c0 = models["C2"], models["C0"]
    assert c2["vs_C0"]["difference"] == pytest.approx(c2["strength"] - c0["strength"], abs=1e-3)
    assert c2["vs_C0"]["difference"] == pytest.approx(TRUE["C2"] - TRUE["C0"], abs=0.3)
    low, high = c2["vs_C0"]["ci"]
    assert 0 < low <= c2["vs_C0"]["difference"] <= high  # 1.6 logits apart on 400 items: the interval leaves out 0
    # paired: the same draws refit both, so the interval is narrower than the two strengths' intervals side by side
    assert high - low < (c2["strength_ci"][1] - c2["strength_ci"][0]) + (c0["strength_ci"][1] - c0["strength_ci"][0])
    assert models["C0"]["vs_C0"] is None and models["reference"]["vs_C0"]["difference"] == pytest.approx(
        -c0["strength"], abs=1e-3
    )
    assert bradley_terry(run_like(), resamples=0)["models"]["C2"]["vs_C0"]["ci"] is None
