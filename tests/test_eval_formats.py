"""Standard question files (FastChat Vicuna-80 / MT-bench, Arena-Hard, AlpacaEval) load without options
and run through answer and judge on the fake engine; unknown shapes are refused with the accepted list."""

import json
from pathlib import Path

import pytest

from eval.answer import answer_testset
from eval.judge import judge_pairs
from pipeline.config import Config, load_config
from pipeline.config.eval import EvalConfig
from pipeline.core.jsonio import InputError, read_json, read_jsonl
from pipeline.core.testset import load_testset
from pipeline.engine.fake import FakeEngine

FIXTURES = Path(__file__).parent / "fixtures" / "testsets"


@pytest.fixture(autouse=True)
def private_hash_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EVOL_MODELS_DIR", str(tmp_path / "store"))


def test_fastchat_vicuna_questions():
    items = load_testset(FIXTURES / "fastchat_vicuna.jsonl", EvalConfig())
    assert [(i.id, i.category, i.turns, i.reference, i.difficulty) for i in items] == [
        ("1", "generic", 1, None, None),
        ("2", "knowledge", 1, None, None),
        ("3", "writing", 1, None, None),
    ]
    assert items[1].instruction == "Why does ice float on liquid water?"


def test_mt_bench_keeps_the_first_turn_and_says_so(capsys):
    items = load_testset(FIXTURES / "fastchat_mt_bench.jsonl", EvalConfig())
    assert [(i.id, i.turns) for i in items] == [("81", 2), ("111", 2), ("121", 1)]
    assert items[1].instruction.startswith("A rectangle is 6 cm") and items[1].reference == "24 square centimetres."
    assert "2 of 3 questions have several turns; only the first turn is asked" in capsys.readouterr().err


def test_arena_hard_questions():
    items = load_testset(FIXTURES / "arena_hard.jsonl", EvalConfig())
    assert [i.id for i in items] == ["q-7f3a", "q-91bc", "q-c402"]
    assert items[1].instruction.startswith("Write a bash loop") and items[0].category == "arena-hard-v0.1"


def test_alpaca_eval_uses_line_numbers_dataset_and_output():
    items = load_testset(FIXTURES / "alpaca_eval.jsonl", EvalConfig())
    assert [(i.id, i.category) for i in items] == [("1", "helpful_base"), ("2", "koala"), ("3", "selfinstruct")]
    assert items[1].reference == "Bonjour." and items[2].reference is None


def test_limit_applies_to_standard_formats():
    assert [i.id for i in load_testset(FIXTURES / "arena_hard.jsonl", EvalConfig(limit=2))] == ["q-7f3a", "q-91bc"]


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    "rows, message",
    [
        (
            [{"prompt": "hi", "id": 3}],
            r"x.jsonl:1: a test set format I do not recognise \(keys: id, prompt\).*"
            r"FastChat llm_judge.*Arena-Hard.*AlpacaEval.*eval.id_field",
        ),
        (
            [{"question_id": 1, "turns": ["ok"]}, {"question_id": 2, "turns": [3]}],
            r"x.jsonl:2: turn 1 must be a string",
        ),
        (
            [{"question_id": 1, "turns": [{"content": "ok"}]}, {"question_id": 2, "turns": ["no"]}],
            r"x.jsonl:2: turn 1 must be an object with a \"content\" string",
        ),
        ([{"question_id": 1, "turns": []}], r"x.jsonl:1: \"turns\" must be a non-empty list"),
        ([{"question_id": 1, "turns": ["a"]}, {"turns": ["b"]}], r"x.jsonl:2: missing field \"question_id\""),
        ([{"instruction": "a"}, {"dataset": "b"}], r"x.jsonl:2: \"instruction\" must be a string"),
        ([{"question_id": 1, "turns": ["a"]}, {"question_id": 1, "turns": ["b"]}], r"x.jsonl:2: duplicate id '1'"),
    ],
)
def test_malformed_standard_files_name_file_and_line(tmp_path, rows, message):
    with pytest.raises(InputError, match=message):
        load_testset(write(tmp_path / "x.jsonl", rows), EvalConfig())


def test_an_unrecognised_key_with_a_newline_stays_on_the_one_line(tmp_path):
    # found by the fuzz test: a raw newline inside a key broke the one-sentence message in two
    with pytest.raises(InputError, match=r"\(keys: 'a\\nb', id\)") as caught:
        load_testset(write(tmp_path / "x.jsonl", [{"a\nb": 1, "id": 2}]), EvalConfig())
    assert "\n" not in str(caught.value)


def test_a_mapping_the_user_set_wins_over_detection(tmp_path):
    path = write(tmp_path / "x.jsonl", [{"question_id": "a", "turns": ["ignored"], "text": "asked"}])
    config = load_config(None, ["eval.id_field=question_id", "eval.instruction_field=text"])
    assert load_testset(path, config.eval)[0].instruction == "asked"


def echo(request):
    return "reply to: " + request.messages[-1]["content"][:30]


def judge_first_longer(request):
    return "7 5\nthe first reply is fuller"


@pytest.mark.parametrize(
    "name", ["fastchat_vicuna.jsonl", "fastchat_mt_bench.jsonl", "arena_hard.jsonl", "alpaca_eval.jsonl"]
)
def test_each_format_runs_through_answer_and_judge(tmp_path, name):
    model = tmp_path / "model"
    model.mkdir()
    config = Config()
    config.eval.bootstrap_resamples = 50
    testset = FIXTURES / name
    engine = FakeEngine(echo)
    answer_testset(config, tmp_path / "answers", model, testset, base_label="A", engine=engine)
    answer_testset(config, tmp_path / "answers", model, testset, base_label="B", engine=engine)
    rows = read_jsonl(tmp_path / "answers" / "A" / "answers.jsonl")
    assert len(rows) == 3 and all(r["answer"].startswith("reply to: ") for r in rows)
    # The question asked is the (first) turn's text, never the list of turns.
    assert all(not r["instruction"].startswith("[") for r in rows)
    judge = FakeEngine(judge_first_longer)
    judge_dir, scores = judge_pairs(
        config, [(tmp_path / "answers" / "A", tmp_path / "answers" / "B")], tmp_path / "judge", "j", engine=judge
    )[0]
    assert scores["overall"]["n"] == 3 and scores["overall"]["tie"] == 3  # 7 5 in both orders flips: a tie
    multi = 2 if name == "fastchat_mt_bench.jsonl" else 0
    assert scores["first_turn_only_items"] == multi and sum(r["turns"] > 1 for r in rows) == multi
    with_reference = [r for r in judge.requests_seen if "[Reference answer]" in r.messages[-1]["content"]]
    expected = {"fastchat_mt_bench.jsonl": 2, "alpaca_eval.jsonl": 4}.get(name, 0)  # both orders each
    assert len(with_reference) == expected
    assert read_json(judge_dir / "scores.json")["items"] == 3
