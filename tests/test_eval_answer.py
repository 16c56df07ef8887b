"""`evol answer` logic on a FakeEngine: mixed base/adapter batches, settings recorded, skip and resume."""

import json

import pytest

from eval.answer import answer_testset, parse_adapters
from pipeline.config import Config
from pipeline.core.jsonio import InputError, read_json, read_jsonl
from pipeline.core.paths import SAMPLE_TESTSET
from pipeline.engine.fake import FakeEngine


@pytest.fixture(autouse=True)
def private_hash_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EVOL_MODELS_DIR", str(tmp_path / "store"))


def make_adapter(path, rank=8, peft_type="LORA"):
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": peft_type, "r": rank}))
    (path / "adapter_model.safetensors").write_bytes(b"weights " + path.name.encode())
    return path


def by_model(request):
    return f"answer from {request.adapter or 'base'} to: {request.messages[-1]['content'][:20]}"


def small_config(limit=5, chunk=4):
    config = Config()
    config.eval.limit = limit
    config.engine.chunk_size = chunk
    return config


def test_base_and_adapters_share_batches_and_record_settings(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    adapters = parse_adapters([f"C1={make_adapter(tmp_path / 'a1')}", f"C2={make_adapter(tmp_path / 'a2')}"], 64)
    engine = FakeEngine(by_model)
    out = tmp_path / "answers"
    summary = answer_testset(small_config(), out, model, SAMPLE_TESTSET, adapters, "base", engine=engine)
    assert set(summary) == {"base", "C1", "C2"} and all(s["answers"] == 5 for s in summary.values())
    assert [len(b) for b in engine.batches] == [4, 4, 4, 3]
    assert {r.adapter for r in engine.batches[1]} > {None}  # one engine call mixes models
    assert all(r.temperature == 0.0 and r.top_p == 1.0 for r in engine.requests_seen)

    rows = read_jsonl(out / "C2" / "answers.jsonl")
    assert [r["id"] for r in rows] == ["1", "4", "7", "10", "13"]  # limit 5: evenly spaced
    assert rows[0]["answer"].startswith("answer from C2") and rows[0]["category"] == "Math"
    assert rows[0]["adapter"] == str(tmp_path / "a2")
    manifest = read_json(out / "base" / "manifest.json")
    assert manifest["generation"]["temperature"] == 0.0 and manifest["generation"]["max_tokens"] == 512
    assert manifest["testset"]["items"] == 5 and manifest["label"] == "base"

    again = FakeEngine(by_model)
    summary = answer_testset(small_config(), out, model, SAMPLE_TESTSET, adapters, "base", engine=again)
    assert again.calls == 0 and all(s["skipped"] for s in summary.values())


def test_interrupted_run_resumes_and_adapters_only(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    adapters = parse_adapters([f"C1={make_adapter(tmp_path / 'a1')}"], 64)

    def crash_on_item_10(request):
        if "umbrella" in request.prompt_text:
            raise RuntimeError("killed")
        return by_model(request)

    out = tmp_path / "answers"
    with pytest.raises(RuntimeError):
        answer_testset(
            small_config(chunk=2),
            out,
            model,
            SAMPLE_TESTSET,
            adapters,
            adapters_only=True,
            engine=FakeEngine(crash_on_item_10),
        )
    assert len(read_jsonl(out / "C1" / "answers.jsonl")) == 2 and not (out / "C1" / "manifest.json").exists()
    engine = FakeEngine(by_model)
    answer_testset(small_config(chunk=2), out, model, SAMPLE_TESTSET, adapters, adapters_only=True, engine=engine)
    assert len(engine.requests_seen) == 3
    assert [r["id"] for r in read_jsonl(out / "C1" / "answers.jsonl")] == ["1", "4", "7", "10", "13"]
    assert not (out / "model").exists()  # --adapters-only: no base answers


@pytest.mark.parametrize(
    "spec, message",
    [
        ("C1", "LABEL=PATH"),
        ("C1=", "LABEL=PATH"),
        ("C 1={a1}", "must be letters"),
        ("a__b={a1}", "must be letters"),
        ("C1={missing}", "not a PEFT adapter directory"),
        ("C1={big}", "rank 128 exceeds engine.max_lora_rank=64"),
        ("C1={prefix}", "serves LoRA adapters only"),
    ],
)
def test_bad_adapter_options(tmp_path, spec, message):
    paths = {
        "a1": make_adapter(tmp_path / "a1"),
        "big": make_adapter(tmp_path / "big", rank=128),
        "prefix": make_adapter(tmp_path / "prefix", peft_type="PREFIX_TUNING"),
        "missing": tmp_path / "nope",
    }
    with pytest.raises(InputError, match=message):
        parse_adapters([spec.format(**paths)], 64)


def test_impossible_option_combinations(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    a1 = make_adapter(tmp_path / "a1")
    with pytest.raises(InputError, match="given twice"):
        parse_adapters([f"C1={a1}", f"C1={a1}"], 64)
    with pytest.raises(InputError, match="--adapters-only needs"):
        answer_testset(
            small_config(), tmp_path / "o", model, SAMPLE_TESTSET, {}, adapters_only=True, engine=FakeEngine()
        )
    with pytest.raises(InputError, match="also an --adapter label"):
        answer_testset(small_config(), tmp_path / "o", model, SAMPLE_TESTSET, {"C1": a1}, "C1", engine=FakeEngine())


def test_several_models_answer_in_one_process_one_engine_at_a_time(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from pipeline.cli import main

    models = []
    for name in ("C0", "C1"):
        models.append(tmp_path / "sft" / name / "merged")
        models[-1].mkdir(parents=True)
        (models[-1] / "config.json").write_text(json.dumps({"name": name}))
    events = []

    class Recording(FakeEngine):
        def __init__(self, model_path):
            super().__init__(lambda r: f"{model_path.parent.name} says: {r.messages[-1]['content'][:10]}")
            events.append(("start", model_path.parent.name))
            self.name = model_path.parent.name

        def close(self):
            events.append(("close", self.name))

    monkeypatch.setattr("pipeline.engine.make_engine", lambda config, model_path, *a, **k: Recording(model_path))
    out = tmp_path / "answers"
    args = ["answer", "--testset", str(SAMPLE_TESTSET), "--out", str(out), "--set", "eval.limit=3"]
    pairs = ["--model", str(models[0]), "--label", "C0", "--model", str(models[1]), "--label", "C1"]
    result = CliRunner().invoke(main, [*args, *pairs])
    assert result.exit_code == 0, result.output
    assert events == [("start", "C0"), ("close", "C0"), ("start", "C1"), ("close", "C1")]  # never two at once
    for name in ("C0", "C1"):
        rows = read_jsonl(out / name / "answers.jsonl")
        assert len(rows) == 3 and all(r["answer"].startswith(f"{name} says") for r in rows)
    again = CliRunner().invoke(main, [*args, *pairs])
    assert again.exit_code == 0 and "C1: already answered" in again.output and len(events) == 4

    for wrong, message in [
        (pairs[:-2], "2 --model options need as many --label options"),
        ([*pairs, "--adapter", f"C9={tmp_path}"], "--adapter and --adapters-only go with one --model"),
        (
            ["--model", str(models[0]), "--label", "C0", "--label", "C1"],
            "Several --label options need as many --model",
        ),
        (
            ["--model", str(models[0]), "--label", "C0", "--model", str(models[1]), "--label", "C0"],
            "Each --label must be different",
        ),
        (
            ["--model", str(models[0]), "--label", "C0", "--model", str(tmp_path / "none"), "--label", "C5"],
            "neither a local model directory",
        ),
    ]:
        result = CliRunner().invoke(main, [*args, *wrong])
        assert result.exit_code == 2 and message in result.output, (wrong, result.output)
    assert len(events) == 4  # no engine started for any of them
