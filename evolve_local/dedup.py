"""Near-duplicate removal and test-set decontamination of instructions, with datasketch MinHash.

    evol evolve --config configs/tiny.yaml --set evolve.dedup_threshold=0.8 --out runs/tiny

`NearDuplicates` indexes every instruction admitted to the training set so far (seeds, then the kept
evolutions of each round in order; in a scratch SQLite file, so memory stays flat); a new one whose
estimated Jaccard similarity over character shingles reaches the threshold is a `near_duplicate`. `TestSetFilter` flags an instruction that
shares a long run of words with a test instruction, or is MinHash-similar to one: `contaminated`.
Both are deterministic (fixed MinHash seed), so a resumed run rebuilds the same index.
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np

from pipeline.core.scratch import Scratch
from pipeline.core.text import normalise, words

MINHASH_SEED = 1
MIN_WHOLE_TEST_WORDS = 5  # a test instruction shorter than the n-gram counts only if this long


def shingles(text: str, size: int) -> set[bytes]:
    text = normalise(text)
    if len(text) <= size:
        return {text.encode("utf-8")}
    return {text[i : i + size].encode("utf-8") for i in range(len(text) - size + 1)}


@functools.lru_cache(maxsize=4)
def _permutations(permutations: int):
    """The seeded hash permutations, made once: datasketch draws them again for every MinHash,
    which was a fifth of the evolve stage's own time (profiled at 2K seeds)."""
    from datasketch import MinHash

    template = MinHash(num_perm=permutations, seed=MINHASH_SEED)
    return template.permutations, template.scheme


@functools.lru_cache(maxsize=1)
def minhash(text: str, size: int, permutations: int):
    """The sketch of one text; the last one is kept, since a kept evolution is sketched for the
    test-set filter and then again for the near-duplicate index."""
    from datasketch import MinHash

    drawn, scheme = _permutations(permutations)
    sketch = MinHash(num_perm=permutations, seed=MINHASH_SEED, permutations=drawn, scheme=scheme)
    sketch.update_batch(sorted(shingles(text, size)))
    return sketch


