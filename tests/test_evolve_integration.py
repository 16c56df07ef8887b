"""Two rounds of Evol-Instruct over four seeds with SmolLM2 on vLLM: schema, stats, and a rerun
that generates nothing. One engine start for the module; tiny token budgets keep it ~1-2 minutes."""

import json

import pytest

from evolve_local.evolve import run_evolve
from pipeline.cli.evolve import vllm_models
from pipeline.config import load_config
from pipeline.core.jsonio import read_json, read_jsonl
from pipeline.core.paths import SHIPPED_SEEDS

pytestmark = pytest.mark.integration

RULES = {
    "too_long",
    "no_information_gain",
    "copied_prompt_words",
    "refusal_short",
    "stopwords_only",
    "near_duplicate",
    "contaminated",
}


@pytest.fixture(scope="module")
def evolved(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evolve")
    seeds = tmp / "seeds.jsonl"
    picked = [json.loads(line) for line in SHIPPED_SEEDS.read_text().splitlines()[:4]]
    seeds.write_text("".join(json.dumps(row) + "\n" for row in picked))
    testset = tmp / "testset.jsonl"
    testset.write_text(json.dumps({"idx": 1, "Instruction": "What is the tallest mountain in Africa?"}) + "\n")
    config = load_config(
        None,
        [
            f"models.evolver={tiny_model}",
            f"evolve.seeds={seeds}",
            f"eval.testset={testset}",
            "evolve.rounds=2",
            "evolve.evolution_max_tokens=48",
            "evolve.answer_max_tokens=32",
            "evolve.verdict_max_tokens=4",
            "engine.dtype=bfloat16",
            "engine.max_model_len=1024",
            "engine.kv_cache_gb=0.5",
            "engine.enforce_eager=true",
            "engine.chunk_size=8",
        ],
    )
    models = vllm_models(config)
    starts = []
    make = models.make
    models.make = lambda role: starts.append(role) or make(role)
    stats = run_evolve(config, tmp / "run", models, quiet=True)
    return config, models, starts, stats, tmp / "run"


def test_two_rounds_write_the_contracted_files(evolved):
    config, models, starts, stats, run_dir = evolved
    assert starts == ["responder"]  # one model plays every role: a single engine start
    for k in range(3):
        records = read_jsonl(run_dir / "evolve" / f"round_{k}.jsonl")
        assert len(records) == 4
        for r in records:
            assert r["round"] == k and r["status"] in ("kept", "eliminated")
            assert (r["elimination_rule"] is None) == (r["status"] == "kept")
            assert r["elimination_rule"] in RULES | {None}
            if k:
                assert r["evolver_model"] == models.names["evolver"] and r["tokens"]["evolve"]["completion"] > 0
                assert r["parent_id"] and r["root_id"] and r["operation"] != "seed"
        training = read_jsonl(run_dir / "data" / f"C{k}.jsonl")
        assert all([m["role"] for m in row["messages"]] == ["user", "assistant"] for row in training)
        assert len(training) == stats["rounds"][k]["training_set_size"]
    assert all(r["messages"][1]["content"].strip() for r in read_jsonl(run_dir / "data" / "C0.jsonl"))


def test_stats_count_real_generation(evolved):
    _, _, _, stats, run_dir = evolved
    assert read_json(run_dir / "evolve" / "stats.json") == stats
    for one in stats["rounds"][1:]:
        assert one["attempted"] == 4 and one["kept"] + sum(one["eliminated"].values()) == 4
        assert one["generation"]["evolve"]["requests"] == 4
        assert one["generation"]["evolve"]["completion_tokens"] > 0 and one["generation_seconds"] > 0
        assert sum(one["operations"].values()) == 4


def test_rerun_of_a_finished_evolve_generates_nothing(evolved):
    config, models, starts, stats, run_dir = evolved
    before = len(starts)
    again = run_evolve(config, run_dir, models, quiet=True)
    assert len(starts) == before and again == stats
