"""The Ray backend's job on a real Ray with scripted replicas (no model): one replica batches exactly as
the local engine does, the driver reads a round a block at a time, the stage's placement groups serve
every job and none is left after it, and on a two-node cluster a replica killed mid-round costs only
the blocks it held while the files equal an uninterrupted run's. Fake GPUs (`num_gpus` on a machine
without one) stand in for a GPU cluster; every replica runs a StreamingFakeEngine."""

import filecmp
import os
import signal
import threading
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest

from evolve_local.evolve import run_evolve
from evolve_local.steps import ModelSet
from pipeline.config import load_config
from pipeline.engine import ChatRequest
from pipeline.engine.fake import StreamingFakeEngine
from pipeline.engine.schedule import chain_blocks
from tests.conftest import Factory, make_config, scripted
from tests.test_ray_backend import ScriptedPlan

ray = pytest.importorskip("ray")


@pytest.fixture
def fake_gpus():
    """A Ray on this machine with two GPUs that are not there: what asks for a GPU is placed as on a
    GPU node, and nothing uses one (the replicas are scripted)."""
    ray.init(num_cpus=4, num_gpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield
    ray.shutdown()


def ray_engine(*overrides, replica=None):
    from pipeline.engine.ray_backend import RayEngine

    config = load_config(None, ["engine.backend=ray", *overrides])
    replica = replica or partial(StreamingFakeEngine, lambda r: f"{r.purpose} {r.id}", finish_per_poll=2)
    return RayEngine("scripted", config.engine, config.ray, replica=replica)


class BatchTelling(StreamingFakeEngine):
    """A fake whose texts tell the step they ended in and what else was in the batch then, so two runs
    have the same texts only if their engines were sent the same requests at the same steps."""

    def poll(self):
        batch = len(self.in_flight)
        return [(r, replace(res, text=f"{res.text} @{len(self.polls)}/{batch}")) for r, res in super().poll()]


def test_one_replica_is_sent_the_local_engines_batches_block_by_block(fake_gpus):
    requests = [ChatRequest(id=f"q{i:02}", messages=[], purpose="ask", seed=i) for i in range(40)]
    respond = partial(BatchTelling, lambda r: f"{r.purpose} {r.id}", finish_per_poll=3)
    local = {
        (request.id, request.purpose): result.text
        for chains in chain_blocks(respond(), requests, ScriptedPlan(), window=8, block=1)
        for chain in chains
        for request, result in chain
    }
    engine = ray_engine("engine.chunk_size=8", "ray.batch_size=2", replica=respond)
    try:
        on_ray = [pair for block in engine.stream(iter(requests), ScriptedPlan()) for pair in block]
    finally:
        engine.close()
    assert engine.last_job["blocks"] == 20 and engine.last_job["block_size"] == 2  # many blocks, not one shard
    # both steps of every chain, each ended at the same step of the same batch as on the local engine
    assert len(on_ray) == len(local) == 80
    assert {(request.id, request.purpose): result.text for request, result in on_ray} == local


def test_the_driver_reads_a_round_a_block_at_a_time(fake_gpus):
    read = [0]

    def pool():  # the round, read lazily as the caller's pool is
        for i in range(400):
            read[0] += 1
            yield ChatRequest(id=f"q{i}", messages=[], purpose="ask", seed=i)

    engine = ray_engine("engine.chunk_size=8", "ray.batch_size=4", "engine.replicas=2")
    ahead = []
    try:
        saved = 0
        for block in engine.stream(pool(), ScriptedPlan()):
            saved += len({request.id for request, _ in block})
            ahead.append(read[0] - saved)
    finally:
        engine.close()
    assert saved == 400 and engine.last_job["blocks"] == 100
    # never more than each replica's window plus two blocks, and one block read ahead: 2 x (8 + 8) + 4
    assert max(ahead) <= 36 and len(ahead) > 10


def placement_groups() -> dict[str, int]:
    states: dict[str, int] = {}
    for group in ray.util.placement_group_table().values():
        states[group["state"]] = states.get(group["state"], 0) + 1
    return states


def test_a_stages_placement_groups_serve_all_its_jobs_and_none_is_left_after_it(fake_gpus):
    from pipeline.engine.ray_backend import RowsFailed

    # One replica of two tensor-parallel workers: a placement group of both (fake) GPUs, the whole cluster.
    # Engines that must start get a timeout no loaded machine reaches; only the blocked one waits out 5 s.
    settings = ("engine.tensor_parallel_size=2", "ray.start_timeout_s=600", "ray.batch_size=2")
    engine = ray_engine(*settings)
    asks = [ChatRequest(id=f"q{i}", messages=[], purpose="ask", seed=i) for i in range(6)]
    for job in range(3):  # seed answers, then two rounds: each job starts on the replica the first one started
        done = [pair for block in engine.stream(iter(asks), ScriptedPlan()) for pair in block]
        assert len(done) == 12
        assert engine.pool.started == 1 and placement_groups() == {"CREATED": 1}
        assert engine.last_job["startup_s"] == 0 or job == 0
    # a second engine while the first holds the GPUs cannot start: what the next stage would meet
    # if the groups were left behind
    blocked = ray_engine(*settings[:1], "ray.start_timeout_s=5", *settings[2:])
    with pytest.raises(RowsFailed, match=r"1 of 1 engine replicas did not start within ray\.start_timeout_s=5 s"):
        next(blocked.stream(asks[:1]))
    blocked.close()
    engine.close()
    assert placement_groups() == {"REMOVED": 2}  # the stage's group and the one that never started
    following = ray_engine(*settings)  # the next stage gets the GPUs at once
    try:
        assert len([pair for block in following.stream(asks) for pair in block]) == 6
    finally:
        following.close()
    assert placement_groups() == {"REMOVED": 3}


class StallOnce(StreamingFakeEngine):
    """A replica's scripted engine. The first replica process to finish `after` evolutions writes its
    pid to `marks/stalled` and stalls until the test kills it; every other process (the other replica,
    a restarted one) runs on. Each process lists the chains it started in `marks/started-<pid>`."""

    def __init__(self, respond, marks: str, after: int):
        super().__init__(respond, finish_per_poll=2)
        self.marks, self.after, self.finished = Path(marks), after, 0

    def submit(self, requests):
        with open(self.marks / f"started-{os.getpid()}", "a") as log:
            log.writelines(f"{r.id}\n" for r in requests if r.purpose == "evolve")
        super().submit(requests)

    def poll(self):
        if self.finished >= self.after:
            try:
                fd = os.open(self.marks / "stalled", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                time.sleep(300)  # the test kills this process as soon as the file is there
                raise RuntimeError("the stalled replica was not killed")
        finished = super().poll()
        self.finished += sum(request.purpose == "evolve" for request, _ in finished)
        return finished


def test_a_replica_killed_mid_round_costs_only_the_blocks_it_held(tmp_path):
    from ray.cluster_utils import Cluster

    local = Factory()
    run_evolve(make_config(tmp_path, rounds=1), tmp_path / "local", local.models, quiet=True)

    marks = tmp_path / "marks"
    marks.mkdir()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    killed = []

    def kill_the_stalled_replica():  # as the OOM killer or a lost node would, once it holds blocks
        stalled = marks / "stalled"
        for _ in range(6000):
            if stalled.exists() and stalled.read_text():
                pid = int(stalled.read_text())
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_the_stalled_replica, daemon=True)
    try:
        cluster.add_node(num_cpus=2)
        config = make_config(
            tmp_path, "engine.backend=ray", "engine.replicas=2", "engine.chunk_size=4", "ray.batch_size=1", rounds=1
        )
        config.ray.address = cluster.address
        engines = []

        def make(role):
            from pipeline.engine.ray_backend import RayEngine

            replica = partial(StallOnce, scripted, marks=str(marks), after=3)
            engines.append(RayEngine("fake", config.engine, config.ray, replica=replica))
            return engines[-1]

        names = {role: "fake" for role in ("evolver", "equality", "responder")}
        killer.start()
        run_evolve(config, tmp_path / "ray", ModelSet(names, {r: "h" for r in names}, make), quiet=True)
        killer.join()
        (engine,) = engines
        job = engine.last_job
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert killed  # the replica stalled mid-round and was killed
    for name in ("evolve/round_1.jsonl", "data/C1.jsonl"):  # the files of a run nobody killed
        assert filecmp.cmp(tmp_path / "local" / name, tmp_path / "ray" / name, shallow=False), name
    started = {int(f.name.split("-")[1]): f.read_text().split() for f in marks.glob("started-*")}
    mine = started.pop(killed[0])
    others = [i for ids in started.values() for i in ids]
    twice = sorted(set(mine) & set(others))
    # generated twice: only chains of the blocks the killed replica held, at most its window plus one block
    assert 0 < len(twice) <= job["redone_chains"] <= 4 + 1
    assert len(others) == len(set(others))  # no chain started twice outside the killed process
    delivered = {p["id"] for p in engine.placement if p["replica"].endswith(f":{killed[0]}")}
    assert delivered and not delivered & set(others)  # what it handed back before the kill was not redone
    assert sorted(delivered | set(others)) == sorted(f"s{i}@r1" for i in range(9))


def test_the_driver_shows_a_bar_of_chains_done_of_total_with_rate_and_eta(fake_gpus, tmp_path, capsys):
    import re

    config = make_config(tmp_path, "engine.backend=ray", "ray.batch_size=2", rounds=1)
    engines = []

    def make(role):
        from pipeline.engine.ray_backend import RayEngine

        engines.append(RayEngine("fake", config.engine, config.ray, replica=partial(StreamingFakeEngine, scripted)))
        return engines[-1]

    names = {role: "fake" for role in ("evolver", "equality", "responder")}
    run_evolve(config, tmp_path / "ray", ModelSet(names, {r: "h" for r in names}, make))
    err = capsys.readouterr().err
    # tqdm's bar as the terminal shows it: "round 1: 100%|####| 9/9 [00:01<00:00, 6.50item/s, tok/s=...]"
    bars = re.findall(
        r"round 1: +\d+%\|[^|]*\| (\d+)/(\d+) \[(\d\d:\d\d)<(\d\d:\d\d|\?), +([0-9.?]+)(item/s|s/item)", err
    )
    assert bars and bars[0][:2] == ("0", "9")  # shown before the first block is back
    assert bars[-1][:2] == ("9", "9") and bars[-1][3] == "00:00"  # every chain done, the ETA run out
    assert engines[0].last_job["rows"] == 9 and engines[0].last_job["blocks"] >= 2  # one job, several blocks
    assert "[ray] starting 1 engine replica(s)" in err
