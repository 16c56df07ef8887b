"""The run report: the ablation over round counts, every comparison and the analysis, in one place.

    evol report runs/tiny          # rebuilds it from the files on disk
    (evol run writes runs/<name>/report.json, report.md and report.html through write_run_report)

Each section is built by its stage's report module under eval/report/ (evaluation.py for the
comparisons, ablation.py for the rows over rounds, analysis.py for complexity and diversity); this
file only joins them.
"""

from __future__ import annotations

from pathlib import Path

from eval.report.ablation import (
    ablation_rows,
    plot_ablation,
    round_differences,
    run_strengths,
    strength_sentence,
    strength_table,
    survival,
)
from eval.report.analysis import analysis_report_json, analysis_section
from eval.report.evaluation import Section, build_report, find_judge_dirs, lc_cell, with_ci
from eval.report.harness import harness_report_json, harness_section
from eval.report.headline import headline
from eval.report.method import method_info, method_report_json, method_section
from eval.report.verify import verify_panel, verify_report_json, verify_sections
from eval.scores import Aggregation
from pipeline.config import Config
from pipeline.core import fmt
from pipeline.core.jsonio import read_json, write_json
from pipeline.core.paths import RunDir
from pipeline.view import VIEW_FILE, write_viewer


def _fmt(block: dict | None, key: str, pct: bool = False) -> str:
    value = (block or {}).get(key)
    return fmt.pct(value) if pct else fmt.num(value)


def _direct_sentences(rows: list[dict]) -> list[str]:
    """C<k> judged directly against C0: is its capacity different from parity (100%)?"""
    out = []
    for r in rows:
        c0 = r["vs_C0"]
        ci = c0 and c0.get("capacity_pct_ci")
        if not ci:
            continue
        word = "significant" if ci[0] > 100 or ci[1] < 100 else "not significant"
        out.append(
            f"C{r['rounds']} vs C0 (judged directly): capacity {with_ci(c0, 'capacity_pct')}, "
            f"{c0['capacity_pct'] - 100:+.1f} points from parity: {word} on {c0['n']} items."
        )
    return out


def write_run_report(run_dir: Path, config: Config) -> Path:
    """report.json (ablation rows, survival, every comparison) and report.md/html with the plots."""
    settings = Aggregation.of(config)
    rows = ablation_rows(run_dir, config.run.rounds, settings)
    differences = round_differences(run_dir, config.run.rounds, settings)
    survival_rows = survival(run_dir)
    strengths = run_strengths(run_dir, settings)
    verified_panel = verify_panel(run_dir)
    images = plot_ablation(
        rows, survival_rows, RunDir(run_dir).plots, strengths, [verified_panel] if verified_panel else []
    )
    section = _ablation_section(run_dir, config, settings, rows, differences, strengths, images)
    pieces = {
        "ablation": rows,
        "round_differences": differences,
        "bradley_terry": strengths,
        **harness_report_json(run_dir),
        **verify_report_json(run_dir, config),
    }
    top, top_json = headline(run_dir, pieces, list(config.eval.verify_sets))
    judge_dirs, _ = find_judge_dirs(run_dir)
    analysis = analysis_section(run_dir)
    harness = harness_section(run_dir)  # lm-eval tasks (eval.harness_tasks); None when off
    verified = verify_sections(run_dir, config)  # eval.verify_sets; none when off
    method = method_section(run_dir)  # evolve.method: the operations, or a method with its optimisation
    build_report(
        judge_dirs,
        run_dir,
        extra_sections=[section, *(s for s in (method,) if s), *verified, *(s for s in (analysis, harness) if s)],
        settings=settings,
        leading_sections=top,
    )
    # eval's report.json describes the comparisons; the run adds its ablation and survival rows.
    report_json = RunDir(run_dir).report("json")
    report = read_json(report_json) if report_json.is_file() else {}
    report.update(
        {
            "run": run_dir.name,
            "headline": top_json,
            "ablation": rows,
            "round_differences": differences,
            "bradley_terry": strengths,
            "survival": survival_rows,
            **analysis_report_json(run_dir),
            **method_report_json(run_dir),
            **{key: pieces[key] for key in ("harness", "verified", "verified_differences") if key in pieces},
        }
    )
    write_json(report_json, report)
    return RunDir(run_dir).report("md")


