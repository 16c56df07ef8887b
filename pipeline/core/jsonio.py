"""Reading and writing the JSON and JSONL files that stages exchange.

Every write is atomic (a temp file in the same directory, then a rename), so a killed process
never leaves a half-written output behind. Every read names the file and line of a bad record.

    from pipeline.core.jsonio import iter_records, read_jsonl, write_jsonl
    rows = read_jsonl("runs/tiny/data/C1.jsonl")             # a stage's own JSONL output
    for line, seed in iter_records("seeds.json"):            # a user's file: JSON array or JSONL
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


class InputError(ValueError):
    """A user-supplied file or option is wrong; the message says which and what to do."""


def check_file(path: Path) -> None:
    if path.is_dir():
        raise InputError(f"{path} is a directory; a file was expected there.")
    if not path.is_file():
        raise InputError(f"{path}: file not found.")


def decode_utf8(data: bytes, path: Path, first_line: int = 1) -> str:
    """The text of `data`, or an InputError naming the line that is not UTF-8 (a BOM is accepted)."""
    try:
        return data.decode("utf-8-sig" if first_line == 1 else "utf-8")
    except UnicodeDecodeError as err:
        line = first_line + data[: err.start].count(b"\n")
        kind = "UTF-16" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else "UTF-8"
        raise InputError(
            f"{path}:{line}: not UTF-8 text{' (the file is ' + kind + ')' if kind != 'UTF-8' else ''}; "
            f"save it as UTF-8."
        ) from None


def read_text_file(path: str | Path) -> str:
    """A whole UTF-8 file; missing, a directory or another encoding is an InputError naming it."""
    path = Path(path)
    check_file(path)
    return decode_utf8(path.read_bytes(), path)


def parse_json(text: str, where: str):
    """json.loads whose every failure (bad syntax, a 5000-digit number, deep nesting) is an InputError."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{where}: not valid JSON ({err.msg}).") from None
    except (ValueError, RecursionError) as err:
        raise InputError(f"{where}: not usable JSON ({err or 'nested too deeply'}).") from None


def iter_jsonl(path: str | Path, on_bad: Callable[[int, str], None] | None = None) -> Iterator[tuple[int, dict]]:
    """Yield (line number, record) for each non-blank line; a bad line is an InputError, or with
    `on_bad(line, reason)` (reason "invalid_json" or "not_an_object") reported there and skipped."""
    path = Path(path)
    check_file(path)
    with path.open("rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            line = decode_utf8(raw, path, lineno)
            if not line.strip():
                continue
            try:
                record = parse_json(line, f"{path}:{lineno}")
            except InputError:
                if on_bad is None:
                    raise
                on_bad(lineno, "invalid_json")
                continue
            if not isinstance(record, dict):
                if on_bad is None:
                    raise InputError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}.")
                on_bad(lineno, "not_an_object")
                continue
            yield lineno, record


_JSON_SPACE = re.compile(r"[ \t\n\r]*")


def is_json_array_file(path: str | Path) -> bool:
    """A .json file, or any file whose first non-blank character is '[', holds one JSON array."""
    path = Path(path)
    if path.suffix == ".json":
        return True
    with path.open("r", encoding="utf-8", errors="replace") as handle:
        return handle.read(4096).lstrip("\ufeff \t\r\n").startswith("[")


def iter_records(path: str | Path, on_bad: Callable[[int, str], None] | None = None) -> Iterator[tuple[int, dict]]:
    """(line, record) for each record of a user's input file: one JSON array (`is_json_array_file`;
    the line is where the record starts) or JSONL (`iter_jsonl`). A record that is not an object is
    an InputError naming the file and line, or goes to `on_bad` as in `iter_jsonl`; an array must
    parse as a whole."""
    path = Path(path)
    check_file(path)
    if not is_json_array_file(path):
        yield from iter_jsonl(path, on_bad)
        return
    text = read_text_file(path)

    def line_at(pos: int) -> int:
        return text.count("\n", 0, pos) + 1

    def broken(pos: int, why: str) -> InputError:
        return InputError(
            f"{path}:{line_at(pos)}: not valid JSON ({why}); a .json file, or one that starts with '[', "
            f"must be one JSON array of records (use .jsonl for one record per line)."
        )

    pos = _JSON_SPACE.match(text).end()
    if not text.startswith("[", pos):
        raise InputError(
            f"{path}: a .json file must hold a list of records (one JSON array); use .jsonl for one record per line."
        )
    decoder = json.JSONDecoder()
    pos = _JSON_SPACE.match(text, pos + 1).end()
    more = not text.startswith("]", pos)
    while more:
        try:
            record, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise broken(err.pos, err.msg) from None
        except (ValueError, RecursionError) as err:  # a 5000-digit number, nesting too deep
            raise broken(pos, str(err) or "nested too deeply") from None
        if isinstance(record, dict):
            yield line_at(pos), record
        elif on_bad is None:
            raise InputError(f"{path}:{line_at(pos)}: expected a JSON object, got {type(record).__name__}.")
        else:
            on_bad(line_at(pos), "not_an_object")
        pos = _JSON_SPACE.match(text, end).end()
        more = text.startswith(",", pos)
        if more:
            pos = _JSON_SPACE.match(text, pos + 1).end()
        elif not text.startswith("]", pos):
            raise broken(pos, "expected ',' or ']'")
    if text[_JSON_SPACE.match(text, pos + 1).end() :]:
        raise broken(pos + 1, "extra data after the array")


