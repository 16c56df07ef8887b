"""Bradley-Terry strengths of every model from all judged pairs of a run, with bootstrap intervals.

    bt = bradley_terry([("C1", "reference", judgments_1), ("C1", "C0", judgments_2), ...], resamples=1000, seed=42)
    bt["fixed"], bt["models"]["C1"]["strength"], bt["models"]["C1"]["strength_ci"]   # "reference", 0.41, [...]

As Arena-Hard-Auto ranks its models: P(i preferred to j) = sigmoid(s_i - s_j), fitted by maximum
likelihood over every item's combined verdict (eval/scores.py's `combine`) of every comparison,
win 1, tie 0.5 (half a win to each side), lose 0: a logistic regression without intercept, solved
by Newton steps in NumPy. One model is fixed at 0: the reference (or "base", as a stand-alone
`evol judge` names it), else C0. A weak L2 penalty (STRENGTH_L2 * s**2 / 2 per free model, on the
summed log-loss) keeps a model that won or lost every item at a finite strength; with real verdicts
it moves strengths by far less than their intervals.

    strength             logit scale; 0 = the fixed model
    win_rate_vs_fixed    sigmoid(strength): the share (ties half) it is expected to take from the fixed model
    vs_C0                strength minus C0's, with its interval from the same draws (paired), or None

Intervals: a bootstrap over test items, all verdicts of one item travelling together across the
comparisons, the model refitted on every draw. A model with no chain of judged comparisons to the
fixed one has no strength (None, and a sentence in `note`): nothing ties its scale to the others.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit

from eval.bootstrap import draw_weights, interval, item_draws
from eval.length_control import PREFERENCE
from pipeline.core.paths import REFERENCE

STRENGTH_L2 = 0.01
NEWTON_STEPS = 50
FIXED_CANDIDATES = (REFERENCE, "base", "C0")
DIFFERENCE_BASE = "C0"  # every other model's strength is also given as a paired difference from C0's


def fixed_model(labels: list[str]) -> str:
    """The model held at 0: the first of FIXED_CANDIDATES present, else the first label in sorted order."""
    return next((c for c in FIXED_CANDIDATES if c in labels), sorted(labels)[0])


def connected(fixed: str, edges: set[tuple[str, str]]) -> set[str]:
    """The models reachable from `fixed` through comparisons with a judged item."""
    neighbours: dict[str, set[str]] = {}
    for a, b in edges:
        neighbours.setdefault(a, set()).add(b)
        neighbours.setdefault(b, set()).add(a)
    reached, frontier = {fixed}, [fixed]
    while frontier:
        for there in neighbours.get(frontier.pop(), set()) - reached:
            reached.add(there)
            frontier.append(there)
    return reached


def fit(rows_x: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(draws, free models) strengths: the penalised fractional logistic fit without intercept of y
    on the rows' +1/-1 design, one fit per row of `weights` (draws x verdict rows)."""
    draws, free = weights.shape[0], rows_x.shape[1]
    s = np.zeros((draws, free))
    outer = (rows_x[:, :, None] * rows_x[:, None, :]).reshape(len(y), free * free)
    for _ in range(NEWTON_STEPS):
        p = expit(s @ rows_x.T)
        grad = (weights * (p - y)) @ rows_x + STRENGTH_L2 * s
        hess = ((weights * p * (1 - p)) @ outer).reshape(draws, free, free) + STRENGTH_L2 * np.eye(free)
        step = np.clip(np.linalg.solve(hess, grad[:, :, None])[:, :, 0], -5, 5)
        s -= step
        if np.abs(step).max() < 1e-9:
            break
    return s


def bradley_terry(comparisons: list[tuple[str, str, list[dict]]], resamples: int = 0, seed: int = 0) -> dict:
    """Strengths of every label in `comparisons` ((A, B, A's judgments against B) each)."""
    labels = sorted({name for a, b, _ in comparisons for name in (a, b)})
    if not labels:
        return {"fixed": None, "models": {}, "items": 0, "verdicts": 0, "note": "no judged comparison"}
    fixed = fixed_model(labels)
    rows = [
        (str(j["id"]), a, b, PREFERENCE[j["verdict"]])
        for a, b, judgments in comparisons
        for j in judgments
        if j.get("verdict") is not None
    ]
    reached = connected(fixed, {(a, b) for _, a, b, _ in rows})
    verdicts = {name: sum(name in (r[1], r[2]) for r in rows) for name in labels}
    free = [name for name in labels if name in reached and name != fixed]
    rows = [r for r in rows if r[1] in reached and r[2] in reached]
    items = sorted({r[0] for r in rows})
    out = {"fixed": fixed, "items": len(items), "verdicts": len(rows), "strength_l2": STRENGTH_L2, "note": None}
    lost = [name for name in labels if name not in reached]
    if lost:
        out["note"] = (
            f"{', '.join(lost)} {'has' if len(lost) == 1 else 'have'} no chain of judged comparisons to {fixed}, "
            f"so no strength on its scale."
        )
    strengths = {fixed: np.zeros(resamples + 1)}  # the estimate, then one value per draw
    if free and rows:
        column = {name: k for k, name in enumerate(free)}
        rows_x = np.zeros((len(rows), len(free)))
        for r, (_, a, b, _) in enumerate(rows):
            if a in column:
                rows_x[r, column[a]] = 1.0
            if b in column:
                rows_x[r, column[b]] = -1.0
        y = np.array([r[3] for r in rows])
        weights = np.ones((1, len(rows)))
        if resamples:  # an item's draw count weighs every verdict of that item, in every comparison
            index = {item: k for k, item in enumerate(items)}
            of_row = np.array([index[r[0]] for r in rows])
            weights = np.vstack(
                [weights, draw_weights(item_draws(len(items), resamples, seed), len(items))[:, of_row]]
            )
        fitted = fit(rows_x, y, weights)
        strengths.update({name: fitted[:, column[name]] for name in free})
    per_model = {}
    base = strengths.get(DIFFERENCE_BASE)
    for name in labels:
        drawn = strengths.get(name)
        paired = drawn is not None and base is not None and name != DIFFERENCE_BASE
        per_model[name] = {
            "strength": None if drawn is None else round(float(drawn[0]), 4),
            "strength_ci": interval(drawn[1:], 4) if drawn is not None and resamples else None,
            "win_rate_vs_fixed": None if drawn is None else round(float(expit(drawn[0])), 4),
            "win_rate_vs_fixed_ci": interval(expit(drawn[1:]), 4) if drawn is not None and resamples else None,
            "verdicts": verdicts[name],
            # The paired difference from C0 on one scale: the same draws refit both strengths.
            "vs_C0": {
                "difference": round(float(drawn[0] - base[0]), 4),
                "ci": interval(drawn[1:] - base[1:], 4) if resamples else None,
            }
            if paired
            else None,
        }
    return {**out, "resamples": resamples, "seed": seed, "models": per_model}