def _ablation_section(
    run_dir: Path,
    config: Config,
    settings: Aggregation,
    rows: list[dict],
    differences: list[dict],
    strengths: dict,
    images: list,
) -> Section:
    """What was run and how to read the intervals, the sentences the numbers support, the table over
    rounds and the Bradley-Terry strengths; writes the evolution's viewer page it links to."""
    # Every attempt of the evolution, browsable offline: cheap (no model), so written with each report.
    viewer = write_viewer(run_dir) if RunDir(run_dir).evolve_stats.is_file() else None
    return Section(
        title="Ablation over evolution rounds",
        paragraphs=[
            f"Run {run_dir.name}: evolver {config.models.evolver} with {_evolved_with(run_dir)}, base "
            f"{config.models.base}, judge {config.models.judge}, fine-tune {config.train.method}. Each C<k> is the seeds plus the "
            f"evolutions kept in rounds 1..k of one evolution; each model was fine-tuned on one C<k>.",
            f"Intervals are 95% paired bootstrap intervals over test items ({settings.resamples} draws, seed "
            f"{settings.seed}); a difference is called significant when its interval leaves out zero (no correction "
            f"for the number of comparisons, so expect one false alarm in twenty).",
            *_direct_sentences(rows),
            *(d["sentence"] for d in differences),
            strength_sentence(strengths),
            *(
                [
                    f"Every one of the {viewer['attempts']:,} attempts of the evolution, with its lineage, verdict, "
                    f"answer and the rule that eliminated it: [{VIEW_FILE}]({VIEW_FILE}) beside this report (open it from disk)."
                ]
                if viewer
                else []
            ),
        ],
        tables=[(ABLATION_HEADER, [_ablation_row(r) for r in rows]), strength_table(strengths)],
        images=images,
    )


ABLATION_HEADER = [
    "rounds",
    "train rows",
    "evolved share",
    "kept rate of round",
    "W/T/L vs C0",
    "capacity vs C0 [95% CI]",
    "W/T/L vs reference",
    "capacity vs reference [95% CI]",
    "win rate vs reference [95% CI]",
    "high-difficulty win rate vs reference [95% CI]",
    "length-controlled win rate vs C0 [95% CI]",
    "length-controlled win rate vs reference [95% CI]",
]


def _ablation_row(r: dict) -> list:
    """One round count's row of the ablation table, in the columns of ABLATION_HEADER."""
    c0, ref = r["vs_C0"], r["vs_reference"]
    return [
        r["rounds"],
        r["training_rows"],
        _fmt(r, "evolved_share", pct=True),
        _fmt(r, "kept_rate_of_round", pct=True),
        f"{c0['win']}/{c0['tie']}/{c0['lose']}" if c0 else fmt.MISSING,
        with_ci(c0, "capacity_pct") if c0 else fmt.MISSING,
        f"{ref['win']}/{ref['tie']}/{ref['lose']}" if ref else fmt.MISSING,
        with_ci(ref, "capacity_pct") if ref else fmt.MISSING,
        with_ci(ref, "win_rate") if ref else fmt.MISSING,
        with_ci(ref, "high_difficulty_win_rate") if ref else fmt.MISSING,
        lc_cell(c0["length_controlled"]) if c0 else fmt.MISSING,
        lc_cell(ref["length_controlled"]) if ref else fmt.MISSING,
    ]


def _evolved_with(run_dir: Path) -> str:
    """What the evolver rewrote with (evolve.method): "train.method" is the fine-tune's, not this."""
    info = method_info(run_dir)
    if info is None or info["kind"] == "ops":
        return "the hand-written operations"
    return f"the evolving method {info['name']}"
