"""The ledger of a resumable output: which records a JSONL file already holds, which are left to make,
appending each finished block as it comes, and the final rewrite in the caller's order.

    ledger = Ledger("runs/tiny/answers/base/answers.jsonl")      # records keyed by their "id"
    todo = ledger.left(rows)                                       # rows with no record yet
    ledger.append(records)                                         # per block: a crash loses at most one
    ledger.finish(row["id"] for row in rows)                       # one atomic rewrite, in input order

Every stage that resumes (generate, answer, judge, the analysis's ratings, each evolution step) keeps
its progress this way. A crash can at worst tear the file's last line: it is cut off when the file is
read (`jsonio.read_jsonl_tolerant`), or before the first append of a ledger that never read it. A key
written twice (a retried request appended after the failed one) counts with its last record.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, MutableMapping
from operator import itemgetter
from pathlib import Path
from typing import Any

from pipeline.core.jsonio import append_jsonl, read_jsonl_tolerant, write_jsonl


class Ledger:
    """The finished records of one append-only JSONL file, by key.

    `key`: the field that names a record ("id") or a function of the record, e.g. (id, order).
    `keep(record)`: whether a record on disk still counts (one of an item no longer asked for, or
    made with other settings, is ignored; it stays in the file until `finish` rewrites it).
    `redo(record)`: whether a record on disk is no answer and must be made again (an engine error);
    it stays in `done` until its new record replaces it.
    `into`: the mapping that holds `done` (default a dict; e.g. a disk-backed `ScratchRecords`).
    The file is read the first time `done` is asked for (or on `read()`), so a ledger that only
    appends never reads it.
    """

    def __init__(
        self,
        path: str | Path,
        key: str | Callable[[dict], Hashable] = "id",
        keep: Callable[[dict], bool] | None = None,
        redo: Callable[[dict], bool] | None = None,
        into: MutableMapping | None = None,
    ):
        self.path = Path(path)
        self.key = itemgetter(key) if isinstance(key, str) else key
        self.keep, self.redo = keep, redo
        self._done = {} if into is None else into
        self._read = False

    def read(self) -> Ledger:
        """Read the file now (a bad line fails here, before any model loads); returns the ledger."""
        if not self._read:
            for record in read_jsonl_tolerant(self.path):
                if self.keep is None or self.keep(record):
                    self._done[self.key(record)] = record
            self._read = True
        return self

    @property
    def done(self) -> MutableMapping:
        """Key -> the last record written for it (records `keep` rejects left out)."""
        return self.read()._done

    def is_left(self, key: Hashable) -> bool:
        """No record for `key` yet, or one to make again (`redo`)."""
        record = self.done.get(key)
        return record is None or (self.redo is not None and self.redo(record))

    def left(self, items: Iterable[Any], key: Callable[[Any], Hashable] | None = None) -> list:
        """The items still to make, in their order; `key(item)` is an item's record key (by default
        the ledger's own key: items that carry it as records do, e.g. rows with an "id")."""
        key = key or self.key
        return [item for item in items if self.is_left(key(item))]

    def append(self, records: list[dict]) -> None:
        """Append one finished block (whole lines, flushed and synced) and count it as done."""
        if not self._read and _torn(self.path):
            read_jsonl_tolerant(self.path)  # cuts the torn line, so the block starts on a line of its own
        append_jsonl(self.path, records)
        if self._read:
            for record in records:
                self._done[self.key(record)] = record

    def finish(self, keys: Iterable[Hashable]) -> list[dict]:
        """Rewrite the file atomically with the record of each key, in that order, and return them:
        a resumed run appended out of order, and keys not asked for (or written twice) drop out."""
        records = [self.done[key] for key in keys]
        write_jsonl(self.path, records)
        return records


def _torn(path: Path) -> bool:
    """Whether the file ends inside a line (a crash mid-append); reads one byte, not the file."""
    try:
        with path.open("rb") as handle:
            if handle.seek(0, 2) == 0:
                return False
            handle.seek(-1, 2)
            return handle.read(1) != b"\n"
    except FileNotFoundError:
        return False
