"""Field helpers for config dataclasses; kept import-free so every section module can use them."""

from __future__ import annotations

from dataclasses import field
from typing import Any


def throughput(default: Any) -> Any:
    """A field that changes speed or memory, never results: excluded from the semantic hash."""
    return field(default=default, metadata={"throughput": True})
