"""The `ray` section of the config: where the Ray cluster is, for `engine.backend: ray`.

    evol evolve --config configs/tiny.yaml --set engine.backend=ray --set engine.replicas=2 --out runs/tiny-ray

Every value here changes where and how fast generation runs, never what it writes, so none of them
enters a stage's key: a run started on one backend resumes on the other.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config.fields import throughput


@dataclass
class RayConfig:
    # Empty: start a Ray instance on this machine for the stage and stop it afterwards.
    # "auto": join the cluster this machine belongs to (`ray start` ran here);
    # "ray://host:10001": join a remote cluster through Ray Client.
    address: str = throughput("")
    # CPUs a local Ray may use (0: all of them); ignored when joining a cluster.
    num_cpus: int = throughput(0)
    # Rows per batch sent to an engine replica; smaller batches spread better over replicas and
    # lose less work when a replica dies, larger ones cost less overhead per row.
    batch_size: int = throughput(16)
    # CPUs reserved per engine worker on a CPU-only cluster (vLLM-cpu runs each worker in a process).
    cpus_per_worker: int = throughput(1)
