"""Scratch SQLite files: state a stage looks up by key but must not hold in memory, since it grows
with the pool (the near-duplicate index of every admitted instruction, a round's finished step
records). A stage rebuilds its scratch from its own files when it resumes, so a scratch file is
never part of the run-directory contract: it is made empty when opened and deleted when closed.

    scratch = Scratch(stage_dir / "work" / "scratch.sqlite")   # or Scratch() for a temporary file
    records = scratch.records("round_1_evolve")                 # a dict-like id -> JSON record
    scratch.close()

Nothing is made durable (no journal, no sync): a crash loses the file, which the resumed stage
rebuilds. SQLite's page cache is bounded (`cache_mb`), so the process holds the same few MB whether
the table has a thousand rows or a million.
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
from collections.abc import Iterator, MutableMapping
from pathlib import Path

COMMIT_EVERY = 5000  # writes per transaction: one transaction per write would cost a sync each


class Scratch:
    def __init__(self, path: Path | None = None, cache_mb: int = 16):
        self._tmp = None
        if path is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="evol-scratch-")
            path = Path(self._tmp.name) / "scratch.sqlite"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)  # a scratch left by a killed process: rebuilt, never trusted
        self.path = path
        # one connection, used by whichever thread finishes a request (under the GIL, one at a time)
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        for pragma in ("journal_mode=OFF", "synchronous=OFF", f"cache_size=-{cache_mb * 1024}", "temp_store=FILE"):
            self.db.execute(f"PRAGMA {pragma}")
        self.db.execute("BEGIN")
        self._writes = 0

    def wrote(self, count: int = 1) -> None:
        self._writes += count
        if self._writes >= COMMIT_EVERY:
            self.db.execute("COMMIT")
            self.db.execute("BEGIN")
            self._writes = 0

    def records(self, table: str) -> ScratchRecords:
        return ScratchRecords(self, table)

    def close(self) -> None:
        if self.db is None:
            return
        self.db.close()
        self.db = None
        self.path.unlink(missing_ok=True)
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> Scratch:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ScratchRecords(MutableMapping):
    """A dict of id -> JSON-serialisable record in one table of a Scratch (made empty when opened)."""

    def __init__(self, scratch: Scratch, table: str):
        if not table.replace("_", "").isalnum():
            raise ValueError(f"not a table name: {table!r}")
        self.scratch, self.table = scratch, table
        db = scratch.db
        db.execute(f"DROP TABLE IF EXISTS {table}")
        db.execute(f"CREATE TABLE {table} (id TEXT PRIMARY KEY, record TEXT NOT NULL) WITHOUT ROWID")

    def __getitem__(self, key: str) -> dict:
        row = self.scratch.db.execute(f"SELECT record FROM {self.table} WHERE id = ?", (key,)).fetchone()
        if row is None:
            raise KeyError(key)
        return json.loads(row[0])

    def __setitem__(self, key: str, record: dict) -> None:
        self.scratch.db.execute(
            f"INSERT OR REPLACE INTO {self.table} (id, record) VALUES (?, ?)",
            (key, json.dumps(record, ensure_ascii=False)),
        )
        self.scratch.wrote()

    def __delitem__(self, key: str) -> None:
        if key not in self:
            raise KeyError(key)
        self.scratch.db.execute(f"DELETE FROM {self.table} WHERE id = ?", (key,))
        self.scratch.wrote()

    def __contains__(self, key: object) -> bool:
        query = f"SELECT 1 FROM {self.table} WHERE id = ?"
        return self.scratch.db.execute(query, (key,)).fetchone() is not None

    def __iter__(self) -> Iterator[str]:
        return (row[0] for row in self.scratch.db.execute(f"SELECT id FROM {self.table}").fetchall())

    def __len__(self) -> int:
        return self.scratch.db.execute(f"SELECT COUNT(*) FROM {self.table}").fetchone()[0]

    def drop(self) -> None:
        self.scratch.db.execute(f"DROP TABLE IF EXISTS {self.table}")
