"""Words and normal form of a text, the one definition every rule, filter and metric counts with.

words("Don't stop - now!")   # ["Don't", "stop", "now"]
normalise("Hello,  World")   # "hello world"
clip("a long answer", 6, " [cut]")   # ("a long [cut]", True)
"""

from __future__ import annotations

import re

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*", re.UNICODE)


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def normalise(text: str) -> str:
    """Lower case, punctuation and spacing dropped: texts equal here say the same words."""
    return " ".join(words(text.lower()))


def clip(text: str, limit: int, mark: str, trim: bool = False) -> tuple[str, bool]:
    """`text` cut to `limit` characters (0: never) with `mark` after the cut, and whether it was cut;
    `trim` drops the whitespace the cut leaves at the end, before the mark."""
    if not limit or len(text) <= limit:
        return text, False
    kept = text[:limit]
    return (kept.rstrip() if trim else kept) + mark, True
