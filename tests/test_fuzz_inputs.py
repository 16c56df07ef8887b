"""Garbage at every loader of a user's file: binary bytes, wrong JSON types, nested nulls, huge lines
and numbers, deep nesting, UTF-16 and Latin-1, empty files, a directory, a missing file. The only
way a loader may fail is the project's InputError naming the file; nothing else may escape.

    python -m pytest -q tests/test_fuzz_inputs.py
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eval.judge import load_answer_set
from evolve_local.seeds import load_seeds
from finetune.data import load_conversations
from pipeline.config import ConfigError, load_config
from pipeline.config.eval import EvalConfig
from pipeline.core.jsonio import InputError
from pipeline.core.testset import load_testset
from pipeline.generate import load_prompts

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------- what garbage looks like

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["user", "assistant", "human", "gpt", "system", "", " "]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=10,
)
TURN_KEYS = ["role", "content", "from", "value", "input", "output"]
turns = st.lists(
    st.none() | st.dictionaries(st.sampled_from(TURN_KEYS), json_values | st.text(max_size=8), max_size=3),
    max_size=3,
)


def records(*keys: str):
    """Objects with the loader's own keys (and a few others) holding values of any type."""
    return st.dictionaries(st.sampled_from(keys) | st.text(max_size=5), json_values | turns, max_size=5)


def _lines(rows: list) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


SPECIAL = [
    b"",
    b"\n \n\t\n",
    b"null\n",
    b"[]",
    b"[null]",
    b"[[[]]]",
    b"{}\n",
    b'{"id": 1}\n' + b"[" * 50_000 + b"\n",  # deeper than the JSON parser can recurse
    b'{"id": ' + b"9" * 5000 + b"}\n",  # more digits than int() accepts
    b'{"id": "a", "instruction": "' + b"x" * 300_000 + b'", "prompt": "p"}\n',  # a huge line
    b'{"id": 1, "Difficulty": Infinity, "Instruction": "q", "idx": 1}\n',
    b'{"id": 1, "Difficulty": 1e999, "Instruction": "q", "idx": 2}\n',
    b"\xef\xbb\xbf[1, 2]",  # a BOM before a JSON array of non-objects
    b'[{"instruction": "a"}',  # an unfinished array
    b"\x00\x00\x00",
]


def contents(record_strategy):
    rows = st.lists(record_strategy | json_values, max_size=4)
    return st.one_of(
        rows.map(_lines),
        rows.map(lambda r: json.dumps(r).encode()),  # a JSON array instead of lines
        st.binary(max_size=200),
        rows.map(lambda r: _lines(r).decode().encode("utf-16")),
        st.text(alphabet='éàüßøñ{}":, abc\n', min_size=1, max_size=60).map(lambda t: t.encode("latin-1")),
        st.tuples(rows.map(_lines), st.binary(min_size=1, max_size=8)).map(lambda p: p[0] + p[1] + b"\n"),
        st.sampled_from(SPECIAL),
    )


def expect_input_error_or_result(load, path: Path, named: Path):
    """Run a loader: it returns, or raises InputError naming `named`; any other exception fails."""
    try:
        return load(path)
    except InputError as err:
        assert str(named) in str(err), f"the error does not name {named}: {err}"
        assert "\n" not in str(err).strip()
        return None


@pytest.fixture(scope="module")
def scratch():
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


# ---------------------------------------------------------------- one property per loader


@FUZZ
@given(data=contents(records("id", "idx", "instruction", "input", "output", "instances", "conversations", "messages")))
def test_seed_files(scratch, data):
    for name in ("seeds.jsonl", "seeds.json"):
        path = scratch / name
        path.write_bytes(data)
        expect_input_error_or_result(load_seeds, path, path)


@FUZZ
@given(data=contents(records("idx", "Instruction", "Skill", "Difficulty")))
def test_test_sets(scratch, data):
    path = scratch / "testset.jsonl"
    path.write_bytes(data)
    expect_input_error_or_result(lambda p: load_testset(p, EvalConfig(limit=0)), path, path)


@FUZZ
@given(
    answers=contents(records("id", "instruction", "answer", "finish_reason")),
    manifest=st.one_of(
        st.just(b'{"label": "C1", "testset": {"hash": "h"}}'),
        st.builds(lambda v: json.dumps(v).encode(), json_values | records("label", "testset")),
        st.binary(max_size=40),
    ),
)
def test_answer_directories(scratch, answers, manifest):
    directory = scratch / "answers" / "C1"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "answers.jsonl").write_bytes(answers)
    (directory / "manifest.json").write_bytes(manifest)
    expect_input_error_or_result(lambda p: load_answer_set(p, "--answers"), directory, directory)


