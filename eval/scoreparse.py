"""The pieces both 1-10 score parsers share: the pairwise judge's (eval/judge_parse.py) and the
difficulty rater's (eval/analysis/complexity.py).

    evol judge --answers runs/tiny/answers/C1 --baseline runs/tiny/answers/base --out runs/tiny/judge

    out_of_ten("Clarity 7/10, depth 6 out of 10")     # [7.0, 6.0]
    scale_error(11.0, "labelled")                     # "score 11 is outside 1-10 (labelled)"
"""

from __future__ import annotations

import re

NUMBER = r"(\d{1,2}(?:\.\d+)?)"  # a score as written: 7, 10, 7.5
OF_TEN = r"(?:\s*(?:/|out\s+of)\s*10(?!\d))?"  # an optional "/10" or "out of 10" after it
# "N/10" or "N out of 10" anywhere; not the "5" of "2.5/10" nor a 10 that goes on ("/100").
OUT_OF_TEN = re.compile(rf"(?<![\d.]){NUMBER}\s*(?:/|out\s+of)\s*10(?!\d)", re.IGNORECASE)
# Markdown decoration a model wraps around a score: **7 5**, `7`, "# 7".
DECORATION = re.compile(r"[*_`#>]+")


def undecorated(text: str) -> str:
    return DECORATION.sub("", text)


def out_of_ten(text: str) -> list[float]:
    """Every "N/10" or "N out of 10" in the text, in order of appearance."""
    return [float(match.group(1)) for match in OUT_OF_TEN.finditer(text)]


def scale_error(score: float, method: str) -> str | None:
    """Why a parsed score cannot stand (it is outside 1-10), naming the rule that read it; None if it can."""
    return None if 1 <= score <= 10 else f"score {score:g} is outside 1-10 ({method})"
