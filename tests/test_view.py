"""`evol view` without a browser, on a small run evolved with the scripted fake engines of conftest (a
twin seed, a contaminated one and a hostile one, so every kind of elimination and of dangerous text
is in it): the page's data counts what stats.json counts, its links point where the records point,
model text cannot end the data block or become markup, and a folder that is not a run is one
sentence. tests/test_view_browser.py loads the page in Chromium."""

import base64
import hashlib
import json
import re
import shutil

import pytest
from click.testing import CliRunner

from eval.judge import judge_pairs
from evolve_local.evolve import run_evolve
from pipeline.cli import main
from pipeline.config import Config
from pipeline.core.jsonio import read_json, write_json
from pipeline.core.records import KEPT, iter_attempts
from pipeline.engine.fake import FakeEngine
from pipeline.report import write_run_report
from pipeline.view import VIEW_FILE, count_differences, data_counts, stats_counts, view_data, write_viewer
from tests.conftest import ITEMS, SEEDS, Factory, make_config, scripted_judge, write_answers, write_seeds

TEST_INSTRUCTION = "Describe the water cycle in four steps for a child."
HOSTILE = (
    'Explain </script><script>window.pwned = 1</script><img src=x onerror="window.pwned = 2"> '
    "and <!-- a comment, & entities &amp; \u2028 line \u2029 paragraph separators </SCRIPT >"
)
# A twin of s0 (near_duplicate), a test item with a tail (contaminated), the hostile text, and enough
# plain seeds for the page to need more than one page of 50 rows.
MORE_SEEDS = [
    "Explain how tides work!",
    TEST_INSTRUCTION + " Keep it short.",
    HOSTILE,
    *(f"Plan task number {i} about {word} for a beginner." for i, word in enumerate(["orbit", "quartz"] * 15)),
]


