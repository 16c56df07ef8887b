"""The server backend against vLLM's real OpenAI server on localhost, SmolLM2, compared with the
in-process engine on the same config: a 1-round evolution of a few seeds, the answers of the base model
and of a LoRA adapter (loaded into the server at runtime), both judge orders; then the server killed
mid-round and started again, and the rerun sends only what is missing.

One server for the module (started once, ~40-70 s here, and once more after the kill), one in-process
engine for the comparison; few seeds and small token budgets keep the module at a few minutes."""

import json
from pathlib import Path

import pytest

from eval.answer import answer_testset, parse_adapters
from eval.judge import judge_pairs
from evolve_local.evolve import run_evolve
from evolve_local.steps import Engines, ModelSet
from pipeline.cli.evolve import vllm_models
from pipeline.config import load_config
from pipeline.core.jsonio import read_json, read_jsonl
from pipeline.core.paths import SHIPPED_SEEDS
from pipeline.engine.server_backend import ServerEngine, ServerError
from pipeline.engine.vllm_server import free_port, start_vllm_server, stop, wait_until_ready
from tests.conftest import TINY_ROUND

pytestmark = pytest.mark.integration

SEEDS = 4
HARNESS_TASKS = Path(__file__).resolve().parent / "fixtures" / "harness"
OVERRIDES = [
    *TINY_ROUND,
    "eval.limit=3",
    "eval.answer_max_tokens=24",
    "eval.judge_max_tokens=24",
]


