"""The Ray backend without a cluster: its options fail with one sentence, block streaming saves every
block whatever its order, and an evolution on a block-streaming engine writes exactly what the local
path writes (resume after failed rows included). The real Ray runs are in test_ray_integration.py."""

import builtins
import filecmp
import json

import pytest

from evolve_local.evolve import run_evolve
from pipeline.config import ConfigError, load_config, semantic_dict
from pipeline.engine import ChatRequest, generate_in_chunks
from pipeline.engine.backends import backend_of
from pipeline.engine.fake import BlockFakeEngine, FakeEngine
from pipeline.engine.ray_backend import RowsFailed
from tests.test_evolve_loop import Factory, make_config, scripted


def test_backend_options_fail_with_one_sentence():
    for overrides, pattern in [
        (["engine.backend=spark"], r"engine\.backend must be one of local, ray"),
        (["engine.replicas=2"], r"need engine\.backend=ray"),
        (["engine.backend=ray", "engine.replicas=0"], r"engine\.replicas must be at least 1"),
        (["engine.backend=ray", "ray.address=http://head"], r"ray\.address 'http://head' is not a Ray address"),
    ]:
        config = load_config(None, overrides)
        with pytest.raises(ConfigError, match=pattern) as caught:
            backend_of(config)
        assert "\n" not in str(caught.value)
    for address in ("", "auto", "10.0.0.1:6379", "ray://head-node:10001"):
        config = load_config(None, ["engine.backend=ray", f"ray.address={address}"])
        backend_of(config)


