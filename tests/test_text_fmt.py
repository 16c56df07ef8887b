"""The foundation's small text helpers: words, normal form, clipping, and the "-" for a missing number."""

from pipeline.core.fmt import MISSING, num, pct
from pipeline.core.text import clip, normalise, words


def test_words_and_normal_form():
    assert words("Don't stop - now!") == ["Don't", "stop", "now"]
    assert normalise("Hello,  World") == normalise("hello world!") == "hello world"


def test_clip_marks_only_a_real_cut():
    assert clip("abcdef", 3, "|") == ("abc|", True)
    assert clip("ab   cdef", 4, "|", trim=True) == ("ab|", True)
    assert clip("abc", 3, "|") == ("abc", False) and clip("abcdef", 0, "|") == ("abcdef", False)


def test_a_missing_number_prints_as_a_dash_everywhere():
    assert num(None) == pct(None) == num(None, "%", spec=".2f") == MISSING == "-"
    assert num(0.5) == "0.5" and num(55.6, "%") == "55.6%" and num(2.0, spec=".2f") == "2.00"
    assert num(100.0, "%", spec="") == "100.0%"
    assert pct(0.125) == "12.5%" and pct(1 / 3, digits=2) == "33.33%"