class Server:
    def __init__(self, model, config, log):
        self.port = free_port()
        self.model, self.config, self.log = model, config, log
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.proc = None

    def start(self):
        self.proc = start_vllm_server(
            self.config.engine, self.model, self.port, self.log, seed=self.config.run.seed, runtime_lora=True
        )
        try:
            wait_until_ready(self.url, self.proc)
        except RuntimeError as err:
            raise RuntimeError(f"{err}; its log: {self.log.read_text()[-3000:]}") from None

    def kill(self):
        stop(self.proc, kill=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("server-files")
    # with their answers: round 0 generates nothing, so the comparison is the evolution round itself
    picked = [
        {**json.loads(line), "output": f"A short answer, number {i}."}
        for i, line in enumerate(SHIPPED_SEEDS.read_text().splitlines()[:SEEDS])
    ]
    (tmp / "seeds.jsonl").write_text("".join(json.dumps(row) + "\n" for row in picked))
    (tmp / "testset.jsonl").write_text(
        "".join(
            json.dumps({"idx": i, "Skill": skill, "Difficulty": i + 2, "Instruction": text}) + "\n"
            for i, (skill, text) in enumerate(
                [("Geography", "Name a long river."), ("Math", "What is 7 times 6?"), ("Writing", "Write a haiku.")]
            )
        )
    )
    return tmp


def config_for(tiny_model, files, *overrides):
    common = [f"models.{role}={tiny_model}" for role in ("evolver", "base", "judge")]
    common += [f"evolve.seeds={files / 'seeds.jsonl'}", f"eval.testset={files / 'testset.jsonl'}"]
    return load_config(None, [*common, *OVERRIDES, *overrides])


@pytest.fixture(scope="module")
def server(tiny_model, files, tmp_path_factory):
    server = Server(tiny_model, config_for(tiny_model, files), tmp_path_factory.mktemp("server") / "server.log")
    server.start()
    yield server
    stop(server.proc)


def test_evolve_answer_judge_through_the_server_keep_the_local_contract(
    server, tiny_model, lora_adapter, files, tmp_path
):
    from pipeline.engine.vllm_backend import VLLMEngine

    local_config = config_for(tiny_model, files)
    remote_config = config_for(tiny_model, files, "engine.backend=server", f"engine.url={server.url}")
    adapters = parse_adapters([f"lora={lora_adapter}"], local_config.engine.max_lora_rank)
    testset = files / "testset.jsonl"

    # the in-process engine, started once for the evolution, the answers and the judge
    local = VLLMEngine(tiny_model, local_config.engine, seed=local_config.run.seed, adapters={"lora": lora_adapter})
    try:
        models = vllm_models(local_config)
        shared = ModelSet(models.names, models.hashes, lambda role: local)
        run_evolve(local_config, tmp_path / "local", shared, quiet=True, engines=Engines(shared))
        answer_testset(
            local_config, tmp_path / "local" / "answers", tiny_model, testset, adapters, "base", engine=local
        )
        local_judged = judge_pairs(
            local_config,
            [(tmp_path / "local" / "answers" / "lora", tmp_path / "local" / "answers" / "base")],
            tmp_path / "local" / "judge",
            tiny_model,
            engine=local,
        )[0]
    finally:
        local.close()

    # the same stages through the server, each starting its own ServerEngine as `evol` would
    remote_models = vllm_models(remote_config)
    assert remote_models.hashes["evolver"] == f"served {tiny_model} root={tiny_model} max_model_len=1024"
    run_evolve(remote_config, tmp_path / "remote", remote_models, quiet=True)
    summary = answer_testset(remote_config, tmp_path / "remote" / "answers", tiny_model, testset, adapters, "base")
    assert {label: s["answers"] for label, s in summary.items()} == {"base": 3, "lora": 3}
    remote_judged = judge_pairs(
        remote_config,
        [(tmp_path / "remote" / "answers" / "lora", tmp_path / "remote" / "answers" / "base")],
        tmp_path / "remote" / "judge",
        tiny_model,
    )[0]

    # the contract: the same attempts (ids, parents, operations), files and counts as in-process
    for run in ("local", "remote"):
        assert (tmp_path / run / "data" / "C1.jsonl").is_file()
    rounds = {run: read_jsonl(tmp_path / run / "evolve" / "round_1.jsonl") for run in ("local", "remote")}
    shape = {run: sorted((r["id"], r["parent_id"], r["operation"]) for r in rows) for run, rows in rounds.items()}
    assert shape["remote"] == shape["local"] and len(shape["local"]) == SEEDS
    assert all(set(a) == set(b) for a, b in zip(rounds["local"], rounds["remote"]))  # the same record fields
    stats = {run: read_json(tmp_path / run / "evolve" / "stats.json") for run in ("local", "remote")}
    assert stats["remote"]["rounds"][1]["attempted"] == stats["local"]["rounds"][1]["attempted"] == SEEDS
    manifest = read_json(tmp_path / "remote" / "evolve" / "manifest.json")
    assert manifest["backend"] == "server"
    assert manifest["server"] == {role: server.url for role in ("evolver", "equality", "responder")}
    assert manifest["inputs"]["models"]["evolver"] == [tiny_model.name, remote_models.hashes["evolver"]]

    for label in ("base", "lora"):
        rows = {run: read_jsonl(tmp_path / run / "answers" / label / "answers.jsonl") for run in ("local", "remote")}
        assert [r["id"] for r in rows["remote"]] == [r["id"] for r in rows["local"]]
        assert all(r["answer"].strip() and 0 < r["completion_tokens"] <= 24 for r in rows["remote"])
    base = read_jsonl(tmp_path / "remote" / "answers" / "base" / "answers.jsonl")
    lora = read_jsonl(tmp_path / "remote" / "answers" / "lora" / "answers.jsonl")
    assert [r["answer"] for r in base] != [r["answer"] for r in lora]  # the server applied the adapter
    answers_manifest = read_json(tmp_path / "remote" / "answers" / "base" / "manifest.json")
    assert answers_manifest["server"] == {"base": server.url}

    (local_dir, local_scores), (remote_dir, remote_scores) = local_judged, remote_judged
    judgments = {d: read_jsonl(d / "judgments.jsonl") for d in (local_dir, remote_dir)}
    assert sorted(j["id"] for j in judgments[remote_dir]) == sorted(j["id"] for j in judgments[local_dir])
    assert remote_scores["judge_failures"]["orders_total"] == local_scores["judge_failures"]["orders_total"] == 6
    # the constrained score line reached the server: every order reads as two scores, as in-process
    assert all(j["orders"][o]["score_a"] is not None for j in judgments[remote_dir] for o in ("AB", "BA"))
    assert remote_scores["overall"]["n"] == local_scores["overall"]["n"] == 3


def test_the_harness_runs_lm_evals_task_through_the_server_on_the_base_model_and_an_adapter(
    server, tiny_model, lora_adapter, files, tmp_path, monkeypatch
):
    """evol harness with engine.backend=server: lm-eval's local-completions model on the served model
    and on a LoRA adapter loaded into the server, the project's own task (tests/fixtures/harness), 4
    items each; a rerun skips both labels."""
    import datasets.config

    from eval.harness import HarnessModel, run_harness

    cache = tmp_path / "datasets"  # the json loader's cache, not ~
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    config = config_for(
        tiny_model,
        files,
        "engine.backend=server",
        f"engine.url={server.url}",
        "eval.harness_tasks=[evol_arith]",
        f"eval.harness_include={HARNESS_TASKS}",
        "eval.harness_limit=4",
    )
    served = Path(str(tiny_model))  # the module's server serves the model under its path
    models = [HarnessModel("base", served), HarnessModel("lora", served, adapter=lora_adapter)]
    summary = run_harness(config, models, tmp_path / "harness")
    assert {label: s["samples"] for label, s in summary.items()} == {
        "base": {"evol_arith": 4},
        "lora": {"evol_arith": 4},
    }
    responses = {}
    for label, name in (("base", str(tiny_model)), ("lora", "lora")):
        results = read_json(tmp_path / "harness" / label / "results.json")
        assert results["config"]["model"] == "local-completions"
        assert results["config"]["model_args"]["model"] == name
        assert results["config"]["model_args"]["base_url"] == f"{server.url}/completions"
        assert results["n-samples"]["evol_arith"] == {"original": 10, "effective": 4}
        assert 0.0 <= results["results"]["evol_arith"]["exact_match,last-number"] <= 1.0
        samples = read_jsonl(tmp_path / "harness" / label / "samples_evol_arith.jsonl")
        responses[label] = [row["resps"][0][0] for row in samples]
        assert len(samples) == 4 and all(text.strip() for text in responses[label])  # the server answered
        manifest = read_json(tmp_path / "harness" / label / "manifest.json")
        assert manifest["server"] == {"base": server.url}
    assert responses["base"] != responses["lora"]  # the server applied the adapter
    again = run_harness(config, models, tmp_path / "harness")
    assert all(s["skipped"] for s in again.values())


def test_a_server_killed_mid_round_then_restarted_the_rerun_sends_only_what_is_missing(
    server, tiny_model, files, tmp_path
):
    config = config_for(
        tiny_model,
        files,
        "engine.backend=server",
        f"engine.url={server.url}",
        "engine.max_in_flight=1",
        "engine.retries=1",
    )
    models = vllm_models(config)
    sent: list[list[tuple[str, str]]] = [[]]  # (id, step) of every request each run sent and got back
    kill_after = 5  # of the 4 chains' up to 12 requests: mid-round, with max_in_flight=1 one at a time

    def counting(role):
        engine = ServerEngine(str(tiny_model), config.engine, role=role, backoff_s=0.2)
        complete = engine.complete

        def complete_and_count(request):
            result = complete(request)
            sent[-1].append((request.id, request.purpose))
            if len(sent) == 1 and len(sent[0]) == kill_after:
                server.kill()  # the server dies right after the 5th answer came back
            return result

        engine.complete = complete_and_count
        return engine

    models.make = counting
    with pytest.raises(ServerError, match=rf"The server at {server.url} (refused the connection|dropped)"):
        run_evolve(config, tmp_path / "run", models, quiet=True)
    work = tmp_path / "run" / "evolve" / "work"
    on_disk = {(r["id"], step) for step in ("evolve", "check", "answer") for r in _rows(work, step)}
    assert on_disk == set(sent[0]) and len(on_disk) == kill_after  # every finished request kept, nothing else

    server.start()
    sent.append([])
    run_evolve(config, tmp_path / "run", models, quiet=True)
    assert not set(sent[1]) & set(sent[0])  # nothing generated twice
    for step in ("evolve", "check", "answer"):
        ids = [r["id"] for r in _rows(work, step)]
        assert len(ids) == len(set(ids))
    assert len(_rows(work, "evolve")) == SEEDS
    total = sum(len(_rows(work, step)) for step in ("evolve", "check", "answer"))
    assert total == len(sent[0]) + len(sent[1])  # the rerun sent exactly what was missing
    assert read_json(tmp_path / "run" / "evolve" / "stats.json")["rounds"][1]["attempted"] == SEEDS


def _rows(work, step):
    path = work / f"round_1.{step}.jsonl"
    return read_jsonl(path) if path.exists() else []
