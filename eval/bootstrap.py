"""The bootstrap every interval of the eval reports uses: draws of test items, and their 95% percentile interval.

    draws = item_draws(n=60, resamples=1000, seed=derive_seed(42, "C1", "reference", "overall", "bootstrap"))
    low, high = interval(win_rates_of(draws), digits=4)

A model refitted on every draw (eval/length_control.py, eval/ranking.py) takes a draw as weights:
`draw_weights` counts how often each item was drawn, so all draws are fitted at once as weighted fits.
"""

from __future__ import annotations

import numpy as np

CONFIDENCE = 0.95


def item_draws(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) item indices drawn with replacement."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def draw_weights(draws: np.ndarray, n: int) -> np.ndarray:
    """(resamples, n): how many times each draw took each of the n items."""
    weights = np.zeros((draws.shape[0], n))
    np.add.at(weights, (np.arange(draws.shape[0])[:, None], draws), 1.0)
    return weights


def interval(values: np.ndarray, digits: int) -> list[float] | None:
    """The central 95% of the bootstrap values, or None when no draw gave a number."""
    values = values[~np.isnan(values)]
    if not len(values):
        return None
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return [round(float(low), digits), round(float(high), digits)]
