"""The round record as one type: the fields written to round_<k>.jsonl and C<k>.jsonl, in order,
and one survival rule shared by the round files and the progress bar."""

import inspect
import json

import pytest

from evolve_local import generation
from evolve_local.eliminate import STEPS
from evolve_local.evolve import run_evolve
from pipeline.core.jsonio import read_jsonl
from pipeline.core.records import (
    CONTAMINATED,
    COPIED_PROMPT_WORDS,
    EVOLUTION_ONLY,
    KEPT,
    NEAR_DUPLICATE,
    RoundRecord,
    field_names,
)
from tests.conftest import Factory, make_config

ROUND_FIELDS = [
    "id",
    "parent_id",
    "root_id",
    "round",
    "operation",
    "instruction",
    "response",
    "status",
    "elimination_rule",
    "elimination_detail",
    "verdict",
    "verdict_text",
    "evolver_model",
    "equality_model",
    "responder_model",
    "answer_finish_reason",
    "tokens",
    "seeds",
]
TRAINING_FIELDS = ["id", "messages", "round", "root_id", "parent_id", "operation"]


def test_the_documented_type_pins_the_fields_and_their_order():
    assert field_names(1) == ROUND_FIELDS
    assert field_names(0) == [f for f in ROUND_FIELDS if f not in EVOLUTION_ONLY]
    # every field carries its meaning beside it
    source = inspect.getsource(RoundRecord).splitlines()
    for name in ROUND_FIELDS:
        line = next(line for line in source if line.strip().startswith(f"{name}:"))
        assert "#" in line, f"field {name} has no comment saying what it holds"


def test_files_are_written_in_the_documented_field_order(tmp_path):
    run_evolve(make_config(tmp_path, rounds=1), tmp_path / "run", Factory().models, quiet=True)
    kept = []
    for k in (0, 1):
        lines = (tmp_path / "run" / "evolve" / f"round_{k}.jsonl").read_text().splitlines()
        for line in lines:
            data = json.loads(line)
            assert list(data) == field_names(k)
            record = RoundRecord.from_dict(data)
            assert json.dumps(record.to_dict(), ensure_ascii=False) == line  # the type round-trips a line
            kept += [record.training_row()] if record.status == KEPT else []
    rows = read_jsonl(tmp_path / "run" / "data" / "C1.jsonl")
    assert all(list(row) == TRAINING_FIELDS for row in rows)
    assert rows == kept


@pytest.mark.parametrize("overrides", [[], ["evolve.overlap_steps=false"]], ids=["chained", "by_step"])
def test_progress_bar_and_round_file_apply_one_survival_rule(tmp_path, monkeypatch, overrides):
    bar: dict[tuple[str, str], bool] = {}  # (attempt id, step) -> what the bar counted

    def spy(step, passes):
        def counted(record):
            bar[(record["id"], step)] = passed = passes(record)
            return passed

        return counted

    def spying(real):
        def run(*args, passes, **kwargs):
            if isinstance(passes, dict):  # run_chained: one rule per step
                passes = {step: spy(step, rule) for step, rule in passes.items()}
            else:  # run_step(engines, role, step, ...)
                passes = spy(args[2], passes)
            return real(*args, passes=passes, **kwargs)

        return run

    monkeypatch.setattr(generation, "run_step", spying(generation.run_step))
    monkeypatch.setattr(generation, "run_chained", spying(generation.run_chained))
    run_evolve(make_config(tmp_path, *overrides, rounds=1), tmp_path / "run", Factory().models, quiet=True)

    records = read_jsonl(tmp_path / "run" / "evolve" / "round_1.jsonl")
    for record in records:
        steps = [bar[(record["id"], step)] for step in STEPS if (record["id"], step) in bar]
        assert steps, record["id"]
        # near-duplicates and test-set overlaps are decided after generation, so the bar cannot see them
        survived_generation = record["status"] == KEPT or record["elimination_rule"] in (NEAR_DUPLICATE, CONTAMINATED)
        assert all(steps) == survived_generation, record
    copied = next(r for r in records if r["root_id"] == "s4")  # the COPYME seed
    assert copied["elimination_rule"] == COPIED_PROMPT_WORDS
    assert bar[(copied["id"], "evolve")] is False
