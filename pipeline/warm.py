"""A warm interpreter that forks the stage processes of `evol run` (run.warm_start, on CPU).

Every stage is its own process, so memory is returned in between; but a fresh `python -m pipeline
answer` spends ~20 s of a 2-core box importing vLLM, torch, transformers and TRL before it does any
work, and the tiny run starts nine such processes. This server imports them once, then forks one
child per stage: each child is still a separate process that exits when its stage is done, with
its lane's cores, and it starts working at once (BENCHMARKS.md, "The tiny run": the same
answers byte for byte, without the imports).

    with Warm() as warm:                       # starts `python -m pipeline.warm`, which preloads
        process = warm.start(["answer", "--config", ...], cores=[1])
        process.wait()                         # Popen-like: poll, wait, terminate, returncode

A fork copies only the thread that calls it, and CUDA's state does not survive it. So before each
fork the server checks itself (`fork_hazard`): with CUDA initialised, or a thread besides its main
one and the idle library pools that prepare for a fork themselves, it refuses, and `evol run` starts
that stage fresh, with one line on stderr that says why. On a GPU machine every stage starts fresh
anyway (`run.warm_start`'s automatic choice). The server is a child of `evol run`, so the stages are
still its descendants: they inherit its locks (pipeline/core/lock.py) and its terminal, and Ctrl-C
reaches them as it reaches a fresh stage; the server itself ignores Ctrl-C and exits when `evol run`
closes it.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import traceback

from pipeline.core.cores import bind_cores
from pipeline.core.jsonio import InputError
from pipeline.core.lock import held_fds, process_alive

# What the stages import before their first line of work; a module missing here (trl on a box
# that only answers) is skipped, and the stage that needs it imports it itself.
PRELOAD = (
    "torch",
    "transformers",
    "datasets",
    "peft",
    "trl",
    "vllm",
    "vllm.entrypoints.llm",
    "vllm.sampling_params",
    "vllm.inputs",
    "vllm.lora.request",
    "sklearn.cluster",
    "sklearn.decomposition",
    "sklearn.manifold",
    "pipeline.cli",
    "pipeline.engine.vllm_backend",
    "evolve_local.evolve",
    "finetune.train",
    "eval.answer",
    "eval.judge",
    "eval.analysis.analyze",
)
# What a child runs, called with its arguments: the `evol` command line (named, not imported: the
# command line imports `evol run`, which imports this module).
ENTRY = "pipeline.cli:main"


class WarmProcess:
    """A stage forked by the server, with the part of subprocess.Popen's interface run_steps uses."""

    def __init__(self, warm: Warm, pid: int):
        self.warm, self.pid, self.returncode = warm, pid, None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.warm.collect()
            self.returncode = self.warm.exits.get(self.pid)
        return self.returncode

    def wait(self) -> int:
        while self.poll() is None:
            self.warm.collect(timeout=0.2)
        return self.returncode

    def terminate(self) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


class Warm:
    """The `evol run` side: starts the server, asks it for stage processes, learns how they ended."""

    def __init__(self, preload: tuple[str, ...] = PRELOAD, entry: str = ENTRY):
        ours, theirs = socket.socketpair()
        self.server = subprocess.Popen(
            [sys.executable, "-m", "pipeline.warm", str(theirs.fileno()), entry, *preload],
            pass_fds=(*held_fds(), theirs.fileno()),
        )
        theirs.close()
        self.sock, self.buffer, self.closed = ours, b"", False
        self.started: list[int] = []
        self.exits: dict[int, int] = {}  # pid -> its exit status, as Popen.returncode

    def start(self, argv: list[str], cores: list[int] | None = None) -> WarmProcess | None:
        """A stage process running `evol ARGV` on `cores` (None: every core this process has), or None
        when the server may not fork now (`fork_hazard`; the reason goes to stderr): start the stage
        fresh instead. Waits for the server's preloading the first time."""
        # This process's environment as it is now (the run's lock list is set after the server started).
        self._send({"argv": argv, "cores": cores, "env": dict(os.environ)})
        while True:
            for message in self._receive(timeout=None):
                if "started" in message:
                    return WarmProcess(self, message["started"])
                if "refused" in message:
                    print(
                        f"Starting `evol {argv[0]}` fresh instead of forking it from the warm stage server: "
                        f"the server {message['refused']}.",
                        file=sys.stderr,
                        flush=True,
                    )
                    return None
            if self.closed:
                raise InputError(
                    f"The warm stage server (process {self.server.pid}) stopped before starting a stage; "
                    f"its message is above. Rerun with --set run.warm_start=false to start each stage fresh."
                )

    def collect(self, timeout: float = 0.0) -> None:
        """Record the stages that ended. Once the server is gone (it never is while it has children,
        unless it was killed), a stage it did not report is counted as failed when its process is gone."""
        self._receive(timeout)
        if self.closed:
            for pid in self._unreported():
                if not process_alive(pid):
                    self.exits[pid] = 1

    def close(self, abort: bool = False) -> None:
        """No more stages: the server waits for its children, then exits. `abort` (the run stopped
        with an error or Ctrl-C): stop the server too, and any stage it started that the run does
        not know of (asked for just before Ctrl-C, while the server was still importing)."""
        if abort:
            self.server.terminate()  # a server still importing never starts what it was asked
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        while not self.closed:
            self._receive(timeout=None)
            if abort:
                for pid in self._unreported():
                    WarmProcess(self, pid).terminate()
        self.sock.close()
        self.server.wait()

    def __enter__(self) -> Warm:
        return self

    def __exit__(self, kind, error, trace) -> None:
        self.close(abort=kind is not None)

    def _unreported(self) -> list[int]:
        return [pid for pid in self.started if pid not in self.exits]

    def _send(self, message: dict) -> None:
        try:
            self.sock.sendall(json.dumps(message).encode() + b"\n")
        except OSError:
            self.closed = True

    def _receive(self, timeout: float | None) -> list[dict]:
        if self.closed:
            return []
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            return []
        try:
            data = self.sock.recv(65536)
        except OSError:  # the server died with our request unread
            data = b""
        if not data:
            self.closed = True
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        messages = [json.loads(line) for line in lines if line]
        for message in messages:
            if "started" in message:
                self.started.append(message["started"])
            if "ended" in message:
                self.exits[message["ended"]] = message["returncode"]
        return messages


