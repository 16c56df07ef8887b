import json

import pytest

from pipeline.core.jsonio import InputError, append_jsonl, read_jsonl, read_jsonl_tolerant, write_jsonl
from pipeline.core.manifest import begin_stage, finish_stage


def test_bad_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2\n')
    with pytest.raises(InputError, match=r"x\.jsonl:3: not valid JSON"):
        read_jsonl(path)
    path.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(InputError, match=r"x\.jsonl:2: expected a JSON object"):
        read_jsonl(path)
    with pytest.raises(InputError, match="not found"):
        read_jsonl(tmp_path / "missing.jsonl")


def test_atomic_write_leaves_no_temp_and_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "out.jsonl"
    write_jsonl(path, [{"a": 1}])

    def boom():
        yield {"a": 2}
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        write_jsonl(path, boom())
    assert read_jsonl(path) == [{"a": 1}]
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_torn_tail_is_cut_and_appends_continue_cleanly(tmp_path):
    path = tmp_path / "chunks.jsonl"
    append_jsonl(path, [{"id": 1}, {"id": 2}])
    with path.open("a") as handle:
        handle.write('{"id": 3, "te')  # a crash in the middle of a write
    assert read_jsonl_tolerant(path) == [{"id": 1}, {"id": 2}]
    append_jsonl(path, [{"id": 3}])
    assert [r["id"] for r in read_jsonl(path)] == [1, 2, 3]


def test_stage_skips_when_key_matches_and_restarts_when_it_changes(tmp_path, capsys):
    run = tmp_path / "run"
    stage = begin_stage(run, "evolve", {"config": {"rounds": 2}})
    assert not stage.done
    (stage.dir / "round_1.jsonl").write_text("{}\n")
    finish_stage(stage, config={"rounds": 2}, rows={"round_1": 1})

    again = begin_stage(run, "evolve", {"config": {"rounds": 2}})
    assert again.done
    assert "skipped" in capsys.readouterr().err

    changed = begin_stage(run, "evolve", {"config": {"rounds": 3}})
    assert not changed.done
    assert not (changed.dir / "round_1.jsonl").exists()  # stale outputs from another key are gone
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["evolve"]["status"] == "running"


def test_interrupted_stage_resumes_with_its_partial_outputs(tmp_path, capsys):
    run = tmp_path / "run"
    stage = begin_stage(run, "answer", {"model": "m"})
    (stage.dir / "part.jsonl").write_text('{"id": 1}\n')
    # no finish_stage: the process was killed here
    resumed = begin_stage(run, "answer", {"model": "m"})
    assert not resumed.done
    assert (resumed.dir / "part.jsonl").exists()
    assert "resuming" in capsys.readouterr().err


def test_finished_manifest_records_provenance(tmp_path):
    stage = begin_stage(tmp_path, "train", {"data": "abc"})
    entry = finish_stage(
        stage, config={"lr": 1}, rows={"train": 10}, models={"base": {"path": "/m", "hash": "h"}}, seeds={"run": 42}
    )
    saved = json.loads((tmp_path / "train" / "manifest.json").read_text())
    assert saved == json.loads(json.dumps(entry, default=str))
    for key in ("key", "config", "git_sha", "versions", "started", "finished", "rows", "models", "seeds"):
        assert key in saved
    assert saved["versions"]["python"]
