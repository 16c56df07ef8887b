"""`evol export` on a small finished run (evolved with the scripted fake engines of conftest, with a
duplicated and a contaminated seed so every kind of elimination is in the tree): `datasets` loads
each config offline with the declared schema and the run's rows, the card's header and counts match
the run, and bad inputs are one sentence."""

import shutil
from dataclasses import fields

import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner

from evolve_local.dedup import NearDuplicates, TestSetFilter
from evolve_local.evolve import run_evolve
from pipeline.cli import main
from pipeline.core.jsonio import read_json, read_jsonl
from pipeline.core.records import RULES, RoundRecord, elimination_match, iter_attempts
from pipeline.export import TREE, TREE_FIELDS, export_run, training_features, tree_features
from pipeline.export_card import RULE_MEANINGS, TREE_COLUMNS, size_category
from tests.conftest import SEEDS, Factory, make_config, write_seeds

TEST_INSTRUCTION = "Describe the water cycle in four steps for a child."
EXTRA_SEEDS = ["Explain how tides work!", TEST_INSTRUCTION + " Keep it short."]  # a twin of s0; contaminated


@pytest.fixture(scope="module")
def evolved(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evolved")
    config = make_config(tmp, rounds=2, seeds=write_seeds(tmp, SEEDS + EXTRA_SEEDS))
    run_evolve(config, tmp / "run", Factory().models, quiet=True)
    return tmp / "run"


def load(out, name, tmp_path):
    import datasets

    return datasets.load_dataset(str(out), name, split="train", cache_dir=str(tmp_path / "hf-cache"))


def header(out):
    text = (out / "README.md").read_text()
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_each_config_loads_with_the_runs_rows_and_the_declared_schema(evolved, tmp_path, fmt):
    out = tmp_path / "export"
    result = export_run(evolved, out, fmt=fmt)
    stats = read_json(evolved / "evolve" / "stats.json")
    assert list(result["configs"]) == ["C0", "C1", "C2", TREE]

    for k in range(3):
        expected = read_jsonl(evolved / "data" / f"C{k}.jsonl")
        loaded = load(out, f"C{k}", tmp_path)
        assert loaded.features == training_features()
        assert [dict(row) for row in loaded] == expected  # every column, every row, in the file's order
        assert len(expected) == stats["rounds"][k]["training_set_size"]
        if fmt == "parquet":  # the schema travels in the file, not only in the card
            assert pq.read_schema(out / f"C{k}" / "train.parquet").metadata[b"huggingface"]
    assert len(load(out, None, tmp_path)) == len(read_jsonl(evolved / "data" / "C2.jsonl"))  # the default: C2

    tree = load(out, TREE, tmp_path)
    assert tree.features == tree_features()
    records = list(iter_attempts(evolved))
    assert len(tree) == sum(r["attempted"] for r in stats["rounds"]) == len(records)
    for row, record in zip(tree, records, strict=True):
        assert (row["id"], row["parent_id"], row["round"], row["operation"]) == (
            record.id,
            record.parent_id,
            record.round,
            record.operation,
        )
        assert (row["instruction"], row["response"], row["verdict"]) == (
            record.instruction,
            record.response,
            record.verdict,
        )
        assert row["kept"] == (row["status"] == "kept") == (row["elimination_rule"] is None)
    for k, round_stats in enumerate(stats["rounds"]):
        rows = [row for row in tree if row["round"] == k]
        assert sum(row["kept"] for row in rows) == round_stats["kept"]
        assert {rule: sum(row["elimination_rule"] == rule for row in rows) for rule in RULES} == round_stats[
            "eliminated"
        ]
    # the scripted run provokes every rule but the context limit and stop words; the matches point somewhere real
    fired = {row["elimination_rule"] for row in tree} - {None}
    assert {"no_information_gain", "copied_prompt_words", "refusal_short", "near_duplicate", "contaminated"} <= fired
    kept_ids = {row["id"] for row in tree if row["kept"]}
    for row in tree:
        if row["elimination_rule"] == "near_duplicate":
            assert row["elimination_match"] in kept_ids
        elif row["elimination_rule"] == "contaminated":
            assert row["elimination_match"] == "0"  # the test item's idx
        else:
            assert row["elimination_match"] is None


def test_the_rows_are_what_trl_takes_as_they_are(evolved, tmp_path):
    from trl.data_utils import is_conversational

    export_run(evolved, tmp_path / "export")
    rows = load(tmp_path / "export", "C2", tmp_path)
    assert all(is_conversational(row) for row in rows)
    assert [m["role"] for m in rows[0]["messages"]] == ["user", "assistant"]


def test_the_card_header_and_provenance_match_the_run(evolved, tmp_path):
    out = tmp_path / "export"
    result = export_run(evolved, out)
    meta, body = header(out)
    stats = read_json(evolved / "evolve" / "stats.json")
    manifest = read_json(evolved / "evolve" / "manifest.json")

    assert "license" in meta and meta["license"] is None  # left for the user, with a comment
    assert "# fill in" in (out / "README.md").read_text().splitlines()[1]
    assert meta["task_categories"] == ["text-generation"]
    assert meta["size_categories"] == ["n<1K"]
    assert [c["config_name"] for c in meta["configs"]] == ["C0", "C1", "C2", TREE]
    assert [c.get("default", False) for c in meta["configs"]] == [False, False, True, False]
    for config in meta["configs"]:
        assert (out / config["data_files"][0]["path"]).is_file()
    infos = {info["config_name"]: info for info in meta["dataset_info"]}
    for name, written in result["configs"].items():
        assert infos[name]["splits"][0]["num_examples"] == written["rows"]
        assert infos[name]["download_size"] == (out / written["path"]).stat().st_size
    assert [f["name"] for f in infos[TREE]["features"]] == list(TREE_FIELDS)

    for role, (name, content_hash) in manifest["inputs"]["models"].items():
        assert f"| {role} | `{name}` | `{content_hash}` |" in body
    for rule, count in stats["evolution_totals"]["eliminated"].items():
        assert f"| `{rule}` | {count} |" in body
    for k, round_stats in enumerate(stats["rounds"]):
        assert f"| {k} | {round_stats['attempted']} | {round_stats['kept']} |" in body
    assert f"git `{manifest['git_sha']}`" in body
    assert "dedup_threshold: 0.85" in body  # the resolved config (from the evolve manifest: no config.yaml here)


def test_the_vocabulary_covers_the_records():
    """A new rule, tree column or training column fails here until the card and the schema know it."""
    assert set(RULE_MEANINGS) == set(RULES)
    assert list(TREE_COLUMNS) == list(TREE_FIELDS)
    seed = RoundRecord(id="s", parent_id=None, root_id="s", round=0, operation="seed", instruction="i", response="r")
    assert set(training_features()) == set(seed.training_row())
    # every field of a round record but its token counts and sampling seeds, plus two derived columns
    record_fields = {f.name for f in fields(RoundRecord)} - {"tokens", "seeds"}
    assert set(TREE_FIELDS) == record_fields | {"kept", "elimination_match"}


def test_matches_are_read_from_every_detail_dedup_writes():
    near = NearDuplicates(threshold=0.5, shingle_chars=5, permutations=64)
    assert near.check_and_add("a@r1", "Write a long poem about the sea at night.") is None
    details = [
        ("near_duplicate", near.check_and_add("b@r1", "write a long poem about the sea at night"), "a@r1"),
        ("near_duplicate", near.check_and_add("c@r1", "Write a long poem about the sea at night, please."), "a@r1"),
    ]
    tests = TestSetFilter([("q 7", TEST_INSTRUCTION)], ngram=8, threshold=0.5, shingle_chars=5, permutations=64)
    details += [
        ("contaminated", tests.overlap("Please " + TEST_INSTRUCTION), "q 7"),
        ("contaminated", tests.overlap("Describe the water cycle in four step for a kid."), "q 7"),
    ]
    assert "similarity" in details[1][1] and "similarity" in details[3][1]  # both kinds of each are covered
    for rule, detail, match in details:
        record = RoundRecord(
            id="x", parent_id=None, root_id="x", round=1, operation="deepen", instruction="i", response=None
        )
        record.eliminate(rule, detail)
        assert elimination_match(record) == match, detail


def test_size_categories():
    assert [size_category(n) for n in (0, 999, 1000, 52_000, 260_000)] == [
        "n<1K",
        "n<1K",
        "1K<n<10K",
        "10K<n<100K",
        "100K<n<1M",
    ]


# ---------------------------------------------------------------- the command and bad inputs


def run_cli(*args):
    result = CliRunner().invoke(main, ["export", *map(str, args)])
    return result.exit_code, result.output.strip()


def test_the_command_and_force_replace_only_an_exports_files(evolved, tmp_path):
    out = tmp_path / "export"
    code, output = run_cli(evolved, "--out", out)
    assert code == 0 and "C2 " in output and "evolution_tree" in output

    (out / "notes.txt").write_text("mine")
    (out / "C1" / "mine.txt").write_text("mine too")
    code, output = run_cli(evolved, "--out", out, "--format", "jsonl")
    assert code == 2 and output.count("\n") == 0 and "not empty" in output and "--force" in output

    code, output = run_cli(evolved, "--out", out, "--format", "jsonl", "--force")
    assert code == 0, output
    assert not list(out.rglob("*.parquet"))  # the earlier export's files went
    assert (out / "notes.txt").read_text() == "mine" and (out / "C1" / "mine.txt").read_text() == "mine too"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jsonl")) == [
        "C0/train.jsonl",
        "C1/train.jsonl",
        "C2/train.jsonl",
        f"{TREE}/train.jsonl",
    ]
    meta, _ = header(out)
    assert [c["data_files"][0]["path"] for c in meta["configs"]][-1] == f"{TREE}/train.jsonl"


