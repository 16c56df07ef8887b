"""One writer per output: an OS-level lock that every writing `evol` command holds while it works.

    from pipeline.core.lock import hold
    with hold("runs/tiny"):          # refused at once with InputError if another command writes there
        ...

The lock is `flock` on a small file beside the target (`runs/.tiny.lock` for `runs/tiny`): beside,
not inside, because a stage may delete and recreate its own output directory. The OS releases the
lock when the holder dies, so a `kill -9` never leaves a stale lock; the file stays behind and only
says who held it last (pid, command line, start time), for the refusal to name the holder.

Nesting: a command also takes a shared lock on the lock file of every enclosing directory that has
one, so `evol train --out runs/tiny/sft/C1` is refused while `evol run` holds `runs/tiny`, and the
other way round. The children of `evol run` must not be refused by their parent: the parent lists
the locks it holds in $EVOL_HELD_LOCKS and passes their descriptors to its children (so an orphaned
child still holds them), and a process skips a listed lock whose recorded holder is its ancestor.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from pipeline.core.jsonio import InputError

ENV = "EVOL_HELD_LOCKS"
_held: dict[str, int] = {}  # lock file -> descriptor, for the children of this process


def lock_file(target: str | Path) -> Path:
    target = Path(os.path.abspath(target))
    return target.parent / f".{target.name}.lock"


def _ancestors(pid: int) -> set[int]:
    """Process ids above this one (Linux /proc); an empty set where /proc is not there."""
    seen: set[int] = set()
    while pid > 1 and pid not in seen:
        seen.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # the command name in (...) may hold spaces
    return seen


def _holder(path: Path) -> dict:
    try:
        holder = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _held_by_ancestor(path: Path) -> bool:
    """True when an ancestor process holds `path` and handed it down (evol run -> its stage)."""
    listed = os.environ.get(ENV, "").split(os.pathsep)
    if str(path) not in listed:
        return False
    pid = _holder(path).get("pid")
    return isinstance(pid, int) and pid != os.getpid() and pid in _ancestors(os.getpid())


def _describe(path: Path, target: Path) -> str:
    holder = _holder(path)
    pid = holder.get("pid")
    alive = isinstance(pid, int) and process_alive(pid)
    if not alive:  # a shared holder (a command working inside the target) writes no record
        return f"{target} is in use by another evol command working in it; wait for it to finish or stop it."
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    command = str(holder.get("command", "?"))
    command = command if len(command) <= 100 else command[:97] + "..."  # a run's --set list is long
    return (
        f"{target} is in use by process {pid} (`{command}`, started {since}); "
        f"wait for it to finish or stop it, then run this command again."
    )


def _command_line() -> str:
    program = Path(sys.argv[0])
    name = "evol" if program.name == "evol" or program.parent.name == "pipeline" else program.name
    return " ".join([name, *sys.argv[1:]])


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _take(path: Path, mode: int, target: Path) -> int:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise InputError(f"Cannot create the lock file {path} for {target}: {err.strerror}.") from None
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise InputError(_describe(path, target)) from None
    return fd


@contextlib.contextmanager
def hold(target: str | Path) -> Iterator[Path]:
    """Hold the exclusive lock of `target` (a file or directory) and shared locks of its parents."""
    target = Path(os.path.abspath(target))
    path = lock_file(target)
    taken: list[tuple[str, int]] = []
    try:
        # Enclosing directories first: the refusal then names the outermost busy one.
        for parent in reversed(target.parents):
            outer = lock_file(parent)
            if parent == parent.parent or str(outer) in _held or not outer.is_file() or _held_by_ancestor(outer):
                continue
            taken.append((str(outer), _take(outer, fcntl.LOCK_SH, parent)))
        if not _held_by_ancestor(path) and str(path) not in _held:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = _take(path, fcntl.LOCK_EX, target)
            taken.append((str(path), fd))
            record = {"pid": os.getpid(), "command": _command_line(), "started": time.time()}
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(record).encode() + b"\n", 0)
            except OSError:
                pass  # a full disk: the lock holds all the same, only a refusal cannot name its holder
        for name, fd in taken:
            _held[name] = fd
        previous = os.environ.get(ENV)
        os.environ[ENV] = os.pathsep.join(filter(None, [previous, *(name for name, _ in taken)]))
        try:
            yield target
        finally:
            if previous is None:
                os.environ.pop(ENV, None)
            else:
                os.environ[ENV] = previous
    finally:
        for name, fd in taken:
            _held.pop(name, None)
            os.close(fd)  # closing the last descriptor of the open file releases the flock


def held_fds() -> tuple[int, ...]:
    """Descriptors of the locks this process holds, for subprocess.Popen(pass_fds=...)."""
    return tuple(_held.values())
