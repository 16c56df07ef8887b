"""Per-request seeds derived from (run seed, item id, round, purpose).

The same inputs give the same seed on every machine and every rerun, independent of batch
order or of which requests were already finished before a resume.

    seed = derive_seed(config.run.seed, item_id, round_index, "evolve")
"""

from __future__ import annotations

import hashlib


def derive_seed(*parts: object) -> int:
    blob = "\x1f".join(str(part) for part in parts).encode("utf-8")
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "big") & 0x7FFFFFFF
