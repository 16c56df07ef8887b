"""Aggregation on a hand-computed example: rates, capacity, per skill, per difficulty, high subset."""

from eval.scores import aggregate


def j(category, difficulty, verdict, a, b, status="judged", consistent=True, errors=(None, None)):
    orders = {
        name: {"error": error, "method": None if error else "first_line"} for name, error in zip(("AB", "BA"), errors)
    }
    return {
        "category": category,
        "difficulty": difficulty,
        "verdict": verdict,
        "score_a": a,
        "score_b": b,
        "status": status,
        "consistent": consistent if status == "judged" else None,
        "orders": orders,
    }


JUDGMENTS = [
    j("Math", 2, "win", 8, 4),
    j("Math", 9, "lose", 3, 7),
    j("Math", 9, "tie", 6, 6, consistent=False),
    j("Code", 8, "win", 9, 5, status="single_order", errors=("no pair of scores found", None)),
    j("Code", 2, None, None, None, status="failed", errors=("empty judge output", "no pair of scores found")),
]


def test_overall_counts_rates_and_capacity():
    s = aggregate(JUDGMENTS, {"a": "C1", "b": "base"})
    o = s["overall"]
    assert (s["a"], s["items"]) == ("C1", 5)
    assert (o["n"], o["win"], o["tie"], o["lose"]) == (4, 2, 1, 1)  # the failed pair is left out
    assert (o["win_rate"], o["tie_rate"], o["lose_rate"]) == (0.5, 0.25, 0.25)
    assert (o["score_a_sum"], o["score_b_sum"]) == (26, 22)
    assert o["capacity_pct"] == round(26 / 22 * 100, 2) == 118.18
    assert (o["mean_a"], o["mean_b"]) == (6.5, 5.5)


def test_per_skill_per_difficulty_and_high_subset():
    s = aggregate(JUDGMENTS, high_difficulty=8)
    math, code = s["per_skill"]["Math"], s["per_skill"]["Code"]
    assert (math["n"], math["win"], math["lose"], math["tie"]) == (3, 1, 1, 1)
    assert math["capacity_pct"] == round(17 / 17 * 100, 2) == 100.0
    assert (code["n"], code["capacity_pct"]) == (1, 180.0)
    assert list(s["per_difficulty"]) == ["2", "8", "9"]
    assert s["per_difficulty"]["2"]["n"] == 1 and s["per_difficulty"]["9"]["capacity_pct"] == round(9 / 13 * 100, 2)
    high = s["high_difficulty"]
    assert (high["threshold"], high["n"], high["win"], high["capacity_pct"]) == (8, 3, 1, round(18 / 18 * 100, 2))


def test_consistency_and_failures():
    s = aggregate(JUDGMENTS)
    assert s["position_consistency"] == {"pairs_with_both_orders": 3, "consistent": 2, "rate": round(2 / 3, 4)}
    f = s["judge_failures"]
    assert (f["orders_total"], f["orders_unparsed"], f["pairs_single_order"], f["pairs_unjudged"]) == (10, 3, 1, 1)
    assert f["reasons"] == {"no pair of scores found": 2, "empty judge output": 1}
    assert f["orders_unparsed_rate"] == 0.3


def test_nothing_judged_gives_empty_rates_not_a_crash():
    s = aggregate([j("Math", 3, None, None, None, status="failed", errors=("x", "y"))])
    assert s["overall"]["n"] == 0 and s["overall"]["win_rate"] is None and s["overall"]["capacity_pct"] is None
    assert s["position_consistency"]["rate"] is None