def read_jsonl(path: str | Path) -> list[dict]:
    return [record for _, record in iter_jsonl(path)]


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_open(path: str | Path, binary: bool = False) -> Iterator[IO]:
    """A text (or `binary`) handle on a temp file beside `path`, renamed over it only if the block completes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs should read like any other file
    try:
        with os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise _naming(err, path) from err
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_open(path) as handle:
        handle.write(text)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, binary=True) as handle:
        handle.write(data)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """An empty staging directory beside `path` (`.<name>.partial`), put in place of `path` only if the
    block completes, its files synced first: a failed or killed block never leaves a half-written `path`.

        with atomic_dir(store / name) as staging:
            model.save_pretrained(staging)
    """
    path = Path(path)
    staging = path.with_name(f".{path.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)  # left by a process killed before it could clean up
    staging.mkdir(parents=True)
    try:
        yield staging
        for file in sorted(staging.rglob("*")):
            if file.is_file():
                with file.open("rb") as handle:
                    os.fsync(handle.fileno())
        shutil.rmtree(path, ignore_errors=True)
        os.replace(staging, path)
    except BaseException as err:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(err, OSError):
            raise _naming(err, path) from err
        raise


def write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    text = read_text_file(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{path}:{err.lineno}: not valid JSON ({err.msg}).") from None
    except (ValueError, RecursionError):
        return parse_json(text, str(path))


class JsonlWriter:
    """Streams records to a temp file and renames it into place on success (`atomic_open`): readers
    only ever see a complete file, and a crash leaves the previous version (or nothing) behind.

        with JsonlWriter("out.jsonl") as out:
            out.write({"id": 1})
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.count = 0

    def __enter__(self) -> JsonlWriter:
        self._context = atomic_open(self.path)
        self.handle = self._context.__enter__()
        return self

    def write(self, record: dict) -> None:
        self.handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.count += 1

    def copy_lines(self, path: str | Path) -> None:
        """Append another JSONL file's non-blank lines verbatim (e.g. the previous cumulative set)."""
        with Path(path).open("r", encoding="utf-8") as source:
            for line in source:
                if line.strip():
                    self.handle.write(line if line.endswith("\n") else line + "\n")
                    self.count += 1

    def __exit__(self, kind, value, traceback) -> bool | None:
        return self._context.__exit__(kind, value, traceback)


def write_jsonl(path: str | Path, records: Iterable[dict]) -> int:
    """Write records atomically, streaming; returns the number written."""
    with JsonlWriter(path) as out:
        for record in records:
            out.write(record)
    return out.count


def append_jsonl(path: str | Path, records: Iterable[dict]) -> int:
    """Append whole lines and fsync: used for chunked, resumable outputs.

    A crash can at worst leave a torn last line; `read_jsonl_tolerant` drops it on resume.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    try:
        with path.open("a", encoding="utf-8") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as err:
        raise _naming(err, path) from err
    return payload.count("\n")


# A write or fsync that fails for want of space says no file name; the message to the user needs it.
_DISK_FAULTS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EIO}


def _naming(err: OSError, path: Path) -> OSError:
    if err.filename or err.errno not in _DISK_FAULTS:
        return err
    return type(err)(err.errno, err.strerror or os.strerror(err.errno), str(path))


def read_jsonl_tolerant(path: str | Path) -> list[dict]:
    """Read a file written by `append_jsonl`, cutting off a torn final line left by a crash.

    The torn tail is truncated on disk too, so the next append starts on a clean line.
    """
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        with path.open("r+b") as handle:
            handle.truncate(len(complete))
    records = []
    for lineno, line in enumerate(complete.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise InputError(f"{path}:{lineno}: not valid JSON in a resumable output file.") from None
    return records
