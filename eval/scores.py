"""Aggregate per-item judgments into the numbers of `scores.json`.

    scores = aggregate(read_jsonl("runs/tiny/judge/C1__vs__base/judgments.jsonl"), meta)

Each block (overall, every skill, every difficulty level, the high-difficulty subset) holds:
  n                       pairs with a verdict (status "judged" or "single_order")
  win / tie / lose        counts, from A's side; win_rate / tie_rate / lose_rate over n
  score_a_sum, score_b_sum, mean_a, mean_b
  capacity_pct            score_a_sum / score_b_sum * 100: how the WizardLM paper reports "% of ChatGPT"
Unjudged pairs (status "failed") are left out of every block and counted under judge_failures,
beside the count of single orders the parser could not read and the reasons it gave.
"""

from __future__ import annotations

from collections import Counter


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def block(judgments: list[dict]) -> dict:
    scored = [j for j in judgments if j.get("verdict") is not None]
    counts = Counter(j["verdict"] for j in scored)
    n = len(scored)
    sum_a = sum(j["score_a"] for j in scored)
    sum_b = sum(j["score_b"] for j in scored)
    return {
        "n": n,
        "win": counts["win"],
        "tie": counts["tie"],
        "lose": counts["lose"],
        "win_rate": _rate(counts["win"], n),
        "tie_rate": _rate(counts["tie"], n),
        "lose_rate": _rate(counts["lose"], n),
        "score_a_sum": round(sum_a, 2),
        "score_b_sum": round(sum_b, 2),
        "mean_a": round(sum_a / n, 3) if n else None,
        "mean_b": round(sum_b / n, 3) if n else None,
        "capacity_pct": round(sum_a / sum_b * 100, 2) if sum_b else None,
    }


def _difficulty_key(value) -> str:
    return "unknown" if value is None else str(value)


def aggregate(judgments: list[dict], meta: dict | None = None, high_difficulty: int = 8) -> dict:
    by_skill: dict[str, list[dict]] = {}
    by_difficulty: dict[str, list[dict]] = {}
    for j in judgments:
        by_skill.setdefault(j.get("category") or "uncategorised", []).append(j)
        by_difficulty.setdefault(_difficulty_key(j.get("difficulty")), []).append(j)
    high = [j for j in judgments if j.get("difficulty") is not None and j["difficulty"] >= high_difficulty]

    both = [j for j in judgments if j.get("status") == "judged"]
    orders = [o for j in judgments for o in (j.get("orders") or {}).values()]
    unparsed = [o for o in orders if o.get("error")]
    statuses = Counter(j.get("status") for j in judgments)
    return {
        **(meta or {}),
        "items": len(judgments),
        "overall": block(judgments),
        "per_skill": {skill: block(rows) for skill, rows in sorted(by_skill.items())},
        "per_difficulty": {
            key: block(rows)
            for key, rows in sorted(
                by_difficulty.items(), key=lambda kv: (kv[0] == "unknown", int(kv[0]) if kv[0].isdigit() else 0)
            )
        },
        "high_difficulty": {"threshold": high_difficulty, **block(high)},
        "position_consistency": {
            "pairs_with_both_orders": len(both),
            "consistent": sum(bool(j.get("consistent")) for j in both),
            "rate": _rate(sum(bool(j.get("consistent")) for j in both), len(both)),
        },
        "judge_failures": {
            "orders_total": len(orders),
            "orders_unparsed": len(unparsed),
            "orders_unparsed_rate": _rate(len(unparsed), len(orders)),
            "pairs_single_order": statuses["single_order"],
            "pairs_unjudged": statuses["failed"],
            "reasons": dict(Counter(o["error"] for o in unparsed).most_common()),
            "parser_rules": dict(Counter(o.get("method") for o in orders if o.get("method")).most_common()),
        },
    }
