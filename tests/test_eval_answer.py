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
