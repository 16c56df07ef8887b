"""The driver's side of the Ray backend: every `RayEngine.stream` is one `RayJob` over the
stage's engine replicas (`ray_replica.Replica`), which pull blocks of chains as they have room.

    evol evolve --config configs/tiny.yaml --set engine.backend=ray --set engine.replicas=2 --out runs/tiny

The driver reads the job's requests from the caller's iterator one block at a time (`ray.batch_size`
chains; a job too short to give every replica a full block is cut in `engine.replicas` equal
blocks), never the whole round: it holds only the blocks the replicas hold. Each replica is handed
blocks until it holds its window (`engine.chunk_size`) plus one block of open chains, and gets the
next block whenever it finishes one or runs below its window, so its continuous batch never runs
short and a fast replica does more blocks than a slow one. A finished block comes back whole, with
each chain's id, and the caller saves it at once: a killed job loses only the blocks in flight, and
the caller's "skip the ids already written" resume does the rest.

A replica that dies (its process killed, its engine dead, a node lost) loses the blocks it held;
they go back to the front of the queue and the next replica with room runs them again, so only
those chains are generated twice (`RayJob.summary["redone_chains"]`). Ray restarts the dead replica at
most `ray.retries` times. A chain whose follow-up raised comes back with its error and is counted;
the job then ends in `RowsFailed`, one sentence, after every other chain was saved.

The replicas, and the placement groups of replicas that span several GPUs, are started by the
stage's first job and serve its later ones, so the next job never waits for resources the last
one held; `RayEngine.close` (the end of the stage) stops them and removes the groups.

Why not `ray.data.llm`'s processor: it sends each row to vLLM on its own, so a chain's steps would
be one processor each (one model copy per step per replica) or one job each (one engine start per
step, each step waiting for its slowest row): BENCHMARKS.md, "Ray backend", has it measured.
"""

from __future__ import annotations

import itertools
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator

from pipeline.core.jsonio import InputError
from pipeline.engine.ray_replica import Replica
from pipeline.engine.types import ChatRequest, ChatResult, FollowUp


class RowsFailed(InputError):
    """Rows of a Ray job failed on a replica; the ones that succeeded were handed back and saved.

    An InputError so that the command prints its one sentence (the cause is most often something
    the user can change: a prompt or adapter that breaks the engine, a node without memory)."""


def no_follow_up(request: ChatRequest, result: ChatResult) -> None:
    """The follow-up of independent requests: every chain is one request."""
    return None


def encode_request(request: ChatRequest) -> str:
    import json
    from dataclasses import asdict

    return json.dumps(asdict(request), ensure_ascii=False)


def decode_request(text: str) -> ChatRequest:
    import json

    return ChatRequest(**json.loads(text))


def encode_pairs(pairs: list[tuple[ChatRequest, ChatResult]]) -> list:
    from dataclasses import asdict

    return [[asdict(request), asdict(result)] for request, result in pairs]


def decode_pairs(pairs: list) -> list[tuple[ChatRequest, ChatResult]]:
    return [(ChatRequest(**request), ChatResult(**result)) for request, result in pairs]


def first_line(err: BaseException) -> str:
    return next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)[:300]


def replica_options(gpus: bool, workers: int, cpus_per_worker: int) -> tuple[dict, list[dict] | None]:
    """What each replica actor asks Ray for, and the bundles of its placement group (None: none).
    One GPU worker: the GPU itself. Several (tensor x pipeline parallel): a placement group per
    replica, in which vLLM's Ray executor places them, so a replica may span GPUs (and nodes,
    through pipeline parallelism). Replicas spread over the nodes (Ray would pack them on one)."""
    if gpus and workers > 1:
        return {"num_gpus": 0, "num_cpus": 0}, [{"GPU": 1, "CPU": 1} for _ in range(workers)]
    if gpus:
        return {"num_gpus": 1, "num_cpus": 1, "scheduling_strategy": "SPREAD"}, None
    return {"num_cpus": cpus_per_worker * workers, "scheduling_strategy": "SPREAD"}, None


