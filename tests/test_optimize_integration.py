"""One optimisation step of Auto Evol-Instruct with SmolLM2 on vLLM as evolver and optimizer: every
candidate saved as a valid method file, the selection by failure rate, one engine start for the whole
optimisation, a rerun that generates nothing, and an evolution with the chosen method keyed by its hash.
Tiny budgets keep it ~1-2 minutes (run it under the CPU lock)."""

import json

import pytest

from evolve_local.evolve import run_evolve
from evolve_local.inputs import load_inputs
from evolve_local.method import load_method
from evolve_local.optimize import run_optimize
from pipeline.cli.evolve import vllm_models
from pipeline.config import load_config
from pipeline.core.jsonio import read_json
from pipeline.core.paths import SHIPPED_SEEDS

pytestmark = pytest.mark.integration


def test_one_step_with_smollm2(tiny_model, tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    picked = [json.loads(line) for line in SHIPPED_SEEDS.read_text().splitlines()[:5]]
    seeds.write_text("".join(json.dumps(row) + "\n" for row in picked))
    testset = tmp_path / "testset.jsonl"
    testset.write_text(json.dumps({"idx": 1, "Instruction": "What is the tallest mountain in Africa?"}) + "\n")
    config = load_config(
        None,
        [
            f"models.evolver={tiny_model}",
            f"evolve.seeds={seeds}",
            f"eval.testset={testset}",
            "evolve.evolution_max_tokens=48",
            "evolve.answer_max_tokens=32",
            "evolve.verdict_max_tokens=4",
            "optimize.steps=1",
            "optimize.candidates=2",
            "optimize.minibatch=2",
            "optimize.trajectory_rounds=1",
            "optimize.dev_size=3",
            "optimize.analysis_max_tokens=64",
            "optimize.rewrite_max_tokens=160",
            "engine.dtype=bfloat16",
            "engine.max_model_len=2048",
            "engine.kv_cache_gb=0.5",
            "engine.enforce_eager=true",
            "engine.chunk_size=8",
        ],
    )
    models = vllm_models(config, optimizer=True)
    starts = []
    make = models.make
    models.make = lambda role: starts.append(role) or make(role)
    summary = run_optimize(config, tmp_path / "opt", models, load_inputs(config), quiet=True)
    assert len(starts) == 1  # one model in every role: one engine for every evolution and the optimizer

    (step,) = summary["steps"]
    assert len(step["candidates"]) == 2 and step["analysis_text"]
    rates = [step["incumbent_failure_rate"], *(c["failure_rate"] for c in step["candidates"])]
    assert step["failure_rate"] == min(rates) and summary["history"][-1]["failure_rate"] == min(rates)
    for candidate in step["candidates"]:
        method = load_method(tmp_path / "opt" / "optimize" / candidate["file"])
        assert method.text.count("{instruction}") == 1 and method.lineage["parent"] == step["parent"]
        assert candidate["attempted"] == 3
    best = load_method(tmp_path / "opt" / "best_method.json")
    assert best.hash == summary["chosen"]

    starts.clear()
    assert run_optimize(config, tmp_path / "opt", models, load_inputs(config), quiet=True) == summary
    assert starts == []  # finished: nothing generated, no engine started

    config.evolve.method = str(tmp_path / "opt" / "best_method.json")
    config.evolve.rounds = 1
    run_evolve(config, tmp_path / "run", models, load_inputs(config), quiet=True)
    assert read_json(tmp_path / "run" / "evolve" / "manifest.json")["method"]["hash"] == best.hash
