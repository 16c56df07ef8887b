"""Test set loading: the Evol-Instruct schema, a second schema through the field mapping, bad files."""

import json

import pytest

from pipeline.config import load_config
from pipeline.config.eval import EvalConfig
from pipeline.core.jsonio import InputError
from pipeline.core.paths import SAMPLE_TESTSET
from pipeline.core.testset import load_testset
from tests.conftest import write_lines


def test_shipped_sample_has_the_real_schema_and_spread():
    items = load_testset(SAMPLE_TESTSET, EvalConfig())
    assert 12 <= len(items) <= 20
    assert len({i.category for i in items}) >= 8
    assert {i.difficulty for i in items} >= {1, 5, 8, 10}
    assert all(1 <= i.difficulty <= 10 for i in items)


def test_real_testset_loads(real_testset):
    items = load_testset(real_testset, EvalConfig())
    assert len(items) == 218 and items[0].id == "1" and items[0].category == "Math"


def test_second_schema_through_field_mapping(tmp_path):
    path = write_lines(
        tmp_path / "mt.jsonl",
        [
            {"question_id": "a-1", "prompt": "What is 3 * 4?", "category": "math", "answer": "12"},
            {"question_id": "a-2", "prompt": "Write a haiku.", "category": "writing"},
        ],
    )
    config = load_config(
        None,
        [
            "eval.id_field=question_id",
            "eval.instruction_field=prompt",
            "eval.category_field=category",
            "eval.difficulty_field=",
            "eval.reference_field=answer",
        ],
    )
    items = load_testset(path, config.eval)
    assert [(i.id, i.category, i.difficulty, i.reference) for i in items] == [
        ("a-1", "math", None, "12"),
        ("a-2", "writing", None, None),
    ]
    assert items[0].instruction == "What is 3 * 4?"


def test_limit_keeps_evenly_spaced_items_in_file_order():
    # 16 items, limit 4: positions 0, 4, 8, 12
    assert [i.id for i in load_testset(SAMPLE_TESTSET, EvalConfig(limit=4))] == ["1", "5", "9", "13"]
    assert len(load_testset(SAMPLE_TESTSET, EvalConfig(limit=100))) == 16


@pytest.mark.parametrize(
    "rows, message",
    [
        (['{"idx": 1, "Skill": "Math", "Instruction": "ok"}', "{not json"], r"bad.jsonl:2: not valid JSON"),
        ([{"idx": 1, "Skill": "Math"}], r"bad.jsonl:1: missing field \"Instruction\".*eval.instruction_field"),
        ([{"Skill": "Math", "Instruction": "x"}], r"missing field \"idx\""),
        ([{"idx": 1, "Instruction": "  "}], r"bad.jsonl:1: empty instruction"),
        ([{"idx": 1, "Instruction": "a"}, {"idx": 1, "Instruction": "b"}], r"bad.jsonl:2: duplicate id '1'"),
        ([{"idx": 1, "Instruction": "a", "Difficulty": "hard"}], r"\"Difficulty\" must be a whole number"),
        ([{"idx": 1, "Instruction": ["a"]}], r"must be a string"),
        ([{"idx": 1, "Instruction": "x" * 100_001}], r"does not look like a test question"),
        ([], r"no items"),
    ],
)
def test_bad_files_name_file_and_line(tmp_path, rows, message):
    with pytest.raises(InputError, match=message):
        load_testset(write_lines(tmp_path / "bad.jsonl", rows), EvalConfig())


def test_missing_file_and_bad_options(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        load_testset(tmp_path / "nope.jsonl", EvalConfig())
    with pytest.raises(InputError, match="eval.limit"):
        load_testset(SAMPLE_TESTSET, EvalConfig(limit=-1))
    with pytest.raises(InputError, match="cannot be empty"):
        load_testset(SAMPLE_TESTSET, EvalConfig(instruction_field=""))


def test_every_input_file_is_read_by_the_one_reader(tmp_path):
    """Seeds, test set, prompts and training data: a JSON array is accepted, and a broken one gets
    the same sentence, naming the file and line, from each."""
    from evolve_local.seeds import load_seeds
    from finetune.data import load_conversations
    from pipeline.generate import load_prompts

    good = tmp_path / "good.json"
    good.write_text(
        json.dumps(
            [
                {
                    "id": "1",
                    "idx": 1,
                    "Instruction": "Add 2 and 2.",
                    "instruction": "Add 2 and 2.",
                    "prompt": "Add 2 and 2.",
                    "output": "4",
                }
            ]
        )
    )
    assert [i.instruction for i in load_testset(good, EvalConfig())] == ["Add 2 and 2."]
    assert load_seeds(good)[0][0].instruction == "Add 2 and 2."
    assert load_prompts(good)[0]["messages"][0]["content"] == "Add 2 and 2."
    assert load_conversations(good)[0][0].messages[1]["content"] == "4"

    broken = tmp_path / "broken.json"
    broken.write_text('[\n {"id": ]')
    for load in (lambda p: load_testset(p, EvalConfig()), load_seeds, load_prompts, load_conversations):
        with pytest.raises(InputError, match=r"broken\.json:2: not valid JSON \(Expecting value\)"):
            load(broken)