class ReplicaPool:
    """The stage's replicas: started by its first job, kept for the next, stopped by `close`."""

    def __init__(self, engine):
        self.engine = engine
        self.actors: list = []
        self.groups: list = []  # placement groups, one per replica that spans several GPUs
        self.where: list[str] = []
        self.deaths: list[int] = []
        self.started = 0  # actors started, over the stage

    def start(self) -> float:
        """Start the replicas if none run; seconds until every replica's engine was ready (0: they were)."""
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        if self.actors:
            return 0.0
        s, r = self.engine.settings, self.engine.ray_settings
        gpus, workers = check_room(self.engine)
        options, bundles = replica_options(gpus, workers, r.cpus_per_worker)
        remote = ray.remote(Replica)
        # the stage's bar shows nothing until the first block is back: say why it waits
        print(
            f"[ray] starting {s.replicas} engine replica(s); the first blocks go out once every one has started",
            file=sys.stderr,
        )
        began = time.time()
        for _ in range(s.replicas):
            extra = {}
            if bundles is not None:
                group = ray.util.placement_group(bundles, strategy="PACK")
                self.groups.append(group)
                extra["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                    group, placement_group_capture_child_tasks=True
                )
            actor = remote.options(max_restarts=r.retries, max_task_retries=0, **options, **extra).remote(
                self.engine.replica_factory(gpus, workers), s.chunk_size
            )
            self.actors.append(actor)
            self.started += 1
        hellos = [actor.hello.remote() for actor in self.actors]
        ready, waiting = ray.wait(hellos, num_returns=len(hellos), timeout=r.start_timeout_s)
        if waiting:
            self.close()
            raise RowsFailed(
                f"{len(waiting)} of {s.replicas} engine replicas did not start within ray.start_timeout_s="
                f"{r.start_timeout_s} s (the cluster has no room for them, or their engines hang); nothing was sent."
            )
        try:
            answers = ray.get(hellos)
        except ray.exceptions.RayError as err:
            self.close()
            raise RowsFailed(
                f"An engine replica did not start ({first_line(err)}). "
                "Engine logs: /tmp/ray/session_latest/logs on each node."
            ) from err
        self.where = [answer["where"] for answer in answers]
        self.deaths = [0] * len(self.actors)
        return max(answer["ready"] for answer in answers) - began

    def close(self) -> None:
        """Stop every replica and remove their placement groups (the stage ends, or a job was cut short)."""
        import ray

        if not ray.is_initialized():
            self.actors, self.groups = [], []
            return
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        for group in self.groups:
            ray.util.remove_placement_group(group)
        self.actors, self.groups, self.where, self.deaths = [], [], [], []


def check_room(engine) -> tuple[bool, int]:
    """(whether the cluster has GPUs, workers per replica); warns when the cluster is short of what
    `engine.replicas` need (the pool then waits up to `ray.start_timeout_s`, as an autoscaler may add nodes)."""
    import ray

    s, r = engine.settings, engine.ray_settings
    workers = s.tensor_parallel_size * s.pipeline_parallel_size
    have = ray.cluster_resources()
    gpus = have.get("GPU", 0) > 0
    kind, per_worker = ("GPU", 1) if gpus else ("CPU", r.cpus_per_worker)
    need = s.replicas * workers * per_worker
    if need > have.get(kind, 0):
        print(
            f"[ray] engine.replicas={s.replicas} x {workers} worker(s) need {need:g} {kind}s; the cluster has "
            f"{have.get(kind, 0):g} now. Waiting up to ray.start_timeout_s={r.start_timeout_s} s for more.",
            file=sys.stderr,
        )
    return gpus, workers


class Blocks:
    """The job's blocks, read from the caller's iterator one at a time (one read ahead, to know whether
    more come); blocks a dead replica held go back to the front."""

    def __init__(self, requests: Iterator[ChatRequest], size: int, adapters: dict):
        self.requests, self.size, self.adapters = requests, size, adapters
        self.again: deque[tuple[int, list[ChatRequest]]] = deque()
        self.count = 0
        self.ahead = self._read()

    def _read(self) -> tuple[int, list[ChatRequest]] | None:
        requests = list(itertools.islice(self.requests, self.size))
        if not requests:
            return None
        for request in requests:  # the user's to fix; the first block is read before any replica starts
            if request.adapter is not None and request.adapter not in self.adapters:
                raise KeyError(
                    f"Adapter '{request.adapter}' was not given to the engine; known: {sorted(self.adapters)}."
                )
        self.count += 1
        return self.count - 1, requests

    def more(self) -> bool:
        return bool(self.again) or self.ahead is not None

    def take(self) -> tuple[int, list[ChatRequest]] | None:
        if self.again:
            return self.again.popleft()
        block, self.ahead = self.ahead, (self._read() if self.ahead is not None else None)
        return block


