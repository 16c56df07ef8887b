import re

import pytest

from pipeline.config import load_config
from pipeline.core.jsonio import InputError, read_jsonl
from pipeline.engine.fake import FakeEngine
from pipeline.generate import check_resumable, load_prompts, run_generate
from tests.conftest import write_lines


def test_prompt_and_messages_forms(tmp_path):
    path = write_lines(
        tmp_path / "p.jsonl",
        [
            {"id": 1, "prompt": "Name a colour."},
            {"id": "b", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]},
        ],
    )
    rows = load_prompts(path)
    assert rows[0] == {"id": "1", "messages": [{"role": "user", "content": "Name a colour."}]}
    assert rows[1]["messages"][0]["role"] == "system"


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"id": 1, "prompt": "a"}', '{"id": 2, "prompt": '], r"p\.jsonl:2: not valid JSON"),
        ([{"prompt": "a"}], r"p\.jsonl:1: missing \"id\""),
        (
            [{"id": 1, "prompt": "a"}, {"id": 1, "prompt": "b"}],
            r"p\.jsonl:2: duplicate id '1' \(first seen on line 1\)",
        ),
        ([{"id": 1, "prompt": "   "}], r"p\.jsonl:1: empty prompt"),
        ([{"id": 1, "text": "a"}], r"needs a \"prompt\" string or a \"messages\" list"),
        ([{"id": 1, "messages": [{"role": "robot", "content": "x"}]}], r"each message needs a role"),
        ([], r"no prompts"),
    ],
)
def test_bad_input_gets_one_clear_sentence(tmp_path, lines, message):
    with pytest.raises(InputError, match=message):
        load_prompts(write_lines(tmp_path / "p.jsonl", lines))


def test_generate_resumes_without_redoing_and_keeps_input_order(tmp_path):
    config = load_config(None, ["engine.chunk_size=2"])
    rows = [{"id": str(i), "messages": [{"role": "user", "content": f"q{i}"}]} for i in range(5)]
    out = tmp_path / "answers.jsonl"
    settings = {"model": "fake", "seed": 42}

    class Crash(Exception):
        pass

    def crash_on_third(request):
        if request.id == "3":
            raise Crash()
        return f"answer {request.id}"

    with pytest.raises(Crash):
        run_generate(FakeEngine(crash_on_third), rows, out, config, settings, check_resumable(out, settings))
    assert [r["id"] for r in read_jsonl(out)] == ["0", "1"]  # the first chunk survived the crash

    engine = FakeEngine(lambda r: f"answer {r.id}")
    summary = run_generate(engine, rows, out, config, settings, check_resumable(out, settings))
    assert [r.id for r in engine.requests_seen] == ["2", "3", "4"]
    assert summary["reused"] == 2 and summary["generated"] == 3
    records = read_jsonl(out)
    assert [r["id"] for r in records] == ["0", "1", "2", "3", "4"]
    assert records[4]["text"] == "answer 4"


def test_existing_output_with_other_settings_is_refused_not_overwritten(tmp_path):
    out = tmp_path / "answers.jsonl"
    out.write_text('{"id": "x", "text": "precious"}\n')
    with pytest.raises(InputError, match="already exists"):
        check_resumable(out, {"model": "other"})
    assert "precious" in out.read_text()


@pytest.mark.parametrize(
    "messages, problem",
    [
        ([{"role": "user", "content": "hi"}], None),
        ([], r'"messages" must be a non-empty list of turns'),
        ("hi", r'"messages" must be a non-empty list of turns'),
        ([{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}], r"message 1 of \"messages\" does not"),
        ([{"role": "user", "content": 3}], r'a string content \("content"\); message 0'),
        ([{"content": "hi"}], r'a role \("role": system, user or assistant\)'),
    ],
)
def test_one_chat_message_check(messages, problem):
    from pipeline.core.chat import messages_problem

    found = messages_problem(messages)
    assert found is None if problem is None else re.search(problem, found)


def test_seeds_training_data_and_prompts_share_the_chat_check(tmp_path):
    from evolve_local.seeds import load_seeds
    from finetune.data import load_conversations

    path = write_lines(tmp_path / "c.jsonl", [{"id": 1, "messages": [{"role": "user", "content": 5}]}])
    with pytest.raises(InputError, match=r'c\.jsonl:1: each message needs .* message 0 of "messages" does not'):
        load_prompts(path)
    with pytest.raises(InputError, match=r'c\.jsonl:1: each message needs .* message 0 of "messages" does not'):
        load_seeds(path)
    assert dict(load_conversations(path)[1].counts) == {"malformed_messages": 1}
    sharegpt = write_lines(tmp_path / "s.jsonl", [{"conversations": [{"from": "human"}]}])
    with pytest.raises(InputError, match=r'a role \("from"\) and a string content \("value"\); message 0 of "conv'):
        load_seeds(sharegpt)
