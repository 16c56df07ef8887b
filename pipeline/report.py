"""The run report: the ablation over round counts, every comparison and the analysis, in one place.

    evol report runs/tiny          # rebuilds it from the files on disk
    (evol run writes runs/<name>/report.json, report.md and report.html through write_run_report)

Each section is built by its stage's report module under eval/report/ (evaluation.py for the
comparisons, ablation.py for the rows over rounds, analysis.py for complexity and diversity); this
file only joins them.
"""

from __future__ import annotations

from pathlib import Path

from eval.report.ablation import ablation_rows, plot_ablation, survival
from eval.report.analysis import analysis_report_json, analysis_section
from eval.report.evaluation import Section, build_report, find_judge_dirs
from pipeline.config import Config
from pipeline.core import fmt
from pipeline.core.jsonio import read_json, write_json


def _fmt(block: dict | None, key: str, pct: bool = False) -> str:
    value = (block or {}).get(key)
    return fmt.pct(value) if pct else fmt.num(value)


def write_run_report(run_dir: Path, config: Config) -> Path:
    """report.json (ablation rows, survival, every comparison) and report.md/html with the plots."""
    rows = ablation_rows(run_dir, config.run.rounds)
    survival_rows = survival(run_dir)
    images = plot_ablation(rows, survival_rows, run_dir / "plots")
    header = [
        "rounds",
        "train rows",
        "evolved share",
        "kept rate of round",
        "W/T/L vs C0",
        "capacity vs C0",
        "W/T/L vs reference",
        "capacity vs reference",
        "high-difficulty win rate vs reference",
    ]
    table = []
    for r in rows:
        c0, ref = r["vs_C0"], r["vs_reference"]
        table.append(
            [
                r["rounds"],
                r["training_rows"],
                _fmt(r, "evolved_share", pct=True),
                _fmt(r, "kept_rate_of_round", pct=True),
                f"{c0['win']}/{c0['tie']}/{c0['lose']}" if c0 else fmt.MISSING,
                _fmt(c0, "capacity_pct"),
                f"{ref['win']}/{ref['tie']}/{ref['lose']}" if ref else fmt.MISSING,
                _fmt(ref, "capacity_pct"),
                _fmt(ref, "high_difficulty_win_rate", pct=True),
            ]
        )
    section = Section(
        title="Ablation over evolution rounds",
        paragraphs=[
            f"Run {run_dir.name}: evolver {config.models.evolver}, base {config.models.base}, "
            f"judge {config.models.judge}, method {config.train.method}. Each C<k> is the seeds plus the "
            f"evolutions kept in rounds 1..k of one evolution; each model was fine-tuned on one C<k>."
        ],
        tables=[(header, table)],
        images=images,
    )
    judge_dirs, _ = find_judge_dirs(run_dir)
    analysis = analysis_section(run_dir)
    build_report(judge_dirs, run_dir, extra_sections=[section] + ([analysis] if analysis else []))
    # eval's report.json describes the comparisons; the run adds its ablation and survival rows.
    report_json = run_dir / "report.json"
    report = read_json(report_json) if report_json.is_file() else {}
    report.update({"run": run_dir.name, "ablation": rows, "survival": survival_rows, **analysis_report_json(run_dir)})
    write_json(report_json, report)
    return run_dir / "report.md"
