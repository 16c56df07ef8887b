"""Length-controlled win rate (AlpacaEval 2's method): the win rate a pair would have if A's and B's
answers were equally long.

    lengths = answer_lengths(answers_a, answers_b)    # ({id: (A's length, B's length)}, "tokens")
    lc = length_controlled(judgments, lengths, resamples=1000, seed=7)
    lc["raw_win_rate"], lc["lc_win_rate"], lc["explained_points"]   # 0.62, 0.51, 11.0

Per test item, the preference y is A's combined verdict from both orders (eval/scores.py's
`combine`) as a number: win 1, tie 0.5, lose 0. A logistic model is fitted to it,

    P(A preferred) = sigmoid(intercept + slope * tanh(d / sd(d)))

with d = A's answer length minus B's (in tokens, `completion_tokens` of answers.jsonl; in characters
when an answer set has no token counts) and sd(d) its standard deviation over the pair's items, as in
AlpacaEval 2 (which adds terms for its many models and instructions: one pair needs neither). The
targets are fractions, so the fit is a fractional logistic regression, done by Newton steps in
NumPy; the slope carries a small L2 penalty (SLOPE_L2 * slope**2 / 2 added to the summed log-loss,
a Gaussian prior with variance 1/SLOPE_L2, in the spirit of AlpacaEval's regularised GLM) so that a
pair whose verdicts follow the length exactly still gets a finite slope. The intercept is not
penalised, so with no slope the model gives back the raw rate exactly.

    raw_win_rate      mean preference, ties as half: (win + tie / 2) / n
    lc_win_rate       sigmoid(intercept): the preference predicted at zero length difference
    explained_points  100 * (raw - lc): how many points of the win rate the length difference explains

When every item has the same verdict, or the length difference is the same on every item, there
is nothing for the length term to explain: lc equals raw and `fitted` is False, with the reason in
`note`. Intervals come from a bootstrap over the items, the model refitted on every draw (all draws
are fitted at once, as weighted fits: a draw's weights count how often it drew each item).
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit

from eval.bootstrap import draw_weights, interval, item_draws

SLOPE_L2 = 0.1
NEWTON_STEPS = 50
PREFERENCE = {"win": 1.0, "tie": 0.5, "lose": 0.0}
Lengths = tuple[dict[str, tuple[int, int]], str]  # id -> (A's length, B's length); the unit


def answer_lengths(answers_a: list[dict], answers_b: list[dict]) -> Lengths:
    """id -> (A's length, B's length) over the ids both sets answered, and the unit: "tokens" when
    every answer has `completion_tokens`, else "characters" (the length of `answer`)."""
    by_id_b = {str(r["id"]): r for r in answers_b}
    pairs = [(str(r["id"]), r, by_id_b[str(r["id"])]) for r in answers_a if str(r["id"]) in by_id_b]
    if all(isinstance(x.get("completion_tokens"), int) for _, a, b in pairs for x in (a, b)):
        return {i: (a["completion_tokens"], b["completion_tokens"]) for i, a, b in pairs}, "tokens"
    return {i: (len(a.get("answer") or ""), len(b.get("answer") or "")) for i, a, b in pairs}, "characters"


def fit(y: np.ndarray, x: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(intercept, slope) per row of `weights` (draws x items): the penalised fractional logistic fit
    of y on x. Newton steps from zero, at most NEWTON_STEPS, each clipped to 5 logits."""
    draws = weights.shape[0]
    a, s = np.zeros(draws), np.zeros(draws)
    for _ in range(NEWTON_STEPS):
        p = expit(a[:, None] + s[:, None] * x[None, :])
        r, q = weights * (p - y), weights * p * (1 - p)
        g_a, g_s = r.sum(1), r @ x + SLOPE_L2 * s
        h_aa, h_as, h_ss = q.sum(1), q @ x, q @ (x * x) + SLOPE_L2
        det = h_aa * h_ss - h_as**2
        ok = det > 1e-12  # a draw whose verdicts are all one value has h_aa -> 0: it is replaced later
        safe = np.where(ok, det, 1.0)
        step_a = np.where(ok, (h_ss * g_a - h_as * g_s) / safe, 0.0)
        step_s = np.where(ok, (h_aa * g_s - h_as * g_a) / safe, 0.0)
        a -= np.clip(step_a, -5, 5)
        s -= np.clip(step_s, -5, 5)
        if max(np.abs(step_a).max(), np.abs(step_s).max()) < 1e-9:
            break
    return a, s


