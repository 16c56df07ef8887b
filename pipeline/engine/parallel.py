"""Data-parallel generation: several engine processes, one per GPU, behind the one-engine interface.

    --set engine.data_parallel_size=4      # 4 vLLM engines on GPUs 0-3 for evolve, answer, judge

Each `generate` call splits its requests round-robin over the workers, runs the shards at the same
time and puts the results back in request order. Seeds are per request, so the texts do not
depend on how requests were split. Combine with `engine.tensor_parallel_size` for models that need
several GPUs each: worker r gets GPUs r*tp .. r*tp+tp-1.
"""

from __future__ import annotations

import multiprocessing
import os
import traceback
from collections.abc import Callable

from pipeline.engine.types import ChatRequest, ChatResult, Engine


def _worker(connection, factory: Callable[[], Engine], devices: str | None) -> None:
    if devices is not None:  # before anything imports torch or vllm in this process
        os.environ["CUDA_VISIBLE_DEVICES"] = devices
    try:
        engine = factory()
        connection.send(("ready", None))
    except BaseException:  # noqa: BLE001 - the parent reports it
        connection.send(("error", traceback.format_exc()))
        return
    while True:
        message = connection.recv()
        if message is None:
            break
        try:
            connection.send(("ok", engine.generate(message)))
        except BaseException:  # noqa: BLE001
            connection.send(("error", traceback.format_exc()))
    engine.close()


def worker_devices(size: int, gpus_per_worker: int) -> list[str]:
    return [",".join(str(rank * gpus_per_worker + i) for i in range(gpus_per_worker)) for rank in range(size)]


class DataParallelEngine:
    def __init__(
        self,
        factory: Callable[[], Engine],
        size: int,
        gpus_per_worker: int = 1,
        model_name: str = "",
        pin_devices: bool = True,
    ):
        context = multiprocessing.get_context("spawn")
        self.size = size
        self.model_name = model_name
        self.devices = worker_devices(size, gpus_per_worker) if pin_devices else [None] * size
        self._workers = []
        for devices in self.devices:
            parent, child = context.Pipe()
            # not a daemon: a vLLM engine starts processes of its own
            process = context.Process(target=_worker, args=(child, factory, devices), daemon=False)
            process.start()
            self._workers.append((parent, process))
        for rank, (connection, _) in enumerate(self._workers):
            status, detail = connection.recv()
            if status != "ready":
                self.close()
                raise RuntimeError(f"Engine worker {rank} (devices {self.devices[rank]}) failed to start:\n{detail}")

    def generate(self, requests: list[ChatRequest]) -> list[ChatResult]:
        shards = [list(range(rank, len(requests), self.size)) for rank in range(self.size)]
        busy = []
        for (connection, _), indices in zip(self._workers, shards):
            if indices:
                connection.send([requests[i] for i in indices])
                busy.append((connection, indices))
        results: list[ChatResult | None] = [None] * len(requests)
        for rank, (connection, indices) in enumerate(busy):
            status, payload = connection.recv()
            if status != "ok":
                raise RuntimeError(f"Engine worker {rank} failed:\n{payload}")
            for index, result in zip(indices, payload):
                results[index] = result
        return results  # type: ignore[return-value]

    def close(self) -> None:
        for connection, process in self._workers:
            if process.is_alive():
                try:
                    connection.send(None)
                except (BrokenPipeError, OSError):
                    pass
        for _, process in self._workers:
            process.join(timeout=120)
            if process.is_alive():
                process.kill()
        self._workers = []
