"""Aggregate per-item judgments into the numbers of `scores.json`, each with a 95% bootstrap interval.

    scores = aggregate(read_jsonl("runs/tiny/judge/C1__vs__base/judgments.jsonl"), meta, resamples=1000, seed=42)

Each block (overall, every skill, every difficulty level, the high-difficulty subset) holds:
  n                       pairs with a verdict (status "judged" or "single_order")
  win / tie / lose        counts, from A's side; win_rate / tie_rate / lose_rate over n
  score_a_sum, score_b_sum, mean_a, mean_b
  capacity_pct            score_a_sum / score_b_sum * 100: how the WizardLM paper reports "% of ChatGPT"
  <rate>_ci               [low, high]: the 95% percentile interval of win_rate, tie_rate, lose_rate and
                          capacity_pct over `resamples` bootstrap draws of the block's test items
Unjudged pairs (status "failed") are left out of every block and counted under judge_failures,
beside the count of single orders the parser could not read and the reasons it gave.
The overall block also holds `length_controlled` (eval/length_control.py): the win rate with ties as
half, the win rate predicted at zero length difference, and how many points the length explains,
each with its interval. Only overall: a length slope fitted on a skill's handful of items is noise.

The bootstrap resamples test items, each with its one combined verdict and both-order scores, so
the two orders of an item always travel together. The draws are seeded from the run seed and the
comparison's labels: the same files give the same intervals. `paired_difference` compares two
comparisons against the same baseline on their common items, resampling those items jointly.

How verdicts become numbers (`Aggregation`: the high-difficulty threshold, whether a pair with one
readable order counts, the resample count and seed) is not part of the judge's stage key: changing
it recomputes judgments.jsonl's verdicts from the stored orders and scores.json (`rescore`), and never
judges again.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from eval.bootstrap import CONFIDENCE, interval
from eval.bootstrap import item_draws as _draws
from eval.length_control import Lengths, length_controlled
from pipeline.config import Config
from pipeline.core.seeds import derive_seed

RATES = ("win_rate", "tie_rate", "lose_rate", "capacity_pct")


@dataclass(frozen=True)
class Aggregation:
    """The settings that only change how stored verdicts are counted; None: as scores.json records."""

    high_difficulty: int | None = None  # eval.high_difficulty
    single_order_fallback: bool | None = None  # eval.single_order_fallback
    resamples: int | None = None  # eval.bootstrap_resamples
    seed: int | None = None  # run.seed

    @classmethod
    def of(cls, config: Config) -> Aggregation:
        e = config.eval
        return cls(e.high_difficulty, e.single_order_fallback, e.bootstrap_resamples, config.run.seed)


def verdict_of(score_a: float | None, score_b: float | None) -> str | None:
    if score_a is None or score_b is None:
        return None
    return "win" if score_a > score_b else "lose" if score_a < score_b else "tie"


def combine(ab: dict, ba: dict, single_order_fallback: bool) -> dict:
    """The pair's verdict from its two orders: both must agree for a win or a loss to stand; a
    verdict that flips with the order, or a win in one order and a tie in the other, is a tie."""
    parsed = [o for o in (ab, ba) if o["verdict"] is not None]
    if len(parsed) == 2:
        consistent = ab["verdict"] == ba["verdict"]
        return {
            "status": "judged",
            "verdict": ab["verdict"] if consistent else "tie",
            "consistent": consistent,
            "score_a": (ab["score_a"] + ba["score_a"]) / 2,
            "score_b": (ab["score_b"] + ba["score_b"]) / 2,
        }
    if len(parsed) == 1 and single_order_fallback:
        (only,) = parsed
        return {
            "status": "single_order",
            "verdict": only["verdict"],
            "consistent": None,
            "score_a": only["score_a"],
            "score_b": only["score_b"],
        }
    return {"status": "failed", "verdict": None, "consistent": None, "score_a": None, "score_b": None}


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _scored(judgments: list[dict]) -> list[dict]:
    return [j for j in judgments if j.get("verdict") is not None]


def _columns(scored: list[dict]) -> dict[str, np.ndarray]:
    return {
        "win": np.array([j["verdict"] == "win" for j in scored], dtype=float),
        "tie": np.array([j["verdict"] == "tie" for j in scored], dtype=float),
        "lose": np.array([j["verdict"] == "lose" for j in scored], dtype=float),
        "a": np.array([j["score_a"] for j in scored], dtype=float),
        "b": np.array([j["score_b"] for j in scored], dtype=float),
    }


def _resampled_rates(columns: dict[str, np.ndarray], draws: np.ndarray) -> dict[str, np.ndarray]:
    n = draws.shape[1]
    sum_b = columns["b"][draws].sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        capacity = np.where(sum_b > 0, columns["a"][draws].sum(axis=1) / sum_b * 100, np.nan)
    return {
        "win_rate": columns["win"][draws].sum(axis=1) / n,
        "tie_rate": columns["tie"][draws].sum(axis=1) / n,
        "lose_rate": columns["lose"][draws].sum(axis=1) / n,
        "capacity_pct": capacity,
    }


def block(judgments: list[dict], resamples: int = 0, seed: int = 0) -> dict:
    scored = _scored(judgments)
    counts = Counter(j["verdict"] for j in scored)
    n = len(scored)
    sum_a = sum(j["score_a"] for j in scored)
    sum_b = sum(j["score_b"] for j in scored)
    out = {
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
    resampled = _resampled_rates(_columns(scored), _draws(n, resamples, seed)) if n and resamples else {}
    for key in RATES:
        out[f"{key}_ci"] = interval(resampled[key], 2 if key == "capacity_pct" else 4) if resampled else None
    return out


def _difficulty_key(value) -> str:
    return "unknown" if value is None else str(value)


def aggregate(
    judgments: list[dict],
    meta: dict | None = None,
    high_difficulty: int = 8,
    resamples: int = 0,
    seed: int = 0,
    lengths: Lengths | None = None,
) -> dict:
    """scores.json's content; with `resamples` > 0 every block carries bootstrap intervals. `lengths`
    (eval/length_control.py's answer_lengths) gives the overall block its length-controlled win rate."""
    by_skill: dict[str, list[dict]] = {}
    by_difficulty: dict[str, list[dict]] = {}
    for j in judgments:
        by_skill.setdefault(j.get("category") or "uncategorised", []).append(j)
        by_difficulty.setdefault(_difficulty_key(j.get("difficulty")), []).append(j)
    high = [j for j in judgments if j.get("difficulty") is not None and j["difficulty"] >= high_difficulty]
    # One seed per block, derived from the comparison, so adding a skill does not move the others.
    names = (meta or {}).get("a"), (meta or {}).get("b")

    def part(rows: list[dict], *where: str) -> dict:
        return block(rows, resamples, derive_seed(seed, *names, *where, "bootstrap"))

    both = [j for j in judgments if j.get("status") == "judged"]
    orders = [o for j in judgments for o in (j.get("orders") or {}).values()]
    unparsed = [o for o in orders if o.get("error")]
    statuses = Counter(j.get("status") for j in judgments)
    return {
        **(meta or {}),
        "items": len(judgments),
        "bootstrap": {
            "resamples": resamples,
            "seed": seed,
            "confidence": CONFIDENCE,
            "unit": "test item, with its verdict and scores from both orders",
        },
        "overall": {
            **part(judgments, "overall"),
            "length_controlled": length_controlled(
                judgments, lengths, resamples, derive_seed(seed, *names, "overall", "length_controlled")
            ),
        },
        "per_skill": {skill: part(rows, "skill", skill) for skill, rows in sorted(by_skill.items())},
        "per_difficulty": {
            key: part(rows, "difficulty", key)
            for key, rows in sorted(
                by_difficulty.items(), key=lambda kv: (kv[0] == "unknown", int(kv[0]) if kv[0].isdigit() else 0)
            )
        },
        "high_difficulty": {"threshold": high_difficulty, **part(high, "high")},
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


COMPUTED = ("items", "bootstrap", "overall", "per_skill", "per_difficulty", "high_difficulty")
COMPUTED += ("position_consistency", "judge_failures")


def rescore(
    scores: dict, judgments: list[dict], settings: Aggregation, lengths: Lengths | None = None
) -> tuple[dict, list[dict]]:
    """scores.json and judgments.jsonl as `settings` count them, from the stored orders: the verdicts of
    single-order pairs follow single_order_fallback, every block follows the threshold and draws.
    Returned unchanged (the same objects) when scores.json already counts them that way and has its
    length-controlled win rate (a scores.json from before it existed, or written when the answers'
    lengths could not be found and `lengths` now has them, is counted again)."""
    recorded = scores.get("bootstrap") or {}
    wanted = {
        "high_difficulty": (scores["high_difficulty"]["threshold"], settings.high_difficulty),
        "single_order_fallback": (scores.get("single_order_fallback", True), settings.single_order_fallback),
        "resamples": (recorded.get("resamples", 0), settings.resamples),
        "seed": (recorded.get("seed", 0), settings.seed),
    }
    now = {name: has if want is None else want for name, (has, want) in wanted.items()}
    length_block = scores["overall"].get("length_controlled")
    lengths_missing = length_block is None or (lengths is not None and length_block.get("unit") is None)
    if all(now[name] == has for name, (has, _) in wanted.items()) and not lengths_missing:
        return scores, judgments
    fallback = now["single_order_fallback"]
    if fallback != wanted["single_order_fallback"][0]:
        judgments = [{**j, **combine(j["orders"]["AB"], j["orders"]["BA"], fallback)} for j in judgments]
    meta = {k: v for k, v in scores.items() if k not in COMPUTED}
    meta["single_order_fallback"] = fallback
    return aggregate(judgments, meta, now["high_difficulty"], now["resamples"], now["seed"], lengths), judgments


def paired_difference(first: list[dict], second: list[dict], resamples: int, seed: int) -> dict | None:
    """`second` minus `first` (two judgment lists against one baseline) on the items both judged.

    Capacity in points (percentage points of the baseline's score) and win rate in percentage
    points, each with a 95% interval from resampling the common items jointly; significant when
    the interval leaves out zero. None when no item was judged in both.
    """
    first_by_id = {j["id"]: j for j in _scored(first)}
    pairs = [(first_by_id[j["id"]], j) for j in _scored(second) if j["id"] in first_by_id]
    if not pairs:
        return None
    left = _columns([p for p, _ in pairs])
    right = _columns([q for _, q in pairs])
    everything = np.arange(len(pairs))[None, :]  # the point estimate is the "draw" of every item once
    draws = _draws(len(pairs), max(resamples, 1), seed)
    out = {"items": len(pairs), "resamples": resamples}
    for key, scale, name in (("capacity_pct", 1, "capacity_points"), ("win_rate", 100, "win_rate_points")):
        point = (_resampled_rates(right, everything)[key] - _resampled_rates(left, everything)[key])[0] * scale
        spread = (_resampled_rates(right, draws)[key] - _resampled_rates(left, draws)[key]) * scale
        ci = interval(spread, 2) if resamples else None
        out[name] = {
            "difference": None if np.isnan(point) else round(float(point), 2),
            "ci": ci,
            "significant": bool(ci and (ci[0] > 0 or ci[1] < 0)),
        }
    return out