@pytest.fixture(scope="module")
def evolved(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evolved")
    config = make_config(tmp, rounds=2, seeds=write_seeds(tmp, SEEDS + MORE_SEEDS))
    run_evolve(config, tmp / "run", Factory().models, quiet=True)
    return tmp / "run"


@pytest.fixture
def run_copy(evolved, tmp_path):
    shutil.copytree(evolved, tmp_path / "run")
    return tmp_path / "run"


def embedded(page: str) -> dict:
    block = re.search(r'<script type="application/json" id="evol-data">(.*?)</script>', page, re.S)
    return json.loads(block.group(1))


# ---------------------------------------------------------------- the data


def test_the_data_counts_what_stats_json_counts(evolved):
    data = view_data(evolved)
    stats = read_json(evolved / "evolve" / "stats.json")
    records = list(iter_attempts(evolved))
    assert len(data["id"]) == len(records) == sum(r["attempted"] for r in stats["rounds"])
    # the fixture has teeth: kept and eliminated items, and several rules, in both evolution rounds
    mine = data_counts(data)
    assert [c["round"] for c in mine] == [0, 1, 2]
    fired = {rule for c in mine for rule, n in c["eliminated"].items() if n}
    assert {"near_duplicate", "contaminated", "no_information_gain", "refusal_short"} <= fired
    for here, theirs in zip(mine, stats["rounds"], strict=True):
        assert (here["attempted"], here["kept"]) == (theirs["attempted"], theirs["kept"])
        assert here["eliminated"] == theirs["eliminated"]
        assert here["operations"] == {op: n for op, n in theirs["operations"].items() if n}
    assert data["stats"] == stats_counts(stats)
    assert count_differences(data) == []


def test_a_count_that_differs_from_stats_json_is_named(run_copy):
    path = run_copy / "evolve" / "stats.json"
    stats = read_json(path)
    stats["rounds"][1]["kept"] += 1
    stats["rounds"][2]["eliminated"]["no_information_gain"] += 2
    write_json(path, stats)
    differ = count_differences(view_data(run_copy))
    assert len(differ) == 2
    assert differ[0].startswith("round 1 kept: ") and differ[0].endswith(" in stats.json")
    assert differ[1].startswith("round 2 no_information_gain: ")


def test_each_row_links_to_the_records_parent_and_match(evolved):
    data = view_data(evolved)
    records = list(iter_attempts(evolved))
    ids = [r.id for r in records]
    assert data["id"] == ids
    matched = 0
    for row, record in enumerate(records):
        assert data["round"][row] == record.round and data["ins"][row] == record.instruction
        parent = data["parent"][row]
        assert (ids[parent] if parent >= 0 else None) == record.parent_id
        assert (data["rule"][row] < 0) == (record.status == KEPT)
        if not record.kept:
            assert data["rules"][data["rule"][row]] == record.elimination_rule
        if record.elimination_rule == "near_duplicate":
            assert data["match"][row] in ids  # the kept twin is an item of the page
            matched += 1
        if record.elimination_rule == "contaminated":
            assert data["match"][row] is not None and data["match"][row] not in ids  # a test item's id
            matched += 1
        if record.verdict_text is not None:
            assert data["vocab"]["vtext"][data["vtext"][row]] == record.verdict_text
    assert matched >= 2
    assert not data["orphans"]


# ---------------------------------------------------------------- the page


def test_model_text_cannot_end_the_data_block_or_become_markup(run_copy):
    write_viewer(run_copy)
    page = (run_copy / VIEW_FILE).read_text(encoding="utf-8")
    # The page's own two script elements are the only ones: nothing in the data closes one early.
    assert len(re.findall(r"</script", page, re.I)) == 2
    assert len(re.findall(r"<script", page, re.I)) == 2
    assert "\u2028" not in page and "\u2029" not in page and "<!--" not in page.split("<body>", 1)[1]
    assert "window.pwned" in page and "<img" not in page
    data = embedded(page)
    hostile = [text for text in data["ins"] if "window.pwned" in text]
    assert hostile and hostile[0] == HOSTILE  # the text comes back exactly, as data


def test_only_the_pages_own_script_may_run_and_nothing_is_fetched(run_copy):
    write_viewer(run_copy)
    page = (run_copy / VIEW_FILE).read_text(encoding="utf-8")
    script = page.split("<script id='viewer'>", 1)[1].split("</script>", 1)[0]
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    policy = re.search(r'content="(default-src[^"]*)"', page).group(1)
    assert f"script-src 'sha256-{digest}'" in policy and "default-src 'none'" in policy
    outside_data = re.sub(r'(<script type="application/json" id="evol-data">).*?</script>', "", page, flags=re.S)
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", outside_data)
    assert "http://" not in outside_data and "https://" not in outside_data


def test_the_command_writes_the_page_and_says_the_counts_match(run_copy):
    result = CliRunner().invoke(main, ["view", str(run_copy)])
    assert result.exit_code == 0, result.output
    data = view_data(run_copy)
    assert f"{len(data['id'])} attempts of {len(SEEDS) + len(MORE_SEEDS)} seeds over rounds 0-2" in result.output
    assert "every count matches evolve/stats.json" in result.output
    assert embedded((run_copy / VIEW_FILE).read_text(encoding="utf-8"))["id"] == data["id"]


def broken(run_copy, what):
    if what == "no evolve":
        shutil.rmtree(run_copy / "evolve")
    elif what == "no stats":
        (run_copy / "evolve" / "stats.json").unlink()
    elif what == "missing round":
        (run_copy / "evolve" / "round_2.jsonl").unlink()
    return run_copy


@pytest.mark.parametrize(
    "what, expected",
    [
        ("no evolve", "is not a run directory: it has no evolve/round_0.jsonl"),
        ("no stats", "the evolution has not finished (evolve/stats.json is missing)"),
        ("missing round", "rounds_done is 2 but evolve/round_0.jsonl..round_2.jsonl are not all there"),
    ],
)
def test_a_folder_that_is_not_a_finished_run_is_one_sentence(run_copy, what, expected):
    folder = broken(run_copy, what)
    result = CliRunner().invoke(main, ["view", str(folder)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0]
    assert not (folder / VIEW_FILE).exists() and not (folder / f".{VIEW_FILE}.lock").exists()


def test_the_run_report_writes_the_page_and_names_it(run_copy):
    config = Config()
    config.run.rounds = [0, 1]
    config.eval.bootstrap_resamples = 50
    dirs = {
        label: write_answers(run_copy / "answers" / label, label, {i["id"]: "good" for i in ITEMS}, ITEMS)
        for label in ("C0", "C1")
    }
    judge_pairs(config, [(dirs["C1"], dirs["C0"])], run_copy / "judge", "fake-judge", FakeEngine(scripted_judge))
    write_run_report(run_copy, config)
    attempts = len(view_data(run_copy)["id"])
    assert embedded((run_copy / VIEW_FILE).read_text(encoding="utf-8"))["id"][0] == "s0"
    for report in ("report.md", "report.html"):
        assert f"Every one of the {attempts} attempts of the evolution" in (run_copy / report).read_text()
        assert VIEW_FILE in (run_copy / report).read_text()
    # A link in both: markdown's [..](..) and, in the HTML, an anchor that opens the page beside it.
    assert f"[{VIEW_FILE}]({VIEW_FILE})" in (run_copy / "report.md").read_text()
    assert f"<a href='{VIEW_FILE}'>{VIEW_FILE}</a>" in (run_copy / "report.html").read_text()
