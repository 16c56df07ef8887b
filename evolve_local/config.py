"""The `evolve` section of the config (see pipeline/config.py for how configs load)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EvolveConfig:
    seeds: str = ""  # empty: the seed set shipped in evolve_local/data/
    rounds: int = 4