class NearDuplicates:
    """An LSH index of admitted instructions; `check_and_add` admits or names the earlier twin.

    The index lives in a scratch SQLite file (pipeline/core/scratch.py), not in memory, since it holds
    every instruction admitted so far (~250K at the paper's scale): per instruction its MinHash
    signature, its band keys and a digest of its normalised text. The bands are datasketch's
    MinHashLSH's for the same threshold and permutations, and a band key is the band's exact
    hashvalues, so the candidates are exactly those MinHashLSH proposes; the estimated similarity
    (the share of equal hashvalues, as MinHash.jaccard) then decides.
    """

    def __init__(
        self,
        threshold: float,
        shingle_chars: int,
        permutations: int,
        enabled: bool = True,
        scratch: Scratch | None = None,
    ):
        from datasketch import MinHashLSH

        self.enabled = enabled
        self.threshold = threshold
        self.size = shingle_chars
        self.permutations = permutations
        # MinHashLSH's (bands, rows) for this threshold: only its hash ranges are used
        self.ranges = MinHashLSH(threshold=threshold, num_perm=permutations).hashranges
        self._own = scratch is None
        self.scratch = scratch if scratch is not None else Scratch()
        db = self.scratch.db
        for table in ("nd_items", "nd_bands", "nd_exact"):
            db.execute(f"DROP TABLE IF EXISTS {table}")
        db.execute("CREATE TABLE nd_items (n INTEGER PRIMARY KEY, id TEXT NOT NULL, sketch BLOB NOT NULL)")
        db.execute("CREATE TABLE nd_bands (key BLOB NOT NULL, n INTEGER NOT NULL)")
        db.execute("CREATE INDEX nd_bands_key ON nd_bands (key)")
        db.execute("CREATE TABLE nd_exact (digest BLOB PRIMARY KEY, id TEXT NOT NULL) WITHOUT ROWID")
        self.count = 0

    def check_and_add(self, item_id: str, instruction: str) -> str | None:
        """None when admitted (and indexed); otherwise why it is a near-duplicate."""
        if not self.enabled:
            return None
        db = self.scratch.db
        digest = hashlib.blake2b(normalise(instruction).encode("utf-8"), digest_size=16).digest()
        same = db.execute("SELECT id FROM nd_exact WHERE digest = ?", (digest,)).fetchone()
        if same is not None:
            return f"the same text as {same[0]}"
        values = minhash(instruction, self.size, self.permutations).hashvalues
        keys = [i.to_bytes(2, "big") + values[start:end].tobytes() for i, (start, end) in enumerate(self.ranges)]
        marks = ",".join("?" * len(keys))
        candidates = db.execute(
            f"SELECT id, sketch FROM nd_items WHERE n IN (SELECT n FROM nd_bands WHERE key IN ({marks}))", keys
        ).fetchall()
        # LSH only proposes candidates; the estimated similarity decides, so the threshold is exact.
        best = None
        for other, sketch in sorted(candidates):
            similarity = float(np.count_nonzero(values == np.frombuffer(sketch, dtype=values.dtype))) / len(values)
            if similarity >= self.threshold and (best is None or similarity > best[1]):
                best = (other, similarity)
        if best is not None:
            return f"a near-duplicate of {best[0]} (similarity {best[1]:.2f})"
        self.count += 1
        db.execute("INSERT INTO nd_items (n, id, sketch) VALUES (?, ?, ?)", (self.count, item_id, values.tobytes()))
        db.executemany("INSERT INTO nd_bands (key, n) VALUES (?, ?)", [(key, self.count) for key in keys])
        db.execute("INSERT INTO nd_exact (digest, id) VALUES (?, ?)", (digest, item_id))
        self.scratch.wrote(2 + len(keys))
        return None

    def close(self) -> None:
        """Delete the index's own scratch file (a scratch given to it is its owner's to close)."""
        if self._own:
            self.scratch.close()


class TestSetFilter:
    """Flags instructions overlapping any test instruction."""

    __test__ = False  # not a pytest class, despite the name

    def __init__(
        self, tests: list[tuple[str, str]], ngram: int, threshold: float, shingle_chars: int, permutations: int
    ):
        from datasketch import MinHashLSH

        self.ngram = ngram
        self.threshold = threshold
        self.size = shingle_chars
        self.permutations = permutations
        self.grams: dict[tuple[str, ...], str] = {}
        self.lengths = {ngram}
        self.lsh = MinHashLSH(threshold=threshold, num_perm=permutations)
        self.sketches = {}
        for test_id, text in tests:
            tokens = words(text.lower())
            if len(tokens) >= ngram:
                for i in range(len(tokens) - ngram + 1):
                    self.grams.setdefault(tuple(tokens[i : i + ngram]), test_id)
            elif len(tokens) >= MIN_WHOLE_TEST_WORDS:
                self.grams.setdefault(tuple(tokens), test_id)
                self.lengths.add(len(tokens))
            sketch = minhash(text, shingle_chars, permutations)
            if test_id not in self.sketches:
                self.lsh.insert(test_id, sketch)
                self.sketches[test_id] = sketch
        self.size_of_set = len(tests)

    def overlap(self, instruction: str) -> str | None:
        tokens = words(instruction.lower())
        for length in sorted(self.lengths):
            for i in range(len(tokens) - length + 1):
                test_id = self.grams.get(tuple(tokens[i : i + length]))
                if test_id is not None:
                    return f"shares {length} words in a row with test item {test_id}"
        sketch = minhash(instruction, self.size, self.permutations)
        for test_id in sorted(self.lsh.query(sketch)):
            similarity = sketch.jaccard(self.sketches[test_id])
            if similarity >= self.threshold:
                return f"similar to test item {test_id} (similarity {similarity:.2f})"
        return None
