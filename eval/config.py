"""The `eval` section of the config (see pipeline/config.py for how configs load)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EvalConfig:
    # Empty: $EVOL_TESTSET, then ../shared/data/evol_instruct_testset.jsonl, then the shipped sample.
    testset: str = ""
