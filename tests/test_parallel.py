"""Data-parallel generation over several engine processes (fake engines here; vLLM on GPUs for real)."""

import functools
import os

import pytest

from pipeline.engine import ChatRequest
from pipeline.engine.fake import FakeEngine
from pipeline.engine.parallel import DataParallelEngine, worker_devices


def where_am_i(request):
    return f"{request.id} on gpu {os.environ.get('CUDA_VISIBLE_DEVICES')} pid {os.getpid()}"


def broken_factory():
    raise RuntimeError("no such model")


def requests(n):
    return [ChatRequest(id=str(i), messages=[{"role": "user", "content": f"q{i}"}]) for i in range(n)]


def test_requests_are_split_over_workers_and_come_back_in_order():
    engine = DataParallelEngine(functools.partial(FakeEngine, where_am_i), size=2, model_name="fake")
    try:
        results = engine.generate(requests(5))
        assert [r.id for r in results] == ["0", "1", "2", "3", "4"]
        assert [r.text.split(" on ")[0] for r in results] == ["0", "1", "2", "3", "4"]
        gpus = [r.text.split("gpu ")[1].split(" ")[0] for r in results]
        assert gpus == ["0", "1", "0", "1", "0"]  # round robin, each worker pinned to its own GPU
        pids = {r.text.rsplit("pid ", 1)[1] for r in results}
        assert len(pids) == 2 and str(os.getpid()) not in pids
        assert [r.id for r in engine.generate(requests(1))] == ["0"]  # fewer requests than workers
    finally:
        engine.close()


def test_a_worker_that_cannot_start_is_one_clear_error():
    with pytest.raises(RuntimeError, match="worker 0 .*failed to start"):
        DataParallelEngine(broken_factory, size=1)


def test_gpu_groups_for_tensor_parallel_workers():
    assert worker_devices(4, 1) == ["0", "1", "2", "3"]
    assert worker_devices(2, 2) == ["0,1", "2,3"]