# ------------------------------------------------------------------ the server (python -m pipeline.warm)


def serve(fd: int, entry: str, preload: list[str]) -> None:
    """Import `preload`, then fork a stage for each request on `fd` until `evol run` closes it, and
    report each stage's start and end there; return once the last stage has ended."""
    # Ctrl-C is for the stages; `evol run` closes the server. A stage gets the Ctrl-C handling the
    # server was started with, as a fresh process inherits `evol run`'s (ignored in a background job).
    on_interrupt = signal.signal(signal.SIGINT, signal.SIG_IGN)
    for name in preload:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    module, _, function = entry.partition(":")
    target = getattr(importlib.import_module(module), function)
    sock = socket.socket(fileno=fd)
    children: set[int] = set()

    def report(message: dict) -> None:
        try:
            sock.sendall(json.dumps(message).encode() + b"\n")
        except OSError:
            pass  # `evol run` is gone: its stages finish on their own, as fresh processes would

    def fork_stage(request: dict) -> None:
        hazard = fork_hazard()
        if hazard:
            report({"refused": hazard})
            return
        sys.stdout.flush()  # or the child would write the server's buffered output a second time
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            sock.close()
            _child(target, request["argv"], request["cores"], request["env"], on_interrupt)
        children.add(pid)
        report({"started": pid})

    buffer = b""
    while True:
        _reap(children, report, block=False)  # a stage's end is reported while requests still come
        ready, _, _ = select.select([sock], [], [], 0.1)
        if not ready:
            continue
        data = sock.recv(65536)
        if not data:  # `evol run` asks for no more stages
            break
        buffer += data
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            fork_stage(json.loads(line))
    _reap(children, report, block=True)
    sock.close()


def _reap(children: set[int], report, block: bool) -> None:
    """Report the stages that have ended; with `block`, wait until all have."""
    while children:
        try:
            pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        children.discard(pid)
        report({"ended": pid, "returncode": os.waitstatus_to_exitcode(status)})


def fork_hazard() -> str | None:
    """Why this process must not fork now, as the end of a sentence that begins "the server", or None.

    A forked child has only the thread that called fork: a lock that any other thread held stays
    locked in the child for good. The idle worker pools of OpenBLAS and jemalloc (started when numpy,
    scipy or pyarrow load) do not count: both prepare for a fork themselves (pthread_atfork handlers:
    OpenBLAS stops its workers, jemalloc takes its locks), and the child starts its own workers when
    it needs them. CUDA's state does not survive a fork either."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return "has initialised CUDA, which does not survive a fork"
    if _cuda_driver_loaded():
        return "has loaded the CUDA driver (another library used CUDA), whose state does not survive a fork"
    threads = len(os.listdir("/proc/self/task"))
    others = threading.active_count() - 1  # a Python thread always counts
    if threads > 1:
        others = max(others, threads - 1 - _fork_safe_pool_threads())
    if others > 0:
        return (
            f"runs {others} thread(s) besides its main one, and a forked child would find any lock "
            f"they hold locked for good"
        )
    return None


def _cuda_driver_loaded() -> bool:
    # torch's flag misses CUDA that another library, or a device count, initialised through the driver.
    with open("/proc/self/maps") as maps:
        return any("libcuda.so" in line for line in maps)


def _fork_safe_pool_threads() -> int:
    """The threads of this process that are idle library workers whose library prepares for a fork
    itself: OpenBLAS's (a pool of n threads has n - 1 workers) and jemalloc's background threads."""
    count = 0
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/comm") as name:
                count += name.read().strip() == "jemalloc_bg_thd"
        except OSError:  # the thread ended while we looked
            pass
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return count
    pools = [
        p for p in threadpool_info() if p["internal_api"] == "openblas" and p.get("threading_layer") == "pthreads"
    ]
    return count + sum(max(pool["num_threads"] - 1, 0) for pool in pools)


def _child(target, argv: list[str], cores: list[int] | None, env: dict[str, str], on_interrupt) -> None:
    """Become the stage: `evol run`'s environment, the lane's cores and thread pools, the terminal's
    Ctrl-C, then `evol ARGV`."""
    code = 0
    try:
        signal.signal(signal.SIGINT, on_interrupt)
        os.environ.clear()
        os.environ.update(env)
        if cores:
            bind_cores(cores)  # the pools this server loaded are resized too: they never read the environment again
        sys.argv = ["evol", *argv]
        target(argv)
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        if not isinstance(done.code, int | None):
            print(done.code, file=sys.stderr)
    except KeyboardInterrupt:
        code = 130
    except BaseException:  # noqa: BLE001 - a crash in a stage ends the stage, never the server
        traceback.print_exc()
        code = 1
    finally:
        try:
            atexit._run_exitfuncs()  # what a normal exit of a fresh process would run
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


if __name__ == "__main__":
    serve(int(sys.argv[1]), sys.argv[2], sys.argv[3:])
