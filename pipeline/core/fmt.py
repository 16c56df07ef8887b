"""Numbers as the reports and command summaries print them; a value that is missing (None)
always prints as "-".

    evol report runs/tiny        # every table cell goes through these

    num(0.125)                   # "0.125"
    num(55.6, "%")               # "55.6%"
    num(2.0, spec=".2f")         # "2.00"
    pct(0.125)                   # "12.5%"
    pct(None)                    # "-"
"""

from __future__ import annotations

MISSING = "-"


def num(value, suffix: str = "", spec: str = "g") -> str:
    """`value` in the format `spec`, then `suffix`."""
    return MISSING if value is None else f"{value:{spec}}{suffix}"


def pct(fraction, digits: int = 1) -> str:
    """A fraction as a percentage with `digits` decimals."""
    return MISSING if fraction is None else f"{100 * fraction:.{digits}f}%"
