"""The run manifest: every stage of a run (evolve, sft/C<k>, answers/<label>, judge/<A>__vs__<B>,
analysis) listed once in runs/<name>/manifest.json with its key, times, rows and outputs, driven
here with fake engines; no second list in sft/, answers/ or judge/."""

import hashlib
import json

import numpy as np
import pytest

from eval.analysis.analyze import analyze_run
from eval.answer import answer_testset, parse_adapters
from eval.judge import judge_pairs
from evolve_local.evolve import run_evolve
from pipeline.config import semantic_dict, stable_hash, to_dict, to_yaml
from pipeline.core.jsonio import read_json
from pipeline.core.manifest import begin_stage, finish_stage, write_run_manifest
from pipeline.core.paths import SAMPLE_TESTSET
from pipeline.engine.fake import FakeEngine
from tests.conftest import Factory, make_config


@pytest.fixture(autouse=True)
def private_hash_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EVOL_MODELS_DIR", str(tmp_path / "store"))


def bag_of_words(texts):
    out = np.zeros((len(texts), 32))
    for i, text in enumerate(texts):
        for word in text.lower().split():
            out[i, int(hashlib.md5(word.encode()).hexdigest(), 16) % 32] += 1
    return out


def fake_train(run, k):
    """The stage bookkeeping of finetune/train.py for sft/C<k> (real training: test_finetune_train.py)."""
    out = run / "sft" / f"C{k}"
    stage = begin_stage(out.parent, out.name, {"data": (run / "data" / f"C{k}.jsonl").read_text()})
    adapter = out / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    (adapter / "adapter_model.safetensors").write_bytes(f"weights {k}".encode())
    finish_stage(stage, rows={"train_rows": 3, "bad_rows": 0})


def test_the_run_manifest_lists_every_stage_and_no_folder_keeps_a_second_list(tmp_path):
    config = make_config(tmp_path, "run.rounds=[0,1]", "eval.limit=3", "analysis.clusters=2", rounds=1)
    run = tmp_path / "runs" / "x"
    write_run_manifest(run, to_dict(config), stable_hash(semantic_dict(config)), to_yaml(config))

    run_evolve(config, run, Factory().models, quiet=True)
    for k in (0, 1):
        fake_train(run, k)
    model = tmp_path / "base-model"
    model.mkdir()
    adapters = parse_adapters([f"C{k}={run / 'sft' / f'C{k}' / 'adapter'}" for k in (0, 1)], 64)
    answers = run / "answers"
    answer_testset(config, answers, model, SAMPLE_TESTSET, adapters, "reference", engine=FakeEngine())
    pairs = [(answers / "C1", answers / "C0"), (answers / "C0", answers / "reference")]
    judge_pairs(config, pairs, run / "judge", "fake-judge", engine=FakeEngine(lambda r: "7 5\nThe first is clearer."))
    analyze_run(config, run, engine=FakeEngine(lambda r: "5\nMiddling."), embedder=bag_of_words)

    stages = read_json(run / "manifest.json")["stages"]
    assert set(stages) == {
        "evolve",
        "sft/C0",
        "sft/C1",
        "answers/reference",
        "answers/C0",
        "answers/C1",
        "judge/C1__vs__C0",
        "judge/C0__vs__reference",
        "analysis",
    }
    for name, entry in stages.items():
        own = read_json(run / name / "manifest.json")  # each stage's own manifest stays, written last
        assert entry["key"] == own["key"] and entry["status"] == "done"
        assert entry["started"] == own["started"] and entry["finished"] == own["finished"]
        assert entry["seconds"] == own["seconds"] and entry["rows"] == own["rows"]
        assert entry["outputs"] and all((run / path).exists() for path in entry["outputs"])
    assert "data/C1.jsonl" in stages["evolve"]["outputs"] and "evolve/round_1.jsonl" in stages["evolve"]["outputs"]
    assert "sft/C1/adapter/" in stages["sft/C1"]["outputs"]
    assert "answers/C0/answers.jsonl" in stages["answers/C0"]["outputs"]
    assert "judge/C1__vs__C0/scores.json" in stages["judge/C1__vs__C0"]["outputs"]
    for folder in ("sft", "answers", "judge"):
        assert not (run / folder / "manifest.json").exists()

    # A fresh run manifest (say, the run folder copied without it) lists finished stages again when
    # they are skipped, without redoing them.
    (run / "manifest.json").unlink()
    write_run_manifest(run, to_dict(config), stable_hash(semantic_dict(config)), to_yaml(config))
    again = FakeEngine()
    answer_testset(config, answers, model, SAMPLE_TESTSET, adapters, "reference", engine=again)
    assert again.calls == 0
    relisted = read_json(run / "manifest.json")["stages"]
    assert set(relisted) == {"answers/reference", "answers/C0", "answers/C1"}
    assert relisted["answers/C0"] == stages["answers/C0"]


def test_a_stage_outside_any_run_is_listed_beside_it(tmp_path):
    """`evol train --out elsewhere/C1` with no run around it: elsewhere/manifest.json lists "C1"."""
    stage = begin_stage(tmp_path / "elsewhere", "C1", {"data": "abc"})
    (stage.dir / "adapter").mkdir()
    finish_stage(stage, rows={"train_rows": 1})
    listed = read_json(tmp_path / "elsewhere" / "manifest.json")["stages"]
    assert set(listed) == {"C1"} and listed["C1"]["outputs"] == ["C1/adapter/"]
    assert not (tmp_path / "manifest.json").exists()


def test_the_run_config_is_replaced_whole_so_a_stage_reading_it_never_sees_half_of_it(tmp_path):
    """`evol run` lanes: the evolve stage rewrites config.yaml while the reference answers read it.
    Replaced (a new file renamed over it), a reader that opened the old one reads it whole."""
    first, second = make_config(tmp_path), make_config(tmp_path, "eval.limit=3")
    write_run_manifest(tmp_path / "run", to_dict(first), "h1", to_yaml(first))
    with open(tmp_path / "run" / "config.yaml", encoding="utf-8") as reader:  # opened before the rewrite
        write_run_manifest(tmp_path / "run", to_dict(second), "h2", to_yaml(second))
        assert reader.read() == to_yaml(first)  # rewritten in place, it would read the second (or half of it)
    assert (tmp_path / "run" / "config.yaml").read_text(encoding="utf-8") == to_yaml(second)
    assert read_json(tmp_path / "run" / "manifest.json")["config_hash"] == "h2"
