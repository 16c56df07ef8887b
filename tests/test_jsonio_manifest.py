import json

import pytest

from pipeline.core.jsonio import (
    InputError,
    append_jsonl,
    atomic_dir,
    atomic_write_bytes,
    iter_records,
    read_jsonl,
    read_jsonl_tolerant,
    write_jsonl,
)
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


def test_one_reader_takes_a_json_array_or_jsonl_and_names_each_records_line(tmp_path):
    array = tmp_path / "a.json"
    array.write_text('[\n  {"a": 1},\n\n  {"a": 2}\n]\n')
    assert list(iter_records(array)) == [(2, {"a": 1}), (4, {"a": 2})]
    sniffed = tmp_path / "b.jsonl"  # an array under a .jsonl name is still read as one
    sniffed.write_text('  [{"a": 1}, {"a": 2}]')
    assert [record for _, record in iter_records(sniffed)] == [{"a": 1}, {"a": 2}]
    lines = tmp_path / "c.jsonl"
    lines.write_text('{"a": 1}\n\n{"a": 2}\n')
    assert list(iter_records(lines)) == [(1, {"a": 1}), (3, {"a": 2})]


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("x.json", '[{"a": 1},\n {"a": }]', r"x\.json:2: not valid JSON \(Expecting value\); .*one JSON array"),
        ("x.json", '[{"a": 1} {"a": 2}]', r"x\.json:1: not valid JSON \(expected ',' or '\]'\)"),
        ("x.json", '[{"a": 1}]\n[{"a": 2}]', r"x\.json:1: not valid JSON \(extra data after the array\)"),
        ("x.json", '{"a": 1}\n', r"x\.json: a \.json file must hold a list of records"),
        ("x.json", '[{"a": 1},\n 7]', r"x\.json:2: expected a JSON object, got int"),
        ("x.jsonl", '{"a": 1}\n"text"\n', r"x\.jsonl:2: expected a JSON object, got str"),
    ],
)
def test_one_reader_refuses_a_bad_file_naming_file_and_line(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        list(iter_records(path))


def test_one_reader_can_report_bad_records_instead_of_stopping(tmp_path):
    bad = []
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n{oops\n[1]\n{"a": 2}\n')
    rows = list(iter_records(path, on_bad=lambda line, reason: bad.append((line, reason))))
    assert rows == [(1, {"a": 1}), (4, {"a": 2})] and bad == [(2, "invalid_json"), (3, "not_an_object")]


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


def test_atomic_bytes_and_directory_replace_only_when_complete(tmp_path):
    blob = tmp_path / "model.gguf"
    atomic_write_bytes(blob, b"\x00\x01new")
    assert blob.read_bytes() == b"\x00\x01new"
    target = tmp_path / "models" / "m"
    with atomic_dir(target) as staging:
        (staging / "sub").mkdir()
        (staging / "sub" / "w.bin").write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_dir(target) as staging:
        (staging / "w.bin").write_bytes(b"half")
        raise RuntimeError("killed mid-save")
    assert (target / "sub" / "w.bin").read_bytes() == b"old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["m"]  # no staging directory left
    with atomic_dir(target) as staging:
        (staging / "w.bin").write_bytes(b"new")
    assert sorted(p.name for p in target.iterdir()) == ["w.bin"]


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
