"""BENCHMARKS.md has one writer (benchmarks/report.py write_markdown): the sections `evol bench`
measures, then every kept section of benchmarks/sections/ in file-name order, so neither a bench
rewrite nor a soak rewrite loses the other's sections or the hand-written ones."""

import json

from benchmarks import soak
from benchmarks.report import SECTIONS, kept_sections, write_markdown


def test_every_kept_section_follows_the_generated_part_in_file_name_order(tmp_path, monkeypatch):
    sections = tmp_path / "sections"
    sections.mkdir()
    (sections / "20-b.md").write_text("## B\n\nby hand\n")
    (sections / "10-a.md").write_text("## A\n\nalso by hand\n")
    (sections / "notes.txt").write_text("not a section")
    monkeypatch.setattr(
        "benchmarks.report.render_markdown", lambda results: f"# Benchmarks\n\n{results['n']} numbers\n"
    )
    path = tmp_path / "BENCHMARKS.md"
    write_markdown(path, {"n": 7}, sections)
    text = path.read_text()
    assert text == "# Benchmarks\n\n7 numbers\n\n## A\n\nalso by hand\n\n## B\n\nby hand\n"
    write_markdown(path, {"n": 8}, sections)  # a rewrite replaces the numbers and keeps both sections once
    assert (
        path.read_text().count("## A") == 1 and "8 numbers" in path.read_text() and "7 numbers" not in path.read_text()
    )
    write_markdown(path, None, tmp_path / "none")  # nothing measured, nothing kept: a title only
    assert path.read_text() == "# Benchmarks\n"


def test_a_soak_rewrites_its_section_file_and_keeps_the_bench_numbers(tmp_path, monkeypatch):
    sections = tmp_path / "sections"
    sections.mkdir()
    (sections / "20-answering.md").write_text("## Answering\n\nby hand\n")
    monkeypatch.setattr(soak, "ROOT", tmp_path)
    monkeypatch.setattr(soak, "render_section", lambda results: f"## Soak\n\n{results['kills']} kills\n")
    monkeypatch.setattr(
        "benchmarks.report.render_markdown", lambda results: f"# Benchmarks\n\n{results['n']} numbers\n"
    )
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "results.json").write_text(json.dumps({"n": 3}))
    markdown = tmp_path / "BENCHMARKS.md"
    soak.write_section({"kills": 12}, sections / "40-soak.md", markdown)
    soak.write_section({"kills": 14}, sections / "40-soak.md", markdown)
    text = markdown.read_text()
    assert text == "# Benchmarks\n\n3 numbers\n\n## Answering\n\nby hand\n\n## Soak\n\n14 kills\n"


def test_the_shipped_sections_are_markdown_sections():
    texts = kept_sections(SECTIONS)
    assert len(texts) >= 3 and all(t.startswith("## ") for t in texts)