def _rates(y: np.ndarray, x: np.ndarray | None, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(raw, lc, slope) per draw; a draw with one verdict value throughout, or no length term, is not fitted."""
    raw = (weights @ y) / weights.sum(1)
    if x is None:
        return raw, raw.copy(), np.zeros(len(raw))
    a, s = fit(y, x, weights)
    drawn = weights > 0
    flat = np.where(drawn, y, np.inf).min(1) == np.where(drawn, y, -np.inf).max(1)
    lc = np.where(flat, raw, expit(a))
    return raw, lc, np.where(flat, 0.0, s)


def unavailable(note: str, n: int = 0, unit: str | None = None) -> dict:
    return {
        "n": n,
        "unit": unit,
        "fitted": False,
        "note": note,
        "raw_win_rate": None,
        "raw_win_rate_ci": None,
        "lc_win_rate": None,
        "lc_win_rate_ci": None,
        "explained_points": None,
        "explained_points_ci": None,
        "slope": None,
        "mean_length_difference": None,
    }


def length_controlled(judgments: list[dict], lengths: Lengths | None, resamples: int = 0, seed: int = 0) -> dict:
    """The length-controlled block of one comparison (see the module docstring for its keys); the
    items are the judgments with a verdict whose two answers have a length."""
    if lengths is None:
        return unavailable("the answers' lengths were not found (answers.jsonl of A or B is missing)")
    lengths, unit = lengths
    scored = [j for j in judgments if j.get("verdict") is not None and str(j["id"]) in lengths]
    if not scored:
        return unavailable("no judged item has answer lengths", unit=unit)
    y = np.array([PREFERENCE[j["verdict"]] for j in scored])
    d = np.array([lengths[str(j["id"])][0] - lengths[str(j["id"])][1] for j in scored], dtype=float)
    spread = float(d.std())
    note = None
    if y.min() == y.max():
        note = "every item has the same verdict, so there is no win for the length to explain"
    elif spread == 0:
        note = "the length difference is the same on every item, so the length term cannot be fitted"
    x = np.tanh(d / spread) if note is None else None
    n = len(scored)
    raw, lc, slope = _rates(y, x, np.ones((1, n)))
    out = {
        "n": n,
        "unit": unit,
        "fitted": note is None,
        "note": note,
        "raw_win_rate": round(float(raw[0]), 4),
        "raw_win_rate_ci": None,
        "lc_win_rate": round(float(lc[0]), 4),
        "lc_win_rate_ci": None,
        "explained_points": round(100 * float(raw[0] - lc[0]), 2),
        "explained_points_ci": None,
        "slope": round(float(slope[0]), 4),
        "slope_l2": SLOPE_L2,
        "mean_length_difference": round(float(d.mean()), 1),
    }
    if resamples:
        raw, lc, _ = _rates(y, x, draw_weights(item_draws(n, resamples, seed), n))
        out["raw_win_rate_ci"] = interval(raw, 4)
        out["lc_win_rate_ci"] = interval(lc, 4)
        out["explained_points_ci"] = interval(100 * (raw - lc), 2)
    return out


def _design(y: np.ndarray, d: np.ndarray) -> np.ndarray | None:
    """The length term tanh(d / sd(d)), or None when nothing is there to fit (one verdict value, or the
    same length difference on every item)."""
    spread = float(d.std())
    return None if y.min() == y.max() or spread == 0 else np.tanh(d / spread)


def paired_lc_difference(
    first: list[dict], second: list[dict], lengths: tuple[Lengths, Lengths], resamples: int, seed: int
) -> dict | None:
    """`second`'s length-controlled win rate minus `first`'s (two comparisons against one baseline), in
    percentage points, on the items both judged with answer lengths: each comparison's model fitted on
    those items, the interval from resampling them jointly (the same draws for both fits). None when
    no item is common."""
    (by_id_1, unit_1), (by_id_2, unit_2) = lengths
    verdicts_1 = {str(j["id"]): j["verdict"] for j in first if j.get("verdict") is not None}
    verdicts_2 = {str(j["id"]): j["verdict"] for j in second if j.get("verdict") is not None}
    common = [i for i in verdicts_1 if i in verdicts_2 and i in by_id_1 and i in by_id_2]
    if not common or unit_1 != unit_2:
        return None
    weights = np.ones((1, len(common)))
    if resamples:
        weights = np.vstack([weights, draw_weights(item_draws(len(common), resamples, seed), len(common))])
    lcs = []
    for verdicts, by_id in ((verdicts_1, by_id_1), (verdicts_2, by_id_2)):
        y = np.array([PREFERENCE[verdicts[i]] for i in common])
        d = np.array([by_id[i][0] - by_id[i][1] for i in common], dtype=float)
        lcs.append(_rates(y, _design(y, d), weights)[1])
    points = 100 * (lcs[1] - lcs[0])
    ci = interval(points[1:], 2) if resamples else None
    return {
        "items": len(common),
        "difference": round(float(points[0]), 2),
        "ci": ci,
        "significant": bool(ci and (ci[0] > 0 or ci[1] < 0)),
    }
