"""Reading and writing the JSON and JSONL files that stages exchange.

Every write is atomic (a temp file in the same directory, then a rename), so a killed process
never leaves a half-written output behind. Every read names the file and line of a bad record.

    from pipeline.core.jsonio import read_jsonl, write_jsonl
    rows = read_jsonl("prompts.jsonl")
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
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


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield (line number, record) for each non-blank line; a bad line is an InputError."""
    path = Path(path)
    check_file(path)
    with path.open("rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            line = decode_utf8(raw, path, lineno)
            if not line.strip():
                continue
            record = parse_json(line, f"{path}:{lineno}")
            if not isinstance(record, dict):
                raise InputError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}.")
            yield lineno, record


def read_jsonl(path: str | Path) -> list[dict]:
    return [record for _, record in iter_jsonl(path)]


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_open(path: str | Path) -> Iterator[IO[str]]:
    """A text handle on a temp file beside `path`, renamed over it only if the block completes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs should read like any other file
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
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


def write_jsonl(path: str | Path, records: Iterable[dict]) -> int:
    """Write records atomically, streaming; returns the number written."""
    count = 0
    with atomic_open(path) as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count


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
