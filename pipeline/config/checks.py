"""Value checks shared by the config sections: each failure is one ConfigError sentence that names
the dotted key, the value it got and what would be accepted.

    evol run --config configs/tiny.yaml --set train.precision=bf61
    # -> train.precision must be one of auto, fp32, bf16, fp16, not 'bf61'.

Kept free of the section modules (they import it) so that ConfigError has one home.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pipeline.core.jsonio import InputError


class ConfigError(InputError):
    """A config file, key or value is wrong; the message names it."""


def one_of(key: str, value: Any, allowed: Iterable[Any]) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {', '.join(str(a) for a in allowed)}, not {value!r}.")


def at_least(key: str, value: float, low: float, note: str = "") -> None:
    if value < low:
        raise ConfigError(f"{key} must be at least {low}{note}, not {value!r}.")


def optional_at_least(key: str, value: float | None, low: float) -> None:
    if value is not None and value < low:
        raise ConfigError(f"{key} must be at least {low}, or null for the default, not {value!r}.")


def positive(key: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{key} must be above 0, not {value!r}.")


def between(key: str, value: float, low: float, high: float, *, low_open: bool = False, high_open: bool = False):
    """low <= value <= high, each end closed unless told otherwise (written as math intervals)."""
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    if not (above and below):
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ConfigError(f"{key} must lie in {interval}, not {value!r}.")


def not_empty(key: str, value: str, what: str) -> None:
    if not str(value).strip():
        raise ConfigError(f"{key} must not be empty; give {what}.")
