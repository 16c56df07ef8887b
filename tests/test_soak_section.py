"""BENCHMARKS.md has one writer (benchmarks/report.py write_markdown), which `evol bench`, the soak and
`python -m benchmarks.report` all call: every row from benchmarks/results.json, benchmarks/soak_results.json
and benchmarks/figures.toml, each naming the commit and command that measured it, so no rewrite loses
a row and the shipped page is exactly what the files make."""

import json

import pytest

from benchmarks import report, soak
from benchmarks.report import (
    FIGURES,
    PAGE,
    RESULTS,
    SOAK_RESULTS,
    TOPICS,
    load_figures,
    main,
    render_markdown,
    write_markdown,
)
from pipeline.core.jsonio import InputError

ENTRY = """
[[figure]]
topic = "instrument"
figure = "IFEval prompt-level strict, C2 - C0 (541 prompts)"
value = "+1.2 points [-0.5, +2.9]"
commit = "abcdef0"
date = "2026-12-08"
command = "evol run --config configs/tiny.yaml --set run.name=ablation175"
"""


def rows_under(markdown: str, heading: str) -> list[list[str]]:
    """The cells of every row of the table under `## heading`."""
    lines = markdown.splitlines()
    start = lines.index(f"## {heading}")
    rows = []
    for line in lines[start + 1 :]:
        if line.startswith("## "):
            break
        if line.startswith("| ") and not line.startswith("| Figure"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
    return rows


def soak_results(sha: str = "0123456789abcdef") -> dict:
    return {
        "config": "configs/tiny.yaml",
        "measured": {"date": "2026-12-08T10:00:00+00:00", "git_sha": sha},
        "commands": ["python -m benchmarks.soak --runs 1 --seed 7"],
        "summary": {
            "kills_per_stage": {"train": 2, "evolve": 1},
            "kills": 3,
            "runs": 1,
            "runs_results_identical": 1,
            "missing_files": 0,
            "duplicated_ids": 0,
        },
    }


def test_the_shipped_page_is_what_the_writer_makes_of_the_shipped_files():
    results = json.loads(RESULTS.read_text())
    soak_file = json.loads(SOAK_RESULTS.read_text())
    assert PAGE.read_text() == render_markdown(results, load_figures(FIGURES), soak_file), (
        "BENCHMARKS.md is edited by hand or stale: run `python -m benchmarks.report`"
    )
    assert main(["--check"]) == 0


def test_every_figure_of_the_figures_file_is_a_row_of_its_topic_with_its_commit_and_command():
    page = PAGE.read_text()
    figures = load_figures(FIGURES)["figures"]
    assert len(figures) >= 40
    for entry in figures:
        rows = [row for row in rows_under(page, TOPICS[entry["topic"]]) if row[0] == entry["figure"]]
        assert len(rows) == 1, entry["figure"]
        _, value, target, measured, command = rows[0]
        assert value.startswith(entry["value"]) and measured == f"{entry['commit']}, {entry['date']}"
        assert entry["command"] in command, entry["figure"]
        assert target == (entry["target"] or "-")


def test_the_page_opens_with_its_command_and_has_every_topic_of_its_files():
    page = PAGE.read_text()
    assert "`python -m benchmarks.report` rebuilds this page" in page.split("\n## ")[0]
    headings = [line[3:] for line in page.splitlines() if line.startswith("## ")]
    assert headings == [heading for heading in TOPICS.values() if heading in headings]  # in TOPICS order
    assert {"Evolve throughput vs the raw engine", "Soak: `evol run` killed at random moments"} <= set(headings)
    assert not (FIGURES.parent / "sections").exists()  # the figures moved to figures.toml


def test_a_new_figure_is_one_entry_and_one_row_under_its_topic(tmp_path):
    figures = tmp_path / "figures.toml"
    figures.write_text('machine = "a test box"\n' + ENTRY)
    page = tmp_path / "BENCHMARKS.md"
    write_markdown(page, None, figures, tmp_path / "no-soak.json")
    rows = rows_under(page.read_text(), TOPICS["instrument"])
    assert rows == [
        [
            "IFEval prompt-level strict, C2 - C0 (541 prompts)",
            "+1.2 points [-0.5, +2.9]",
            "-",
            "abcdef0, 2026-12-08",
            "`evol run --config configs/tiny.yaml --set run.name=ablation175`",
        ]
    ]
    assert "a test box" in page.read_text() and "## Soak" not in page.read_text()
    figures.write_text(figures.read_text() + ENTRY.replace("C2 - C0", "C1 - C0").replace('"abcdef0"', '"1234567"'))
    write_markdown(page, None, figures, tmp_path / "no-soak.json")  # a rewrite: both rows once, in file order
    rows = rows_under(page.read_text(), TOPICS["instrument"])
    assert [row[0] for row in rows] == [
        "IFEval prompt-level strict, C2 - C0 (541 prompts)",
        "IFEval prompt-level strict, C1 - C0 (541 prompts)",
    ]
    assert rows[1][3] == "1234567, 2026-12-08"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('topic = "instrument"', 'topic = "instruments"'), "unknown topic 'instruments'; the topics are throughput"),
        (('commit = "abcdef0"', 'commit = "abcdef0123"'), "commit 'abcdef0123' is not 7 hex characters"),
        (('date = "2026-12-08"', 'date = "8 Dec"'), "date '8 Dec' is not YYYY-MM-DD"),
        (('command = "evol run', 'commnd = "evol run'), r"unknown field\(s\) \['commnd'\]"),
        (('value = "+1.2 points [-0.5, +2.9]"\n', ""), "missing value"),
    ],
)
def test_a_bad_entry_is_named_with_what_is_wrong(tmp_path, change, message):
    figures = tmp_path / "figures.toml"
    figures.write_text(ENTRY.replace(*change))
    with pytest.raises(InputError, match=message):
        load_figures(figures)
    assert main(["--figures", str(figures), "--out", str(tmp_path / "page.md")]) == 2
    assert not (tmp_path / "page.md").exists()