def test_ray_not_installed_says_how_to_install(monkeypatch):
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError(f"No module named '{name}'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    config = load_config(None, ["engine.backend=ray"])
    with pytest.raises(ConfigError, match=r"needs Ray Data, which is not installed: pip install '\.\[ray\]'"):
        backend_of(config)


def test_backend_is_a_throughput_knob():
    # A run started on one backend resumes on the other: the stage keys do not change.
    assert semantic_dict(load_config(None, ["engine.backend=ray", "engine.replicas=4", "ray.address=auto"])) == (
        semantic_dict(load_config())
    )


def test_block_streaming_hands_every_block_to_the_caller_in_one_job():
    engine = BlockFakeEngine(lambda r: f"answer {r.id}", block_size=2)
    requests = [ChatRequest(id=f"q{i}", messages=[{"role": "user", "content": f"q {i}"}]) for i in range(5)]
    saved = []
    stats = generate_in_chunks(engine, iter(requests), chunk_size=100, on_chunk=lambda c, r: saved.append((c, r)))
    assert len(engine.streams) == 1  # one job, not one per chunk
    assert [len(chunk) for chunk, _ in saved] == [1, 2, 2]  # each block saved as it came
    assert all(req.id == res.id for chunk, results in saved for req, res in zip(chunk, results))
    assert sorted(req.id for chunk, _ in saved for req in chunk) == [r.id for r in requests]
    assert stats.requests == 5


@pytest.mark.parametrize("chained", [True, False], ids=["chains", "by_step"])
def test_evolution_on_ray_writes_what_the_local_path_writes(tmp_path, chained):
    overlap = [] if chained else ["evolve.overlap_steps=false"]
    local = Factory()
    run_evolve(make_config(tmp_path, *overlap), tmp_path / "local", local.models, quiet=True)

    blocks = Factory(block_size=2)
    blocks.engine_class = BlockFakeEngine
    config = make_config(tmp_path, "engine.backend=ray", *overlap)
    run_evolve(config, tmp_path / "ray", blocks.models, quiet=True)

    for k in range(3):
        assert filecmp.cmp(tmp_path / "local" / "data" / f"C{k}.jsonl", tmp_path / "ray" / "data" / f"C{k}.jsonl")
        assert filecmp.cmp(
            tmp_path / "local" / "evolve" / f"round_{k}.jsonl", tmp_path / "ray" / "evolve" / f"round_{k}.jsonl"
        )
    streams = [len(s) for _, engine in blocks.started for s in engine.streams]
    chains = [len(c) for _, engine in blocks.started for c in engine.chains]
    if chained:
        # round 0's seed answers are one job; each round is one chain job over the whole pool, its
        # evolve, check and answer steps chained on the replicas
        assert (streams, chains) == ([9], [9, 9])
    else:  # one job per step and round, each over every request of that step
        assert (streams, chains) == ([9, 9, 6, 5, 9, 6, 5], [])
    from pipeline.core.jsonio import read_json

    assert read_json(tmp_path / "ray" / "evolve" / "manifest.json")["backend"] == "ray"


@pytest.mark.parametrize("chained", [True, False], ids=["chains", "by_step"])
def test_failed_rows_stop_the_stage_and_a_rerun_generates_only_them(tmp_path, chained):
    overlap = [] if chained else ["evolve.overlap_steps=false"]
    config = make_config(tmp_path, "engine.backend=ray", *overlap, rounds=1)
    failing = Factory(block_size=2, fail={"s1@r1", "s6@r1"})
    failing.engine_class = BlockFakeEngine
    with pytest.raises(RowsFailed, match=r"2 of 9 (rows|chains) failed"):
        run_evolve(config, tmp_path / "run", failing.models, quiet=True)

    rerun = Factory(block_size=2)
    rerun.engine_class = BlockFakeEngine
    run_evolve(config, tmp_path / "run", rerun.models, quiet=True)
    if chained:
        (sent,) = [[r.id for r in c] for _, engine in rerun.started for c in engine.chains]
        assert sorted(sent) == ["s1@r1", "s6@r1"]  # round 0 and the other chains were saved: not sent again
        assert not [s for _, engine in rerun.started for s in engine.streams]
    else:
        streams = [[r.id for r in s] for _, engine in rerun.started for s in engine.streams]
        assert sorted(streams[0]) == ["s1@r1", "s6@r1"]  # round 0 and the other evolutions were saved
        assert [len(s) for s in streams] == [
            2,
            6,
            5,
        ]  # then the check and answer steps, which the failure never reached

    local = Factory()
    run_evolve(make_config(tmp_path, rounds=1), tmp_path / "local", local.models, quiet=True)
    assert filecmp.cmp(tmp_path / "local" / "data" / "C1.jsonl", tmp_path / "run" / "data" / "C1.jsonl")


def test_fake_engines_agree():
    # The block fake answers exactly like the batch fake, so the comparisons above test the path, not the fake.
    request = ChatRequest(id="a", messages=[{"role": "user", "content": "Explain how tides work."}], seed=3)
    (pair,) = next(BlockFakeEngine(scripted).stream([request]))
    assert pair[1] == FakeEngine(scripted).generate([request])[0]


def test_requests_and_results_travel_to_a_replica_and_back_whole():
    from pipeline.engine.ray_job import decode_pairs, decode_request, encode_pairs, encode_request

    request = ChatRequest(
        id="s1@r1",
        messages=[{"role": "user", "content": "Ünïcode \u2014 and a newline\n"}],
        max_tokens=7,
        temperature=0.0,
        top_p=0.9,
        seed=5,
        adapter="C1",
        regex="[0-9]+ [0-9]+",
        choice=None,
        purpose="check",
        context={"item": {"id": "s1", "instruction": "x"}, "results": {"evolve": {"text": "y", "seed": 3}}},
    )
    assert decode_request(encode_request(request)) == request
    result = FakeEngine("a b c").generate([request])[0]
    assert decode_pairs(json.loads(json.dumps(encode_pairs([(request, result)])))) == [(request, result)]


class ScriptedPlan:
    """A two-step chain (ask, then confirm) whose follow-up fails for one id, as a buggy step would."""

    def __call__(self, request, result):
        if request.id == "broken":
            raise ValueError("no rule for this record")
        if request.purpose == "ask":
            return ChatRequest(id=request.id, messages=request.messages, purpose="confirm", seed=request.seed)
        return None


def bare_replica(window: int, finish_per_poll: int, slow: str = ""):
    """A replica without Ray: the actor's work on the blocks it is handed. The engine finishes the
    requests whose id ends with `slow` last, so chains can end while no block is whole."""
    from pipeline.engine.fake import StreamingFakeEngine
    from pipeline.engine.ray_replica import Replica

    replica = object.__new__(Replica)
    replica.engine = StreamingFakeEngine(lambda r: f"{r.purpose} {r.id}", finish_per_poll=finish_per_poll)
    if slow:
        engine, poll = replica.engine, replica.engine.poll

        def slow_last():
            engine.in_flight.sort(key=lambda request: request.id.endswith(slow))
            return poll()

        engine.poll = slow_last
    replica.window, replica.where, replica.ready = window, "node:1", 0.0
    replica.begin(ScriptedPlan())
    return replica


def asks(*ids):
    return [ChatRequest(id=i, messages=[], purpose="ask", seed=1) for i in ids]


def test_a_replica_hands_back_whole_blocks_with_every_chain_and_its_error():
    replica = bare_replica(window=4, finish_per_poll=2)
    blocks = [(0, asks("a", "b")), (1, asks("broken", "c")), (2, asks("d"))]
    replies = [replica.work(blocks, more=False)]
    while replies[-1]["open"]:
        replies.append(replica.work([], more=False))
    done = [block for reply in replies for block in reply["blocks"]]
    assert sorted(block["block"] for block in done) == [0, 1, 2]  # each block once, whole
    assert all(len(reply["blocks"]) >= 1 for reply in replies)  # a reply comes when a block has finished
    chains = {chain["id"]: chain for block in done for chain in block["chains"]}
    assert sorted(chains) == ["a", "b", "broken", "c", "d"]  # every chain once, the failed one too
    assert chains["broken"]["error"] == "ValueError: no rule for this record"
    for chain in chains.values():
        if not chain["error"]:  # both steps, in order, in the replica's engine
            assert [request.purpose for request, _ in chain["chain"]] == ["ask", "confirm"]
    assert [len(block["chains"]) for block in sorted(done, key=lambda b: b["block"])] == [2, 2, 1]


def test_a_replica_asks_for_the_next_block_before_its_batch_runs_short():
    # While the driver has more, a replica returns once a block finished or fewer chains than its
    # window are open; topped up to its window plus a block (as RayJob._feed does), its engine is
    # sent a full window at every step until the last blocks, as the local engine's would be.
    replica = bare_replica(window=4, finish_per_poll=1, slow=".1")
    queue = [(b, asks(f"{b}.0", f"{b}.1")) for b in range(12)]
    held, replies = 0, 0
    while queue:
        new = []
        while queue and held + 2 * len(new) < 4 + 2:
            new.append(queue.pop(0))
        reply = replica.work(new, more=bool(queue))
        assert reply["blocks"] or reply["open"] < 4
        held, replies = reply["open"], replies + 1
    assert replies > 3 and all(len(batch) == 4 for batch in replica.engine.polls)
    while replica.work([], more=False)["open"]:
        pass
    assert sum(len(batch) for batch in replica.engine.batches) == 2 * 24  # every chain's two steps, once


def bare_ray_engine(**settings):
    from pipeline.engine.ray_backend import RayEngine

    config = load_config(None, ["engine.backend=ray", *[f"engine.{k}={v}" for k, v in settings.items()]])
    engine = object.__new__(RayEngine)  # no Ray, no model: the driver's side of a job
    engine.settings, engine.ray_settings = config.engine, config.ray
    engine.model_path, engine.adapters, engine.replica = "/models/base", {"C1": "/adapters/c1"}, None
    engine.seed, engine.trust_remote_code = 0, False
    return engine


def test_an_unknown_adapter_is_refused_before_any_replica_starts():
    from pipeline.engine.ray_job import RayJob

    engine = bare_ray_engine()  # no replica pool: a replica start would fail on it
    ask = [{"role": "user", "content": "hi"}]
    with pytest.raises(KeyError, match=r"Adapter 'C9' was not given to the engine; known: \['C1'\]"):
        next(iter(RayJob(engine, [ChatRequest(id="a", messages=ask, adapter="C9")], None)))


def test_the_pool_warns_when_the_cluster_is_short_and_places_each_replica(monkeypatch, capsys):
    ray = pytest.importorskip("ray")

    from pipeline.engine.ray_job import check_room, replica_options
    from pipeline.engine.ray_replica import on_own_cores
    from pipeline.engine.vllm_backend import VLLMEngine

    engine = bare_ray_engine(replicas=3)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    assert check_room(engine) == (False, 1)
    assert "engine.replicas=3 x 1 worker(s) need 3 CPUs; the cluster has 2 now" in capsys.readouterr().err

    assert replica_options(False, 1, 2) == ({"num_cpus": 2, "scheduling_strategy": "SPREAD"}, None)
    assert replica_options(True, 1, 2) == ({"num_gpus": 1, "num_cpus": 1, "scheduling_strategy": "SPREAD"}, None)
    spanning = replica_options(True, 4, 1)  # tensor x pipeline parallel: a placement group per replica
    assert spanning == ({"num_gpus": 0, "num_cpus": 0}, [{"GPU": 1, "CPU": 1}] * 4)

    make = engine.replica_factory(gpus=True, workers=4)
    assert make.func is VLLMEngine and make.args == ("/models/base", engine.settings)
    assert make.keywords["extra_options"] == {"pipeline_parallel_size": 1, "distributed_executor_backend": "ray"}
    assert make.keywords["adapters"] == {"C1": "/adapters/c1"}
    on_cpu = engine.replica_factory(gpus=False, workers=2)  # bound to cores no other replica here holds
    assert on_cpu.func is on_own_cores and on_cpu.args[1] == 2  # ray.cpus_per_worker (1) x 2 workers
    assert on_cpu.args[0].keywords["extra_options"]["distributed_executor_backend"] == "mp"
    engine.settings.cpu_threads_bind = "0-3"  # the user's own binding is kept as it is
    assert engine.replica_factory(gpus=False, workers=1).func is VLLMEngine


def test_cpu_replicas_on_one_machine_bind_disjoint_cores(tmp_path):
    import os
    import subprocess
    import sys

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two cores")
    script = (
        "import os, sys, time; from pipeline.engine.ray_replica import on_own_cores; "
        "engine = on_own_cores(lambda: 'engine', 1, sys.argv[1]); "
        "print(sorted(os.sched_getaffinity(0)), engine, flush=True); time.sleep(float(sys.argv[2]))"
    )
    env = {k: v for k, v in os.environ.items() if k != "VLLM_CPU_OMP_THREADS_BIND"}

    def replica(hold: float):
        return subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path), str(hold)], stdout=subprocess.PIPE, text=True, env=env
        )

    first = replica(60)
    try:
        took = first.stdout.readline().split()
        second = replica(0).communicate(timeout=60)[0].split()
        assert took[-1] == second[-1] == "engine"  # each built its engine
        assert len(took) == len(second) == 2 and took[0] != second[0]  # one core each, not the same one
    finally:
        first.kill()
        first.wait()
    third = replica(0).communicate(timeout=60)[0].split()
    assert third[0] == took[0]  # the first replica's process ended: its cores are free again
