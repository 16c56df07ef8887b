"""`evol run` end to end on the real engine with tiny sizes, interrupted between stages and resumed.

2 seeds, rounds [0, 1], 2 training steps per model, 3 test items: the point is the plumbing
(every stage, the skip/resume logic, the report and its ablation rows), not the numbers.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.core.jsonio import read_json
from tests.conftest import write_lines

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent


def overrides(tmp_path, models_dir):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text('{"instruction": "Name three fruits."}\n{"instruction": "Explain what a noun is."}\n')
    test = tmp_path / "test.jsonl"
    write_lines(
        test,
        [
            {"idx": 1, "Skill": "Math", "Difficulty": 2, "Instruction": "What is 7 times 6?"},
            {"idx": 2, "Skill": "Writing", "Difficulty": 5, "Instruction": "Write one sentence about autumn."},
            {
                "idx": 3,
                "Skill": "Reasoning",
                "Difficulty": 9,
                "Instruction": "If all cats are animals, is a cat an animal?",
            },
        ],
    )
    sets = {
        "run.name": "e2e",
        "run.runs_dir": str(tmp_path / "runs"),
        "run.rounds": "[0,1]",
        "models.dir": str(models_dir),
        "engine.max_tokens": 24,
        "engine.max_model_len": 1024,
        "engine.kv_cache_gb": 0.5,
        "engine.chunk_size": 16,
        "evolve.seeds": str(seeds),
        "evolve.max_seeds": 0,
        "evolve.evolution_max_tokens": 40,
        "evolve.answer_max_tokens": 24,
        "train.max_steps": 2,
        "train.max_length": 384,
        "train.effective_batch_size": 2,
        "train.per_device_train_batch_size": 2,
        "train.save_steps": 1,
        "eval.testset": str(test),
        "eval.limit": 0,
        "eval.answer_max_tokens": 24,
        "eval.judge_max_tokens": 40,
        "eval.verify_limit": 2,
        "eval.verify_max_tokens": 24,
    }
    return [arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")]


def command(tmp_path, models_dir):
    return [
        sys.executable,
        "-m",
        "pipeline",
        "run",
        "--config",
        str(ROOT / "configs" / "tiny.yaml"),
        *overrides(tmp_path, models_dir),
    ]


def test_run_is_interrupted_between_stages_then_resumes_and_reports(tmp_path, tiny_model):
    run = tmp_path / "runs" / "e2e"
    cmd = command(tmp_path, tiny_model.parent)

    # 1. kill the whole run (orchestrator and its stage processes) once the evolution is done and the
    # first model trained (with lanes C0 may be trained while the later rounds evolve)
    process = subprocess.Popen(
        cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 900
    while not ((run / "sft" / "C0" / "manifest.json").exists() and (run / "evolve" / "manifest.json").exists()):
        assert process.poll() is None, "the run ended before its first training stage finished"
        assert time.time() < deadline
        time.sleep(1)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    evolve_done = (run / "evolve" / "manifest.json").stat().st_mtime_ns
    c0_done = (run / "sft" / "C0" / "manifest.json").stat().st_mtime_ns
    assert not (run / "report.md").exists()

    # 2. the same command again: finished stages are skipped, the rest runs, the report appears
    finished = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert (run / "evolve" / "manifest.json").stat().st_mtime_ns == evolve_done
    assert (run / "sft" / "C0" / "manifest.json").stat().st_mtime_ns == c0_done
    assert "[evolve] up to date" in finished.stderr and "[C0] up to date" in finished.stderr

    for name in ("report.md", "report.html", "report.json", "plots/ablation_rounds.png"):
        assert (run / name).is_file(), name
    report = read_json(run / "report.json")
    rows = {row["rounds"]: row for row in report["ablation"]}
    assert sorted(rows) == [0, 1]
    assert rows[0]["training_rows"] == 2 and rows[0]["evolved_share"] == 0
    assert rows[1]["training_rows"] >= 2
    assert rows[1]["vs_C0"]["n"] == 3 and rows[0]["vs_C0"] is None  # constrained judge: every pair readable
    assert all(rows[k]["vs_reference"] is not None for k in rows)
    assert (run / "judge" / "C1__vs__C0" / "scores.json").is_file()
    for prompt_set in ("ifeval", "ifbench"):  # every model's answers to the prompt sets, checked by code
        assert sorted(report["verified"][prompt_set]) == ["C0", "C1", "reference"]
        assert all(r["scored"] + r["unscorable"] == 2 for r in report["verified"][prompt_set].values())
    assert {d["set"] for d in report["verified_differences"]} == {"ifeval", "ifbench"}
    assert "## Verified instruction following" in (run / "report.md").read_text()
    manifest = read_json(run / "manifest.json")
    assert manifest["stages"]["evolve"]["status"] == "done" and manifest["config"]["run"]["rounds"] == [0, 1]
    stages = {
        "evolve",
        "sft/C0",
        "sft/C1",
        "answers/C0",
        "answers/C1",
        "judge/C1__vs__C0",
        "analysis",
        "verify/ifeval/C1",
    }
    assert stages <= set(manifest["stages"]) and all(e["status"] == "done" for e in manifest["stages"].values())
    assert not any((run / folder / "manifest.json").exists() for folder in ("sft", "answers", "judge"))

    # 3. a finished run does no work: every stage is skipped, no output is rewritten
    outputs = [
        run / "evolve" / "manifest.json",
        run / "sft" / "C1" / "manifest.json",
        run / "answers" / "C1" / "answers.jsonl",
        run / "judge" / "C1__vs__C0" / "scores.json",
    ]
    before = [path.stat().st_mtime_ns for path in outputs]
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [path.stat().st_mtime_ns for path in outputs] == before
    assert "Loading safetensors" not in again.stderr  # no engine was started