class RayJob:
    """One job (see the module doc) over `engine`'s replica pool; iterating it runs the job and yields
    its finished blocks. The job keeps what it learns: `placement` (each chain with the replica that
    ran it), `failed` (chain id, error) and, once it has ended, `summary` (counts and seconds)."""

    def __init__(self, engine, first: Iterable[ChatRequest], follow_up: FollowUp):
        self.engine = engine  # whose settings, adapters and replica pool the job uses
        self.settings, self.ray_settings = engine.settings, engine.ray_settings
        self.first, self.follow_up = first, follow_up
        self.placement: list[dict] = []
        self.failed: list[tuple[str, str]] = []
        self.summary: dict = {}
        self.calls: dict = {}  # a replica's call under way -> the replica
        self.restarting: set[int] = set()  # replicas Ray is starting again: their `begin` call is under way
        self.delivered: set[int] = set()  # blocks handed to the caller, by number
        self.done = self.chains = self.redone = 0
        self.first_block: float | None = None

    def __iter__(self) -> Iterator[list[tuple[ChatRequest, ChatResult]]]:
        import ray

        self.blocks = self._blocks()
        if not self.blocks.more():
            return
        self.pool = pool = self.engine.pool
        self.started = time.perf_counter()
        self.startup = pool.start()
        self.follow = ray.put(self.follow_up)
        n = len(pool.actors)
        for actor in pool.actors:
            actor.begin.remote(self.follow)
        self.held: list[dict[int, list[ChatRequest]]] = [{} for _ in range(n)]  # to hand on if a replica dies
        self.open_chains, self.busy, self.alive = [0] * n, [0.0] * n, [True] * n
        finished = False
        try:
            self._feed(list(range(n)))
            while self.calls:
                (call,), _ = ray.wait(list(self.calls), num_returns=1)
                i = self.calls.pop(call)
                reply = self._reply(call, i)
                if reply is not None:
                    yield from self._hand_on(i, reply)
            finished = True
        finally:
            if not finished:  # cut short (an error, or the caller stopped): the replicas still hold blocks
                pool.close()
        self._end(n)

    def _blocks(self) -> Blocks:
        """The job's blocks: `ray.batch_size` chains each, or `engine.replicas` equal blocks of a job too
        short to give every replica a full one."""
        replicas, batch = self.settings.replicas, self.ray_settings.batch_size
        requests = iter(self.first)
        head = list(itertools.islice(requests, replicas * batch))
        self.size = batch if len(head) == replicas * batch else max(1, -(-len(head) // replicas))
        return Blocks(itertools.chain(head, requests), self.size, self.engine.adapters)

    def _feed(self, replicas: list[int]) -> None:
        """Top up each replica to its window plus one block, a block to each in turn, and call it."""
        new: dict[int, list] = {i: [] for i in replicas}
        want = {i: self.open_chains[i] for i in replicas}
        while self.blocks.more():
            hungry = [i for i in replicas if want[i] < self.settings.chunk_size + self.size]
            if not hungry:
                break
            for i in hungry:
                block = self.blocks.take()
                if block is None:
                    break
                new[i].append(block)
                want[i] += len(block[1])
        for i in replicas:
            self.held[i].update(new[i])
            self.open_chains[i] = want[i]
            if new[i] or self.open_chains[i]:
                self.calls[self.pool.actors[i].work.remote(new[i], self.blocks.more())] = i

    def _reply(self, call, i: int) -> dict | None:
        """Replica `i`'s answer to `call`; None when it brings no blocks (a restarted replica is back,
        or the replica died and its blocks went back to the queue)."""
        import ray
        from ray.exceptions import RayActorError, RayError

        try:
            reply = ray.get(call)
        except RayActorError as err:
            self._lost(i, err)
            return None
        except RayError as err:
            raise RowsFailed(
                f"The Ray job stopped ({first_line(err)}); the blocks handed back before are saved, a rerun "
                "sends the rest. Engine logs: /tmp/ray/session_latest/logs on each node."
            ) from err
        if i in self.restarting:  # back, with its engine: it takes blocks again
            self.restarting.discard(i)
            self._feed([i])
            return None
        return reply

    def _lost(self, i: int, err: BaseException) -> None:
        """Replica `i`'s process is gone: its blocks go back to the front, for whoever has room, and Ray
        restarts it unless it died more than `ray.retries` times."""
        pool, retries = self.pool, self.ray_settings.retries
        held = self.held[i]
        lost = sorted(held)
        self.blocks.again.extendleft(sorted(((b, held[b]) for b in lost), reverse=True))
        self.redone += sum(len(held[b]) for b in lost)
        self.held[i], self.open_chains[i] = {}, 0
        pool.deaths[i] += i not in self.restarting  # a restart that failed is the same death
        print(
            f"[ray] replica {pool.where[i]} died ({first_line(err)}); its {len(lost)} block(s) go to "
            f"the next replica with room",
            file=sys.stderr,
        )
        if pool.deaths[i] > retries or i in self.restarting:
            self.alive[i] = False
            self.restarting.discard(i)
        else:  # waits for Ray to restart it (a call sent before then would fail at once)
            self.calls[pool.actors[i].begin.options(max_task_retries=-1).remote(self.follow)] = i
            self.restarting.add(i)
        if not any(self.alive):
            raise RowsFailed(
                f"Every engine replica died more than ray.retries={retries} times (last: {first_line(err)}); "
                "the blocks handed back before are saved, a rerun sends the rest. "
                "Engine logs: /tmp/ray/session_latest/logs on each node."
            ) from err
        calling = set(self.calls.values())
        self._feed([j for j in range(len(self.alive)) if self.alive[j] and j not in calling | self.restarting])

    def _hand_on(self, i: int, reply: dict) -> Iterator[list[tuple[ChatRequest, ChatResult]]]:
        """The blocks replica `i` finished, one at a time (a kill between two loses only the second),
        after it was fed again (it goes on while the caller saves)."""
        self.pool.where[i] = reply["where"]  # a restarted replica is another process
        self.open_chains[i], self.busy[i] = reply["open"], reply["busy"]
        for block in reply["blocks"]:
            del self.held[i][block["block"]]
        self._feed([i])
        for block in reply["blocks"]:
            self.done += 1
            self.chains += len(block["chains"])
            pairs = self._delivered(reply["where"], block)
            if pairs:
                if self.first_block is None:
                    self.first_block = time.perf_counter() - self.started
                yield pairs

    def _delivered(self, replica: str, block: dict) -> list[tuple[ChatRequest, ChatResult]]:
        """The finished steps of a block's chains, unless the caller had the block already (kept by block
        number, not chain id, so the driver's memory grows by a number per block); a failed chain is
        kept in `failed` instead."""
        if block["block"] in self.delivered:
            return []
        self.delivered.add(block["block"])
        pairs = []
        for chain in block["chains"]:
            self.placement.append({"id": chain["id"], "replica": replica})
            if chain["error"]:
                self.failed.append((chain["id"], chain["error"]))
                print(f"[ray] chain {chain['id']} failed: {chain['error']}", file=sys.stderr)
                continue
            pairs += chain["chain"]
        return pairs

    def _end(self, replicas: int) -> None:
        """The job's summary, said on stderr; `RowsFailed` if a chain failed (every other one was saved)."""
        self.summary = summary = {
            "rows": self.chains,
            "blocks": self.done,
            "block_size": self.size,
            "redone_chains": self.redone,
            "startup_s": round(self.startup, 1),  # until the last replica's engine was ready (0: started before)
            "replica_busy_s": round(max(self.busy), 1),  # the longest a replica worked on this job
            "first_block_s": round(self.first_block or 0.0, 1),
            "job_s": round(time.perf_counter() - self.started, 1),
        }
        print(
            f"[ray] job of {self.chains} chains in {self.done} blocks of {self.size} on {replicas} replica(s): "
            f"replicas ready after {summary['startup_s']} s, first block after {summary['first_block_s']} s, "
            f"longest replica {summary['replica_busy_s']} s, all after {summary['job_s']} s, "
            f"{self.redone} chains generated again",
            file=sys.stderr,
        )
        if self.failed:
            first_id, first_error = self.failed[0]
            raise RowsFailed(
                f"{len(self.failed)} of {self.chains} chains failed on the Ray replicas (first, {first_id}: "
                f"{first_error.splitlines()[0] if first_error else 'no message'}); the others are saved, "
                "and rerunning the same command retries only the failed ones."
            )
