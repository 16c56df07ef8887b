"""Words and normal form of a text, the one definition every rule, filter and metric counts with.

words("Don't stop - now!")   # ["Don't", "stop", "now"]
normalise("Hello,  World")   # "hello world"
"""

from __future__ import annotations

import re

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*", re.UNICODE)


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def normalise(text: str) -> str:
    """Lower case, punctuation and spacing dropped: texts equal here say the same words."""
    return " ".join(words(text.lower()))
