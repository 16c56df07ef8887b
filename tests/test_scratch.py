"""The scratch SQLite file behind the evolve stage's lookups: a dict of records that lives on disk,
made empty when opened, across many transactions, and deleted when closed."""

import pytest

from pipeline.core import scratch as scratch_module
from pipeline.core.scratch import Scratch


def test_records_behave_as_a_dict_across_transactions_and_the_file_goes_at_close(tmp_path, monkeypatch):
    monkeypatch.setattr(scratch_module, "COMMIT_EVERY", 7)  # many commits in a few writes
    path = tmp_path / "work" / "scratch.sqlite"
    path.parent.mkdir()
    path.write_bytes(b"not a database: a killed process's leftovers")
    scratch = Scratch(path)
    records = scratch.records("round_1_evolve")
    for n in range(50):
        records[f"a{n}"] = {"id": f"a{n}", "text": f"évolution {n}", "tokens": [n, n + 1]}
    records["a3"] = {"id": "a3", "text": "replaced"}
    assert len(records) == 50 and records["a3"]["text"] == "replaced" and records["a7"]["tokens"] == [7, 8]
    assert "a49" in records and "b1" not in records and sorted(records)[:2] == ["a0", "a1"]
    with pytest.raises(KeyError):
        records["b1"]
    del records["a0"]
    assert "a0" not in records and len(records) == 49
    again = scratch.records("round_1_evolve")  # opened anew: empty
    assert len(again) == 0
    with pytest.raises(ValueError):
        scratch.records("x; DROP TABLE y")
    scratch.close()
    assert not path.exists()


def test_a_temporary_scratch_cleans_up_its_folder():
    with Scratch() as scratch:
        folder = scratch.path.parent
        scratch.records("t")["k"] = {"v": 1}
        assert folder.is_dir()
    assert not folder.exists()
