"""Report building from judge directories on disk, and the eval commands' error handling."""

import base64
import re

import pytest
from click.testing import CliRunner

from eval.judge import judge_pairs
from eval.report.evaluation import Section, build_report, find_judge_dirs
from pipeline.cli import main
from pipeline.config import Config
from pipeline.core.jsonio import InputError, read_json
from pipeline.engine.fake import FakeEngine
from tests.conftest import ITEMS, scripted_judge, write_answers, write_lines


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "run"
    base = write_answers(run / "answers" / "base", "base", {"1": "bad", "2": "good blue", "3": "bad"}, ITEMS)
    for label, answers in (
        ("C1", {"1": "good", "2": "good", "3": "good"}),
        ("C2", {"1": "bad", "2": "bad", "3": "x"}),
    ):
        a = write_answers(run / "answers" / label, label, answers, ITEMS)
        judge_pairs(Config(), [(a, base)], run / "judge", "fake-judge", engine=FakeEngine(scripted_judge))
    return run


def test_report_over_several_comparisons_with_extra_section(run_dir, tmp_path):
    dirs, out = find_judge_dirs(run_dir)
    assert [d.name for d in dirs] == ["C1__vs__base", "C2__vs__base"] and out == run_dir
    extra_png = run_dir / "plots" / "win_tie_lose.png"
    paths = build_report(dirs, out)  # first build makes a PNG to reuse as the "extra" image below
    extra = Section(
        "Ablation over rounds", paragraphs=["capacity grows with rounds"], images=[(extra_png, "ablation curve")]
    )
    paths = build_report(dirs, out, extra_sections=[extra])
    md = paths["md"].read_text()
    assert "C1 vs base" in md and "C2 vs base" in md and "Ablation over rounds" in md
    assert "![Win / tie / lose per comparison](plots/win_tie_lose.png)" in md
    for name in ("win_tie_lose", "win_rate_by_difficulty", "capacity_per_skill_C1__vs__base"):
        assert (run_dir / "plots" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    page = paths["html"].read_text()
    images = re.findall(r"src='data:image/png;base64,([^']+)'", page)
    assert len(images) == 5 and all(base64.b64decode(i)[:4] == b"\x89PNG" for i in images)
    assert "src='plots/" not in page  # self-contained: nothing linked
    report = read_json(paths["json"])
    assert [c["a"] for c in report["comparisons"]] == ["C1", "C2"]
    assert "I cannot decide." in md  # raw judge text of an unparseable verdict is visible


def test_report_command_on_a_judge_dir_and_on_nonsense(run_dir, tmp_path):
    runner = CliRunner()
    judge_dir = run_dir / "judge" / "C1__vs__base"
    result = runner.invoke(main, ["report", str(judge_dir)])
    assert result.exit_code == 0, result.output
    assert (judge_dir / "report.html").is_file() and (judge_dir / "plots" / "win_tie_lose.png").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(main, ["report", str(empty)])
    assert result.exit_code == 2 and "run `evol judge` first" in result.output
    with pytest.raises(InputError):
        find_judge_dirs(empty)


def test_answer_and_judge_commands_fail_cleanly_before_loading_a_model(tmp_path, monkeypatch):
    monkeypatch.setenv("EVOL_MODELS_DIR", str(tmp_path / "store"))
    runner = CliRunner()
    result = runner.invoke(main, ["answer", "--model", str(tmp_path / "none"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "neither a local model directory" in result.output
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "chat_template.jinja").write_text("{{ messages }}")  # a chat model: it may judge
    result = runner.invoke(main, ["answer", "--model", str(model), "--adapter", "C1", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "LABEL=PATH" in result.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"idx": 1}\n')
    result = runner.invoke(
        main, ["answer", "--model", str(model), "--testset", str(bad), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2 and "bad.jsonl:1: missing field" in result.output
    result = runner.invoke(
        main,
        [
            "judge",
            "--answers",
            str(tmp_path),
            "--baseline",
            str(tmp_path),
            "--judge",
            str(model),
            "--out",
            str(tmp_path / "j"),
        ],
    )
    assert result.exit_code == 2 and "no answers.jsonl" in result.output


def test_report_command_on_a_run_keeps_the_run_stage_ablation(run_dir):
    from pipeline.config import load_config, to_yaml

    (run_dir / "config.yaml").write_text(to_yaml(load_config(None, ["run.rounds=[1,2]"])))
    (run_dir / "data").mkdir()
    write_lines(run_dir / "data" / "C1.jsonl", [{"id": "s0", "round": 0}, {"id": "s1@r1", "round": 1}])
    result = CliRunner().invoke(main, ["report", str(run_dir)])
    assert result.exit_code == 0, result.output
    report = read_json(run_dir / "report.json")
    assert [c["a"] for c in report["comparisons"]] == ["C1", "C2"]
    # the ablation rows follow the run's config, counted from its training sets
    assert [(r["label"], r["training_rows"], r["evolved_share"]) for r in report["ablation"]] == [
        ("C1", 2, 0.5),
        ("C2", 0, None),
    ]
    md = (run_dir / "report.md").read_text()
    assert "Ablation over evolution rounds" in md
    # train.method is the fine-tune's; the evolving method is evolve.method's (no evolution here: the operations)
    assert "with the hand-written operations, base" in md and "fine-tune lora." in md and "method lora" not in md
    assert re.search(r"^\| 1 \| 2 \| 50\.0% \| - \|", md, re.M)  # rounds, rows, evolved share, no kept rate


def test_comparisons_show_the_length_controlled_win_rate_beside_the_raw_one(run_dir):
    scores = read_json(run_dir / "judge" / "C1__vs__base" / "scores.json")
    lc = scores["overall"]["length_controlled"]
    # C1 wins items 1 and 3 and ties item 2; the fixture's answers have no token counts
    assert lc["n"] == 3 and lc["unit"] == "characters" and lc["raw_win_rate"] == round(2.5 / 3, 4)
    dirs, out = find_judge_dirs(run_dir)
    md = build_report(dirs, out)["md"].read_text()
    header = next(line for line in md.splitlines() if line.startswith("| A | B (baseline)"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    at = columns.index("win rate [95% CI]")
    assert columns[at + 1 : at + 3] == ["win rate, ties half [95% CI]", "length-controlled win rate [95% CI]"]
    row = next(line for line in md.splitlines() if line.startswith("| C1 | base |"))
    assert row.split("|")[1 + at + 1].strip().startswith("83.3% [")
    line = next(line for line in md.splitlines() if line.startswith("Length control, C1 vs base:"))
    assert "differ from B's by -1.0 characters on average (A minus B; the answers carry no token counts)" in line
    assert re.search(r"length explains [+-]\d+\.\d points \[95% CI [-\d.]+, [-\d.]+\] of the win rate", line)
    assert re.search(r"\(ties half\): 83\.3% \[[\d.]+, [\d.]+\] raw, \d+\.\d% \[[\d.]+, [\d.]+\] at equal", line)


def test_run_report_ranks_every_model_and_plots_strength_and_lc_per_round(run_dir):
    from eval.report.ablation import ablation_rows, plot_ablation, round_panels, run_strengths
    from eval.report.plots import RoundPanel, RoundSeries
    from eval.scores import Aggregation
    from pipeline.config import load_config, to_yaml

    (run_dir / "config.yaml").write_text(to_yaml(load_config(None, ["run.rounds=[1,2]"])))
    result = CliRunner().invoke(main, ["report", str(run_dir)])
    assert result.exit_code == 0, result.output
    bt = read_json(run_dir / "report.json")["bradley_terry"]
    assert bt["fixed"] == "base" and bt["items"] == 3 and bt["verdicts"] == 6
    models = bt["models"]
    assert models["base"]["strength"] == 0.0 and models["C1"]["strength"] > 0 > models["C2"]["strength"]
    md = (run_dir / "report.md").read_text()
    assert re.search(
        r"^\| base \(fixed\) \| \+0\.00 \[\+0\.00, \+0\.00\] \| 50\.0% \[50\.0, 50\.0\] \| 6 \|$", md, re.M
    )
    assert re.search(r"^\| C1 \| \+\d\.\d\d \[", md, re.M) and "Bradley-Terry strengths: one ranking" in md

    settings = Aggregation(resamples=50, seed=1)
    rows = ablation_rows(run_dir, [1, 2], settings)
    strengths = run_strengths(run_dir, settings)
    panels = round_panels(rows, strengths)
    assert [p.title.split(" (")[0].split(",")[0] for p in panels] == [
        "Capacity",
        "Win rate",
        "Length-controlled win rate",
        "Bradley-Terry strength",
    ]
    assert set(panels[3].series[0].points) == {1, 2}
    assert panels[3].series[0].points[1][0] == strengths["models"]["C1"]["strength"]
    # one more measure is one more panel, not a rewrite
    extra = RoundPanel("Verified accuracy", "%", [RoundSeries("strict", {1: (40.0, [30.0, 50.0])})], limits=(0, 100))
    (path, _), *_ = plot_ablation(rows, [], run_dir / "plots", strengths, extra_panels=[extra])
    assert path.read_bytes()[:4] == b"\x89PNG"