def broken_copy(evolved, tmp_path, *remove):
    run = tmp_path / "run"
    shutil.copytree(evolved, run)
    for name in remove:
        (run / name).unlink()
    return run


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda evolved, tmp: tmp, "is not a run directory"),
        (lambda evolved, tmp: broken_copy(evolved, tmp, "data/C0.jsonl"), "is not a run directory"),
        (lambda evolved, tmp: broken_copy(evolved, tmp, "evolve/manifest.json"), "has not finished"),
        (lambda evolved, tmp: broken_copy(evolved, tmp, "data/C2.jsonl"), "C2.jsonl is missing"),
        (lambda evolved, tmp: tmp / "nowhere", "no such run directory"),
    ],
)
def test_not_a_finished_run_is_one_sentence(evolved, tmp_path, make, expected):
    (tmp_path / "some.txt").write_text("x")
    run = make(evolved, tmp_path)
    code, output = run_cli(run, "--out", tmp_path / "out")
    assert code == 2 and output.count("\n") == 0 and expected in output, output
    assert not (tmp_path / "out").exists()  # nothing written before the checks pass


def test_a_changed_training_file_is_named(evolved, tmp_path):
    run = broken_copy(evolved, tmp_path)
    path = run / "data" / "C1.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines + [lines[0]]) + "\n")
    code, output = run_cli(run, "--out", tmp_path / "out")
    assert code == 2 and f"has {len(lines) + 1} rows but evolve/manifest.json says {len(lines)}" in output

    path.write_text("\n".join(['{"id": "x", "round": 0}'] + lines[1:]) + "\n")
    code, output = run_cli(run, "--out", tmp_path / "out", "--force")
    assert code == 2 and f"{path}:1:" in output and "not a C<k> training row" in output
    assert not (tmp_path / "out" / "README.md").exists()  # no card: the export did not finish


def test_a_round_file_beyond_rounds_done_is_left_out(evolved, tmp_path):
    """An earlier, longer evolution can leave round_3.jsonl behind; the tree holds rounds 0..rounds_done."""
    run = broken_copy(evolved, tmp_path)
    shutil.copy(run / "evolve" / "round_2.jsonl", run / "evolve" / "round_3.jsonl")
    result = export_run(run, tmp_path / "out")
    assert list(result["configs"]) == ["C0", "C1", "C2", TREE]
    assert result["configs"][TREE]["rows"] == sum(
        r["attempted"] for r in read_json(run / "evolve" / "stats.json")["rounds"]
    )
