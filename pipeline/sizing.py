"""`evol run --plan`: sizing before spending. How many test items and verified prompts each model of a
config will answer, and the smallest difference from C0 that this can detect.

    evol run --config configs/paper-7b.yaml --plan                  # conservative default variances
    evol run --config configs/paper-7b.yaml --plan --like runs/tiny # the variances a finished run measured

Reads the config and its data files only: no model. The minimum detectable difference is eval/power.py's
(a paired two-sided test at 5% with 80% power, normal approximation). Without --like the per-item
standard deviation is the stated conservative default (eval.power.DEFAULT_SD: 70.7 points for a
pass/fail check, 50 for a judge verdict); with --like it is the one each instrument of that run's
report.json headline measured.
"""

from __future__ import annotations

from pathlib import Path

from eval.power import DEFAULT_SD, TARGETS, items_needed, minimum_detectable_difference
from pipeline.config import Config
from pipeline.core import fmt
from pipeline.core.jsonio import InputError, read_json
from pipeline.core.paths import RunDir, label, testset_path

JUDGE_INSTRUMENTS = ("win rate vs reference",)


def measured_sds(run_dir: Path) -> dict[str, float]:
    """Each instrument's paired sd (points) from a finished run's report.json headline."""
    report = RunDir(run_dir).report("json")
    if not report.is_file():
        raise InputError(f"--like {run_dir}: no report.json there; give a finished run's directory.")
    instruments = (read_json(report).get("headline") or {}).get("instruments") or []
    if not instruments:
        raise InputError(
            f"--like {run_dir}: its report.json has no headline; rebuild it with `evol report {run_dir}`."
        )
    return {i["name"]: i["paired_sd_points"] for i in instruments if i.get("sd_source", "").startswith("this run")}


def plan_sizes(config: Config, like: Path | None = None) -> tuple[list[dict], dict]:
    """One row per instrument: items per model, the sd used and where from, the detectable difference,
    and the items needed for 3 and 5 points; and what each model answers."""
    from eval.verify.prompts import load_set
    from pipeline.core.testset import load_testset

    items = len(load_testset(testset_path(config.eval.testset, quiet=True), config.eval))
    prompts = {name: len(load_set(name, config.eval)[1]) for name in config.eval.verify_sets}
    sds = measured_sds(like) if like else {}
    rows = []
    for name, n, kind in [
        *((f"{s} prompt-level strict", count, "verified") for s, count in prompts.items()),
        *((name, items, "judge") for name in JUDGE_INSTRUMENTS),
    ]:
        sd = sds.get(name)
        source = f"measured in {like}" if sd else "conservative default"
        sd = sd or DEFAULT_SD[kind] * 100
        rows.append(
            {
                "instrument": name,
                "per_model": n,
                "sd_points": round(sd, 1),
                "sd_from": source,
                "minimum_detectable_difference_points": round(minimum_detectable_difference(sd, n), 1) if n else None,
                **{f"needed_for_{t:g}_points": items_needed(sd, t) for t in TARGETS},
            }
        )
    models = (["reference"] if config.run.reference else []) + [label(k) for k in config.run.rounds]
    return rows, {"models": models, "test_items": items, "verified_prompts": prompts}


def render_plan(rows: list[dict], answers: dict) -> str:
    verified = ", ".join(f"{n} {name}" for name, n in answers["verified_prompts"].items()) or "no"
    lines = [
        f"{len(answers['models'])} models ({', '.join(answers['models'])}) each answer {answers['test_items']} test items "
        f"and {verified} verified prompts.",
        "Minimum detectable difference from C0: a paired two-sided test at 5% with 80% power (normal approximation).",
        "",
        "| instrument | per model | sd (points) | sd from | detectable (points) | needed for 3 points | needed for 5 points |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['instrument']} | {r['per_model']} | {r['sd_points']} | {r['sd_from']} | "
            f"{fmt.num(r['minimum_detectable_difference_points'])} | {r['needed_for_3_points']} | {r['needed_for_5_points']} |"
        )
    return "\n".join(lines)
