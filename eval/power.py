"""What a run could have detected, and how many items it would take: power and multiplicity.

    mdd = minimum_detectable_difference(sd=0.5, n=218)        # 0.0949: a 5% test detects 9.5 points at 80% power
    need = items_needed(sd=0.5, difference=0.05)              # 785 items for 5 points
    keep = holm([0.01, 0.04, 0.03])                           # [True, False, False] at alpha 0.05

Normal approximation throughout, for a paired difference of means (one difference per item or
prompt, both models on the same items): a two-sided test at level alpha detects a true difference
of (z(1 - alpha/2) + z(power)) * sd / sqrt(n) with probability `power`, where sd is the standard
deviation of the per-item differences. When only an interval of the difference is known (a
bootstrap over items), its standard error is the interval's width / (2 z(0.975)) and sd = se * sqrt(n).
Significance over several round counts compared with C0 is corrected with Holm's step-down method.
"""

from __future__ import annotations

import math
from statistics import NormalDist

ALPHA = 0.05
POWER = 0.80
TARGETS = (3.0, 5.0)  # the differences in points the report and the plan size for
_Z = NormalDist()


def z_sum(alpha: float = ALPHA, power: float = POWER) -> float:
    """z(1 - alpha/2) + z(power): 1.95996 + 0.84162 = 2.80158 at the defaults."""
    return _Z.inv_cdf(1 - alpha / 2) + _Z.inv_cdf(power)


def paired_sd(differences: list[float]) -> float:
    """The sample standard deviation of per-item differences (0 for fewer than two)."""
    n = len(differences)
    if n < 2:
        return 0.0
    mean = sum(differences) / n
    return math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1))


def sd_from_interval(ci: list[float] | tuple[float, float], n: int, confidence: float = 0.95) -> float:
    """The per-item sd behind a difference's interval: se = width / (2 z), sd = se * sqrt(n)."""
    width = ci[1] - ci[0]
    return width / (2 * _Z.inv_cdf(0.5 + confidence / 2)) * math.sqrt(n)


def minimum_detectable_difference(sd: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float | None:
    """The true paired difference a two-sided test at `alpha` detects with `power` on n items."""
    if n <= 0:
        return None
    return z_sum(alpha, power) * sd / math.sqrt(n)


def items_needed(sd: float, difference: float, alpha: float = ALPHA, power: float = POWER) -> int | None:
    """Items (or prompts) for a paired difference of `difference` to be detected: ceil((z_sum sd / d)^2).
    None when the run measured no variance (every item the same): it says nothing about the need."""
    if sd <= 0 or difference <= 0:
        return None
    return math.ceil((z_sum(alpha, power) * sd / difference) ** 2)


def p_value(difference: float, ci: list[float] | tuple[float, float], confidence: float = 0.95) -> float:
    """Two-sided p of a difference from zero, its standard error read off its interval (normal)."""
    se = (ci[1] - ci[0]) / (2 * _Z.inv_cdf(0.5 + confidence / 2))
    if se <= 0:
        return 1.0 if difference == 0 else 0.0
    return 2 * (1 - _Z.cdf(abs(difference) / se))


def holm(p_values: list[float], alpha: float = ALPHA) -> list[bool]:
    """Holm's step-down method: which hypotheses are rejected with the family-wise error kept at alpha.
    Sorted ascending, the i-th smallest (from 0) is tested at alpha / (m - i), stopping at the first
    that is not rejected."""
    m = len(p_values)
    rejected = [False] * m
    for rank, index in enumerate(sorted(range(m), key=lambda i: p_values[i])):
        if p_values[index] > alpha / (m - rank):
            break
        rejected[index] = True
    return rejected


# The conservative defaults of `evol run --plan` when no finished run gives the variance: a per-item
# difference of two pass/fail checks at its largest (half the prompts split the two models: sd 0.71),
# and of two judge verdicts scored 1 / 0.5 / 0 (sd 0.5).
DEFAULT_SD = {"verified": math.sqrt(0.5), "judge": 0.5}
