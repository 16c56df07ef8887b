"""Seed formats: detection, joining instruction and input, answers, and bad files."""

import json

import pytest

from evolve_local.seeds import load_seeds
from pipeline.core.jsonio import InputError
from pipeline.core.paths import SHIPPED_SEEDS
from tests.conftest import write_lines


def test_alpaca_json_array_joins_instruction_and_input(tmp_path):
    path = tmp_path / "alpaca.json"
    path.write_text(
        json.dumps(
            [
                {"instruction": "Sum the numbers.", "input": "1, 2, 3", "output": "6"},
                {"instruction": "Name a colour.", "input": "", "output": "Blue."},
            ]
        )
    )
    seeds, fmt = load_seeds(path)
    assert fmt == "alpaca"
    assert seeds[0].instruction == "Sum the numbers.\n\n1, 2, 3" and seeds[0].output == "6"
    assert seeds[1].instruction == "Name a colour." and seeds[0].id != seeds[1].id


def test_alpaca_jsonl_and_plain_mix(tmp_path):
    seeds, fmt = load_seeds(
        write_lines(
            tmp_path / "a.jsonl",
            [
                {"instruction": "A?", "output": "a"},
                {"instruction": "B?"},
            ],
        )
    )
    assert fmt == "alpaca" and [s.output for s in seeds] == ["a", None]


def test_plain_instructions_have_no_answers(tmp_path):
    seeds, fmt = load_seeds(write_lines(tmp_path / "p.jsonl", [{"instruction": "Say hi."}, {"instruction": "Count."}]))
    assert fmt == "plain" and all(s.output is None for s in seeds)


def test_self_instruct_uses_the_first_instance(tmp_path):
    seeds, fmt = load_seeds(
        write_lines(
            tmp_path / "s.jsonl",
            [
                {
                    "id": "t0",
                    "instruction": "Reverse the word.",
                    "instances": [{"input": "cat", "output": "tac"}, {"input": "dog", "output": "god"}],
                },
                {"id": "t1", "instruction": "Tell a joke.", "instances": [{"input": "", "output": "Knock knock."}]},
            ],
        )
    )
    assert fmt == "self-instruct"
    assert (seeds[0].id, seeds[0].instruction, seeds[0].output) == ("t0", "Reverse the word.\n\ncat", "tac")
    assert seeds[1].instruction == "Tell a joke."


def test_sharegpt_takes_the_first_human_turn_and_its_reply(tmp_path):
    path = tmp_path / "sg.json"
    path.write_text(
        json.dumps(
            [
                {
                    "id": "c1",
                    "conversations": [
                        {"from": "system", "value": "Be kind."},
                        {"from": "human", "value": "What is 2+2?"},
                        {"from": "gpt", "value": "4"},
                        {"from": "human", "value": "And 3+3?"},
                    ],
                },
                {"id": "c2", "conversations": [{"from": "human", "value": "Hello"}]},
            ]
        )
    )
    seeds, fmt = load_seeds(path)
    assert fmt == "sharegpt"
    assert (seeds[0].instruction, seeds[0].output) == ("What is 2+2?", "4")
    assert seeds[1].output is None


def test_chat_messages(tmp_path):
    seeds, fmt = load_seeds(
        write_lines(
            tmp_path / "m.jsonl",
            [
                {
                    "messages": [
                        {"role": "user", "content": "Name a planet."},
                        {"role": "assistant", "content": "Mars."},
                    ]
                },
            ],
        )
    )
    assert fmt == "chat" and (seeds[0].instruction, seeds[0].output) == ("Name a planet.", "Mars.")


def test_shipped_seed_set_is_varied_and_plain():
    seeds, fmt = load_seeds(SHIPPED_SEEDS)
    assert fmt == "plain" and 45 <= len(seeds) <= 60
    assert len({s.instruction for s in seeds}) == len(seeds)


def test_real_self_instruct_seed_tasks(real_seed_tasks):
    seeds, fmt = load_seeds(real_seed_tasks)
    assert fmt == "self-instruct" and len(seeds) == 175
    assert seeds[0].id == "seed_task_0" and seeds[0].output
    assert all(s.instruction.strip() for s in seeds)


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"question": "x"}], r"unknown seed format \(keys: question\); accepted formats: alpaca .*plain"),
        ([{"instruction": "  "}], r"s\.jsonl:1: the instruction is empty"),
        ([{"instruction": "a"}, '{"instruction": '], r"s\.jsonl:2: not valid JSON"),
        ([{"id": 1, "instruction": "a"}, {"id": 1, "instruction": "b"}], r"s\.jsonl:2: duplicate id '1'"),
        ([{"instruction": "a"}, {"messages": [{"role": "user", "content": "b"}]}], r"s\.jsonl:2: looks like chat"),
        ([{"conversations": [{"from": "gpt", "value": "hi"}]}], r"no user turn"),
        ([{"messages": "hello"}], r"\"messages\" must be a non-empty list"),
        ([{"instruction": "a", "instances": []}], r"\"instances\" must be a non-empty list"),
        ([{"instruction": 5}], r"\"instruction\" must be a string"),
        ([], r"holds no seeds"),
    ],
)
def test_bad_seed_files_get_one_clear_sentence(tmp_path, rows, message):
    with pytest.raises(InputError, match=message):
        load_seeds(write_lines(tmp_path / "s.jsonl", rows))


def test_missing_and_broken_json_array(tmp_path):
    with pytest.raises(InputError, match="not found; pass --seeds"):
        load_seeds(tmp_path / "nope.jsonl")
    path = tmp_path / "broken.json"
    path.write_text('[{"instruction": "a"},\n')
    with pytest.raises(InputError, match=r"broken\.json:\d+: not valid JSON"):
        load_seeds(path)


def test_max_seeds_keeps_the_first_n(tmp_path):
    from evolve_local.inputs import load_inputs
    from pipeline.config import load_config

    path = tmp_path / "seeds.jsonl"
    path.write_text("".join(f'{{"instruction": "Task number {i}."}}\n' for i in range(6)))
    inputs = load_inputs(
        load_config(None, [f"evolve.seeds={path}", "evolve.max_seeds=2", "evolve.decontaminate=false"])
    )
    assert [s.instruction for s in inputs.seeds] == ["Task number 0.", "Task number 1."]
    with pytest.raises(InputError, match="max_seeds"):
        load_inputs(load_config(None, [f"evolve.seeds={path}", "evolve.max_seeds=-1"]))