@FUZZ
@given(data=contents(records("id", "prompt", "messages")))
def test_prompt_files(scratch, data):
    path = scratch / "prompts.jsonl"
    path.write_bytes(data)
    expect_input_error_or_result(load_prompts, path, path)


@FUZZ
@given(data=contents(records("id", "messages", "instruction", "input", "output")))
def test_training_data(scratch, data):
    for name in ("train.jsonl", "train.json"):
        path = scratch / name
        path.write_bytes(data)
        loaded = expect_input_error_or_result(load_conversations, path, path)
        if loaded is not None:  # bad rows are counted, never crash and never pass as good
            rows, bad = loaded
            assert len(rows) + bad.bad == bad.total


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
SECTIONS = ["run", "models", "engine", "evolve", "train", "eval", "analysis"]
KEYS = ["name", "rounds", "seed", "max_tokens", "dtype", "limit", "method", "clusters", "evolver", "kv_cache_gb"]
config_docs = st.dictionaries(
    st.sampled_from(SECTIONS) | st.text(max_size=5),
    st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5), yaml_values, max_size=3) | yaml_values,
    max_size=3,
)


@FUZZ
@given(
    data=st.one_of(
        config_docs.map(lambda d: json.dumps(d).encode()),  # JSON is YAML
        st.binary(max_size=200),
        st.text(max_size=80).map(str.encode),
        config_docs.map(lambda d: json.dumps(d).encode("utf-16")),
        st.sampled_from(
            [b"", b"- a\n- b\n", b"run: [\n", b"a: &x [*x]\n", b"run:\n  rounds: !!python/object:os.system x\n"]
        ),
    )
)
def test_config_files(scratch, data):
    path = scratch / "config.yaml"
    path.write_bytes(data)
    expect_input_error_or_result(load_config, path, path)


@FUZZ
@given(
    key=st.sampled_from([f"{s}.{k}" for s in SECTIONS for k in KEYS]) | st.text(max_size=12),
    value=st.text(max_size=20) | st.sampled_from(["[", "{a: 1", "!!binary x", "&a [*a]", "[0, 1", "1e999", "~"]),
)
def test_config_overrides(key, value):
    item = f"{key}={value}"
    try:
        load_config(None, [item])
    except ConfigError as err:
        assert "\n" not in str(err).strip()


# ---------------------------------------------------------------- a directory, a missing file

LOADERS = {
    "seeds": load_seeds,
    "testset": lambda p: load_testset(p, EvalConfig()),
    "prompts": load_prompts,
    "training data": load_conversations,
    "config": load_config,
}


@pytest.mark.parametrize("loader", LOADERS.values(), ids=LOADERS.keys())
@pytest.mark.parametrize("kind", ["directory", "missing"])
def test_a_directory_or_a_missing_file(tmp_path, loader, kind):
    path = tmp_path / "input.jsonl"
    if kind == "directory":
        path.mkdir()
    with pytest.raises(InputError, match=str(path)):
        loader(path)


@pytest.mark.parametrize("kind", ["directory", "missing"])
def test_answer_directory_with_a_directory_or_nothing_for_answers(tmp_path, kind):
    directory = tmp_path / "C1"
    directory.mkdir()
    (directory / "manifest.json").write_text("{}")
    if kind == "directory":
        (directory / "answers.jsonl").mkdir()
    with pytest.raises(InputError, match=str(directory)):
        load_answer_set(directory, "--answers")


@pytest.mark.parametrize(
    "loader", [load_seeds, lambda p: load_testset(p, EvalConfig()), load_prompts], ids=["seeds", "testset", "prompts"]
)
@pytest.mark.parametrize(
    "bad", [b"\xff\xfe garbage\n", '{"id": "é"}\n'.encode("latin-1"), b"[[[" * 20_000 + b"\n", b"1" * 5000 + b"\n"]
)
def test_the_bad_line_is_named(tmp_path, loader, bad):
    path = tmp_path / "input.jsonl"
    good = '{"id": "a", "idx": "a", "instruction": "Say hi.", "Instruction": "Say hi.", "prompt": "Say hi."}\n'
    path.write_bytes(good.encode() + b"\n" + bad)
    with pytest.raises(InputError, match=f"{path}:3"):
        loader(path)


def test_a_utf16_file_is_named_as_such(tmp_path):
    path = tmp_path / "seeds.jsonl"
    path.write_text('{"instruction": "Say hi."}\n', encoding="utf-16")
    with pytest.raises(InputError, match="UTF-16"):
        load_seeds(path)
