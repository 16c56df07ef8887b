"""Records every attempt of this Python process to reach anything but this machine.

Put this folder on PYTHONPATH and name a log file in EVOL_NET_LOG: Python imports `sitecustomize`
at start-up, so every process of a run (stages, vLLM's engine core, a server, Ray workers) gets an
audit hook that appends one JSON line per socket connection, datagram or name lookup whose target
is not loopback, with the process and its command line. tests/test_offline_bundle.py runs the
pipeline inside `unshare -n`, where such an attempt fails anyway; the log makes it fail the test
even when the code that tried swallows the error (usage statistics, update checks, a hub probe).
Only Python's socket layer is seen: a C library opening its own socket is stopped by the namespace
but not logged.
"""

import json
import os
import socket
import sys

_LOG = os.environ.get("EVOL_NET_LOG")
_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback", ""}


def _local_host(host) -> bool:
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    host = str(host).strip("[]").lower()
    return (
        host in _LOCAL_NAMES
        or host == socket.gethostname().lower()
        or host.startswith("127.")
        or host in ("::1", "0.0.0.0", "::", "::ffff:127.0.0.1")
    )


def _target(event: str, args: tuple) -> str | None:
    """The remote host (and port) of a socket event, or None when it stays on this machine."""
    if event in ("socket.connect", "socket.sendto", "socket.sendmsg"):
        address = args[1] if len(args) > 1 else None
        if not isinstance(address, tuple):  # AF_UNIX paths and abstract names are local
            return None
        return None if _local_host(address[0]) else f"{address[0]}:{address[1]}"
    if event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex", "socket.gethostbyaddr"):
        host = args[0] if args else None
        return None if _local_host(host) else str(host)
    return None


def _hook(event: str, args: tuple) -> None:
    if not event.startswith("socket."):
        return
    try:
        target = _target(event, args)
    except Exception:  # never let the guard itself break the process it watches
        return
    if target is None:
        return
    line = json.dumps({"pid": os.getpid(), "event": event, "target": target, "argv": sys.argv[:4]}) + "\n"
    fd = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


if _LOG:
    sys.addaudithook(_hook)