def test_a_toml_date_reads_as_the_day(tmp_path):
    figures = tmp_path / "figures.toml"
    figures.write_text(ENTRY.replace('date = "2026-12-08"', "date = 2026-12-08"))
    assert load_figures(figures)["figures"][0]["date"] == "2026-12-08"


def test_the_soak_rewrites_the_page_with_its_rows_and_keeps_the_others(tmp_path, monkeypatch):
    monkeypatch.setattr(soak, "ROOT", tmp_path)
    monkeypatch.setattr(
        report,
        "bench_rows",
        lambda results: [
            dict.fromkeys(report.FIELDS)
            | {"topic": "bench", "figure": "a bench figure", "value": str(results["n"]), "commit": "abc1234"}
            | {"date": "2026-01-01", "command": "evol bench --only resume"}
        ],
    )
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "results.json").write_text(json.dumps({"n": 3}))
    markdown, saved = tmp_path / "BENCHMARKS.md", tmp_path / "benchmarks" / "soak_results.json"
    soak.write_results(soak_results("fedcba9876"), saved, markdown)
    soak.write_results(soak_results(), saved, markdown)  # a second soak replaces the first one's rows
    text = markdown.read_text()
    assert json.loads(saved.read_text())["measured"]["git_sha"] == "0123456789abcdef"
    kills, identical = rows_under(text, TOPICS["soak"])
    assert kills[1] == "3 in 1 runs (evolve 1, train 2)" and kills[3] == "0123456, 2026-12-08"
    assert kills[4] == "`python -m benchmarks.soak --runs 1 --seed 7`"
    assert identical[1:3] == ["1 of 1; files missing: 0; ids duplicated: 0", "all (met)"]
    assert "fedcba9" not in text
    assert rows_under(text, TOPICS["bench"]) == [
        ["a bench figure", "3", "-", "abc1234, 2026-01-01", "`evol bench --only resume`"]
    ]
    assert rows_under(text, TOPICS["tiny run"])  # the figures file's rows are kept


def test_the_entry_point_rebuilds_the_page_and_check_says_when_it_is_stale(tmp_path, capsys):
    figures, page = tmp_path / "figures.toml", tmp_path / "BENCHMARKS.md"
    figures.write_text(ENTRY)
    common = ["--results", str(tmp_path / "none.json"), "--soak", str(tmp_path / "none.json")]
    common += ["--figures", str(figures), "--out", str(page)]
    assert main([*common, "--check"]) == 1 and "run `python -m benchmarks.report`" in capsys.readouterr().err
    assert main(common) == 0 and "abcdef0, 2026-12-08" in page.read_text()
    assert main([*common, "--check"]) == 0
    page.write_text(page.read_text().replace("+1.2 points", "+9.9 points"))  # a hand edit
    assert main([*common, "--check"]) == 1
