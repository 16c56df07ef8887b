"""The resumable-output ledger: resume after a crash, what is left, appends, the ordered rewrite."""

import json

import pytest

from pipeline.core.jsonio import InputError
from pipeline.core.ledger import Ledger


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def write(path, records, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


def test_a_torn_last_line_is_dropped_and_cut_before_the_next_append(tmp_path):
    out = tmp_path / "out.jsonl"
    write(out, [{"id": "a", "v": 1}, {"id": "b", "v": 2}], tail='{"id": "c", "v"')
    ledger = Ledger(out)
    assert list(ledger.done) == ["a", "b"]
    ledger.append([{"id": "c", "v": 3}])
    assert lines(out) == [{"id": "a", "v": 1}, {"id": "b", "v": 2}, {"id": "c", "v": 3}]
    assert ledger.done["c"] == {"id": "c", "v": 3}


def test_a_ledger_that_never_read_still_cuts_a_torn_tail_before_appending(tmp_path):
    out = tmp_path / "out.jsonl"
    write(out, [{"id": "a"}], tail='{"id": "b", "te')
    Ledger(out).append([{"id": "b"}])
    assert lines(out) == [{"id": "a"}, {"id": "b"}]


def test_a_bad_line_that_is_not_the_last_is_an_error_naming_it(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": "a"}\nnot json\n{"id": "b"}\n')
    with pytest.raises(InputError, match="out.jsonl:2"):
        Ledger(out).read()


def test_left_after_a_partial_run_is_what_is_missing_in_input_order(tmp_path):
    out = tmp_path / "out.jsonl"
    rows = [{"id": i} for i in "abcde"]
    Ledger(out).append([{"id": "d", "text": "x"}, {"id": "b", "text": "y"}])
    ledger = Ledger(out)
    assert ledger.left(rows) == [{"id": "a"}, {"id": "c"}, {"id": "e"}]
    assert ledger.left(["a", "b", "z"], key=lambda k: k) == ["a", "z"]
    assert Ledger(tmp_path / "absent.jsonl").left(rows) == rows


def test_a_key_written_twice_counts_with_its_last_record(tmp_path):
    out = tmp_path / "out.jsonl"
    write(out, [{"id": "a", "v": 1}, {"id": "b", "v": 1}, {"id": "a", "v": 2}])
    ledger = Ledger(out)
    assert ledger.done["a"] == {"id": "a", "v": 2}
    assert ledger.finish(["a", "b"]) == [{"id": "a", "v": 2}, {"id": "b", "v": 1}]
    assert lines(out) == [{"id": "a", "v": 2}, {"id": "b", "v": 1}]


def test_finish_rewrites_in_the_callers_order_and_drops_keys_not_asked_for(tmp_path):
    out = tmp_path / "out.jsonl"
    ledger = Ledger(out)
    ledger.append([{"id": "c"}, {"id": "gone"}])
    ledger.append([{"id": "a"}, {"id": "b"}])
    ledger.finish(["a", "b", "c"])
    assert lines(out) == [{"id": "a"}, {"id": "b"}, {"id": "c"}]


def test_finish_that_fails_leaves_the_old_file_as_it_was(tmp_path):
    out = tmp_path / "out.jsonl"
    write(out, [{"id": "b"}, {"id": "a"}])
    before = out.read_bytes()
    ledger = Ledger(out)
    ledger.done["c"] = {"id": "c", "value": object()}  # cannot be written: fails mid-rewrite
    with pytest.raises(TypeError):
        ledger.finish(["a", "b", "c"])
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]  # no temp file left behind
    with pytest.raises(KeyError):
        ledger.finish(["a", "missing"])
    assert out.read_bytes() == before


def test_keep_ignores_records_no_longer_wanted_and_redo_sends_errors_again(tmp_path):
    out = tmp_path / "out.jsonl"
    write(out, [{"id": "a", "ok": True}, {"id": "old", "ok": True}, {"id": "b", "ok": False}, {"note": "no id"}])
    wanted = {"a", "b", "c"}
    ledger = Ledger(out, keep=lambda r: r.get("id") in wanted, redo=lambda r: not r["ok"])
    assert set(ledger.done) == {"a", "b"}
    assert ledger.left(["a", "b", "c"], key=lambda k: k) == ["b", "c"]
    ledger.append([{"id": "b", "ok": True}])
    assert ledger.left(["a", "b", "c"], key=lambda k: k) == ["c"]


def test_a_composite_key_and_a_given_mapping(tmp_path):
    out = tmp_path / "orders.jsonl"
    write(out, [{"id": "1", "order": "AB"}, {"id": "1", "order": "BA"}])
    held = {}
    ledger = Ledger(out, key=lambda r: (r["id"], r["order"]), into=held)
    assert ledger.done is held
    assert set(held) == {("1", "AB"), ("1", "BA")}


def test_a_ledger_only_appending_does_not_read_the_file(tmp_path, monkeypatch):
    out = tmp_path / "out.jsonl"
    write(out, [{"id": "a"}])
    import pipeline.core.ledger as ledger_module

    monkeypatch.setattr(ledger_module, "read_jsonl_tolerant", lambda path: pytest.fail("read"))
    Ledger(out).append([{"id": "b"}])
    assert lines(out) == [{"id": "a"}, {"id": "b"}]
