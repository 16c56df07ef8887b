"""`evol run` with one wrong value in one config section (or one missing model) stops before the
first stage: exit status 2, one line naming the key, no run directory, no stage process, no engine."""

from pathlib import Path

import pytest
from click.testing import CliRunner

import pipeline.run
from pipeline.cli import main
from pipeline.engine import vllm_backend

ROOT = Path(__file__).resolve().parent.parent

# (what is wrong, the override, the key the message must name)
WRONG = [
    ("run", "run.rounds=[1,2]", "run.rounds"),
    ("models", "models.judge=", "models.judge"),
    ("engine", "engine.top_p=1.5", "engine.top_p"),
    ("evolve", "evolve.dedup_threshold=0", "evolve.dedup_threshold"),
    ("train", "train.precision=bf61", "train.precision"),
    ("eval", "eval.high_difficulty=11", "eval.high_difficulty"),
    ("analysis", "analysis.clusters=1", "analysis.clusters"),
    ("across sections", "train.lora_r=128", "train.lora_r"),  # engine.max_lora_rank is 64
    ("evolve model", "evolve.equality_model=no-such-model", "evolve.equality_model"),
    ("analysis model", "analysis.judge_model=no-such-judge", "analysis.judge_model"),
    ("responder model", "models.responder=no-such-responder", "models.responder"),
    ("seed file", "evolve.seeds=/nowhere/seeds.jsonl", "evolve.seeds"),
    ("prompt set", "eval.verify_sets=[alpaca]", "eval.verify_sets"),
    ("ifeval prompts", "eval.ifeval_prompts=/nowhere/ifeval.jsonl", "eval.ifeval_prompts"),
    ("harness task", "eval.harness_tasks=[no_such_task_here]", "eval.harness_tasks"),
]


@pytest.fixture
def nothing_may_start(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a stage or an engine was started")

    monkeypatch.setattr(pipeline.run, "_start", refuse)
    monkeypatch.setattr(vllm_backend.VLLMEngine, "__init__", refuse)


@pytest.mark.parametrize("what, override, key", WRONG, ids=[w for w, _, _ in WRONG])
def test_a_wrong_value_anywhere_stops_evol_run_before_the_first_stage(
    what, override, key, tmp_path, nothing_may_start
):
    runs = tmp_path / "runs"
    result = CliRunner().invoke(
        main,
        [
            "run",
            "--config",
            str(ROOT / "configs" / "tiny.yaml"),
            "--set",
            f"run.runs_dir={runs}",
            "--set",
            f"models.dir={ROOT / 'models'}",
            "--set",
            override,
        ],
    )
    assert result.exit_code == 2, result.output
    assert key in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not runs.exists()  # not even the run manifest: nothing was started


def test_a_valid_config_gets_past_the_checks_to_the_first_stage(tmp_path, monkeypatch):
    """The same command without the wrong value reaches the stages (so the tests above can fail)."""
    launched = []

    def record(step, cores, warm):
        launched.append(step.stage)
        raise pipeline.run.InputError("stopped by the test")

    monkeypatch.setattr(pipeline.run, "_start", record)
    runs = tmp_path / "runs"
    args = ["run", "--config", str(ROOT / "configs" / "tiny.yaml"), "--set", f"run.runs_dir={runs}"]
    # run.warm_start=false: no warm server importing vLLM for a stage that never starts
    args += ["--set", "run.warm_start=false"]
    result = CliRunner().invoke(main, [*args, "--set", f"models.dir={ROOT / 'models'}"])
    assert launched == ["evolve"] and "stopped by the test" in result.output
    assert (runs / "tiny" / "manifest.json").is_file()


@pytest.mark.parametrize(
    "command, override, key",
    [
        (["answer", "--model", "smollm2-135m", "--out", "OUT"], "eval.answer_top_p=1.2", "eval.answer_top_p"),
        (["judge", "--answers", "A", "--baseline", "B", "--out", "OUT"], "engine.dtype=bf16", "engine.dtype"),
        (["train", "--data", "D.jsonl", "--out", "OUT"], "train.precision=bf61", "train.precision"),
        (["evolve", "--out", "OUT"], "evolve.dedup_threshold=2", "evolve.dedup_threshold"),
        (["analyze", "OUT"], "analysis.clusters=1", "analysis.clusters"),
    ],
    ids=lambda v: v[0] if isinstance(v, list) else None,
)
def test_a_stage_run_alone_checks_the_sections_it_reads(command, override, key, tmp_path, nothing_may_start):
    args = [str(tmp_path / a) if a in ("OUT", "A", "B", "D.jsonl") else a for a in command]
    result = CliRunner().invoke(main, [*args, "--set", f"models.dir={ROOT / 'models'}", "--set", override])
    assert result.exit_code == 2, result.output
    assert key in result.output and "Traceback" not in result.output
    assert not (tmp_path / "OUT").exists()


@pytest.mark.parametrize(
    "pairs, message",
    [
        (["--data", "D.jsonl", "--out", "OUT", "--data", "E.jsonl"], "2 --data options need as many --out options"),
        (
            ["--data", "D.jsonl", "--out", "OUT", "--data", "D.jsonl", "--out", "OUT"],
            "Each --out must be a different directory",
        ),
    ],
)
def test_train_pairs_each_data_file_with_one_output(pairs, message, tmp_path, nothing_may_start):
    args = [str(tmp_path / a) if a in ("OUT", "D.jsonl", "E.jsonl") else a for a in pairs]
    result = CliRunner().invoke(main, ["train", *args])
    assert result.exit_code == 2 and message in result.output.replace("\n", " "), result.output
    assert not (tmp_path / "OUT").exists()


def test_train_names_a_missing_later_data_file_before_the_first_fine_tune(tmp_path, monkeypatch):
    import finetune.train

    monkeypatch.setattr(finetune.train, "run_train", lambda *a, **k: pytest.fail("a fine-tune started"))
    first = tmp_path / "C0.jsonl"
    first.write_text('{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}\n')
    args = ["train", "--data", str(first), "--out", str(tmp_path / "C0")]
    args += ["--data", str(tmp_path / "C1.jsonl"), "--out", str(tmp_path / "C1")]
    result = CliRunner().invoke(main, [*args, "--set", f"models.dir={ROOT / 'models'}"])
    assert result.exit_code == 2, result.output
    assert "C1.jsonl not found" in result.output and "Traceback" not in result.output
