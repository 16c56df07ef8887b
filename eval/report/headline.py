"""The report's headline: which round count wins, on which instrument, and whether the instruments
could have told.

    sections, data = headline(run_dir, pieces, sets)   # the first sections of report.md/html; data -> report.json

One table, a row per model (the reference, C0..Ck) and a column per instrument that ran: each
verified prompt set's prompt-level strict accuracy, the judge's win rate, length-controlled win rate
and capacity against the reference, Bradley-Terry strength, each lm-eval metric; every cell with
its 95% interval. Then one sentence per instrument: the best round count and its paired difference
from C0, significance corrected over the k comparisons with C0 by Holm's method (eval/power.py).
Then each instrument's health: the judge's tie rate, position consistency and unparsed share (a
judge that ties more than 90% of pairs, or whose verdicts flip with the order more often than they
hold, is called uninformative), each prompt set's scored and unscorable prompts, and every
instrument's minimum detectable difference and the items it would need for 5 points.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from eval.power import DEFAULT_SD, holm, items_needed, minimum_detectable_difference, p_value, sd_from_interval
from eval.report.evaluation import Section, find_judge_dirs
from pipeline.core import fmt
from pipeline.core.jsonio import read_json
from pipeline.core.paths import RunDir

TIE_LIMIT = 0.9  # a judge that ties more often than this cannot tell these models apart
TARGET_POINTS = 5.0


@dataclass
class Instrument:
    name: str
    kind: str  # "verified" or "judge": which conservative default sd applies when no item differed
    cells: dict[str, dict]  # model label -> {"value", "ci"}
    points: float = 100.0  # one unit of the value in points (a share: 100; capacity, already points: 1)
    differences: dict[str, dict] = field(default_factory=dict)  # C<k> -> {"difference", "ci"} in points vs C0
    n: int | None = None  # items or prompts behind a paired difference
    unit: str = "points"  # of the differences: "points", or "logits" (Bradley-Terry strength)


def instruments(pieces: dict) -> list[Instrument]:
    """Every instrument of the run, from what the report already computed (`pieces`: ablation rows,
    round_differences, bradley_terry, verified, verified_differences, harness)."""
    found = []
    for name, per_model in sorted((pieces.get("verified") or {}).items()):
        cells = {label: r["prompt_strict"] for label, r in per_model.items() if r.get("prompt_strict")}
        diffs = {
            d["b"]: d["prompt_strict"]
            for d in pieces.get("verified_differences") or []
            if d["set"] == name and d["a"] == "C0"
        }
        n = max((d["prompts"] for d in pieces.get("verified_differences") or [] if d["set"] == name), default=None)
        found.append(Instrument(f"{name} prompt-level strict", "verified", cells, 100.0, diffs, n))
    rows = [r for r in pieces.get("ablation") or [] if r.get("vs_reference")]
    round_diffs = [d for d in pieces.get("round_differences") or [] if d["a"] == "C0" and d["baseline"] == "reference"]
    n = max((d["items"] for d in round_diffs), default=None)
    if rows:
        win = {
            r["label"]: {"value": r["vs_reference"]["win_rate"], "ci": r["vs_reference"].get("win_rate_ci")}
            for r in rows
        }
        found.append(
            Instrument(
                "win rate vs reference", "judge", win, 100.0, {d["b"]: d["win_rate_points"] for d in round_diffs}, n
            )
        )
        lc = {
            r["label"]: {
                "value": r["vs_reference"]["length_controlled"].get("lc_win_rate"),
                "ci": r["vs_reference"]["length_controlled"].get("lc_win_rate_ci"),
            }
            for r in rows
            if r["vs_reference"].get("length_controlled")
        }
        lc_diffs = {d["b"]: d["lc_win_rate_points"] for d in round_diffs if d.get("lc_win_rate_points")}
        lc_n = max((d["items"] for d in lc_diffs.values()), default=None)
        found.append(Instrument("length-controlled win rate vs reference", "judge", lc, 100.0, lc_diffs, lc_n))
        capacity = {
            r["label"]: {"value": r["vs_reference"]["capacity_pct"], "ci": r["vs_reference"].get("capacity_pct_ci")}
            for r in rows
        }
        found.append(
            Instrument(
                "capacity vs reference (%)",
                "judge",
                capacity,
                1.0,
                {d["b"]: d["capacity_points"] for d in round_diffs},
                n,
            )
        )
    ranking = pieces.get("bradley_terry") or {}
    strengths = ranking.get("models") or {}
    if strengths:
        cells = {label: {"value": m["strength"], "ci": m.get("strength_ci")} for label, m in strengths.items()}
        diffs = {label: m["vs_C0"] for label, m in strengths.items() if m.get("vs_C0") and label.startswith("C")}
        found.append(
            Instrument("Bradley-Terry strength", "judge", cells, 1.0, diffs, ranking.get("items") or None, "logits")
        )
    by_metric: dict[str, dict] = {}
    for row in pieces.get("harness") or []:
        key = f"{row['task']} {row['metric']}"
        by_metric.setdefault(key, {})[row["model"]] = {"value": row.get("value"), "ci": row.get("ci")}
    found += [Instrument(f"lm-eval {key}", "verified", cells, 100.0) for key, cells in by_metric.items()]
    return found


def judge_health(run_dir: Path) -> dict | None:
    """Tie rate, position consistency and unparsed share over every comparison the judge made."""
    dirs, _ = find_judge_dirs(run_dir) if RunDir(run_dir).judge.is_dir() else ([], None)
    totals = Counter()
    for folder in dirs:
        scores = read_json(folder / "scores.json")
        overall, order, failures = (
            scores["overall"],
            scores.get("position_consistency", {}),
            scores.get("judge_failures", {}),
        )
        totals.update(
            n=overall["n"],
            ties=overall["tie"],
            both=order.get("pairs_with_both_orders", 0),
            consistent=order.get("consistent", 0),
            orders=failures.get("orders_total", 0),
            unparsed=failures.get("orders_unparsed", 0),
        )
    if not totals["n"]:
        return None
    health = {
        "pairs": totals["n"],
        "tie_rate": totals["ties"] / totals["n"],
        "position_consistency": totals["consistent"] / totals["both"] if totals["both"] else None,
        "unparsed_share": totals["unparsed"] / totals["orders"] if totals["orders"] else None,
    }
    flips = health["position_consistency"] is not None and health["position_consistency"] < 0.5
    health["uninformative"] = health["tie_rate"] > TIE_LIMIT or flips
    return health


def verified_health(run_dir: Path, names: list[str]) -> dict[str, dict]:
    """Per prompt set: prompts, how many were scored, and why the others could not be (the same for every model)."""
    out = {}
    for name in names:
        checks = sorted((RunDir(run_dir).verify / name).glob("*/checks.jsonl"))
        if not checks:
            continue
        records = [json.loads(line) for line in checks[0].read_text().splitlines() if line.strip()]
        reasons = Counter(r["unscorable"] for r in records if r.get("unscorable"))
        out[name] = {
            "prompts": len(records),
            "scored": len(records) - sum(reasons.values()),
            "unscorable": dict(reasons),
        }
    return out


def assess(instrument: Instrument) -> dict:
    """The best model, the paired differences from C0 with Holm's correction, and the instrument's power."""
    rounds = {
        label: cell
        for label, cell in instrument.cells.items()
        if label.startswith("C") and cell.get("value") is not None
    }
    best = max(rounds, key=lambda label: rounds[label]["value"]) if rounds else None
    labels = sorted(instrument.differences, key=lambda label: int(label[1:]))
    tests = [(label, instrument.differences[label]) for label in labels if instrument.differences[label].get("ci")]
    ps = [p_value(d["difference"], d["ci"]) for _, d in tests]
    rejected = holm(ps)
    compared = {label: {**d, "p": round(p, 4), "significant_holm": r} for (label, d), p, r in zip(tests, ps, rejected)}
    sds = [sd_from_interval(d["ci"], instrument.n) for _, d in tests if instrument.n]
    sd = max(sds, default=0.0)  # the widest paired interval's: the conservative one
    source = "this run's paired differences"
    if not tests:
        source = "no paired difference is computed for this instrument"
    elif sd <= 0 and instrument.unit != "points":  # the defaults are for shares: none fits a logit scale
        source = "no paired difference varied in this run"
    elif sd <= 0:
        sd, source = DEFAULT_SD[instrument.kind] * 100, "default (no paired item differed in this run)"
    out = {
        "name": instrument.name,
        "cells": instrument.cells,
        "best": best,
        "differences_from_C0": compared,
        "correction": f"Holm over {len(tests)} comparison{'s' * (len(tests) != 1)} with C0" if tests else None,
        "n": instrument.n,
        "paired_sd_points": round(sd, 2),
        "sd_source": source,
    }
    if instrument.n and sd > 0:
        out["minimum_detectable_difference_points"] = round(minimum_detectable_difference(sd, instrument.n), 2)
        if instrument.unit == "points":
            out["items_for_5_points"] = items_needed(sd, TARGET_POINTS)
    out["unit"] = instrument.unit
    out["sentence"] = sentence(out, instrument.points)
    return out


def sentence(result: dict, points: float) -> str:
    name, best = result["name"], result["best"]
    if best is None:
        return f"{name}: no round count was measured."
    cell = result["cells"][best]
    values = {
        c["value"] for label, c in result["cells"].items() if label.startswith("C") and c.get("value") is not None
    }
    said = f"{name}: {best} scores highest ({_cell(cell)})"
    if len(values) == 1:
        said = f"{name}: every round count scores {_cell(cell)}"
    compared = result["differences_from_C0"]
    if not compared:
        return f"{said}; no paired difference is computed for this instrument, so compare the intervals."
    winners = [label for label, d in compared.items() if d["significant_holm"]]
    if best in compared:
        d = compared[best]
        word = "significant" if d["significant_holm"] else "not significant"
        p = "p < 0.001" if d["p"] < 0.001 else f"p {d['p']:.3f}"
        unit, digits = result.get("unit", "points"), 1 if result.get("unit", "points") == "points" else 2
        said += (
            f", {d['difference']:+.{digits}f} {unit} over C0 [{d['ci'][0]:+.{digits}f}, {d['ci'][1]:+.{digits}f}], "
            f"{word} ({p})"
        )
    others = [label for label in winners if label != best]
    tail = f"; {', '.join(others)} also differ{'s' * (len(others) == 1)} from C0" if others else ""
    if not winners:
        tail = "; no round count differs from C0"
    return f"{said}{tail} ({result['correction']}, 5% family-wise)."


def _cell(cell: dict | None) -> str:
    if not cell or cell.get("value") is None:
        return fmt.MISSING
    ci = cell.get("ci")
    value = fmt.num(cell["value"])
    return f"{value} [{fmt.num(ci[0])}, {fmt.num(ci[1])}]" if ci else value


def _with_unit(value: float | None, unit: str) -> str:
    return fmt.MISSING if value is None else f"{fmt.num(value)} {unit}"


def headline(run_dir: Path, pieces: dict, verify_sets: list[str]) -> tuple[list[Section], dict]:
    """The headline's two sections (the table; then what each instrument says, its health and power)
    and its report.json entry."""
    results = [assess(i) for i in instruments(pieces)]
    labels = sorted({label for r in results for label in r["cells"]}, key=lambda x: (x != "reference", len(x), x))
    table = [[label, *(_cell(r["cells"].get(label)) for r in results)] for label in labels]
    judge = judge_health(run_dir)
    verified = verified_health(run_dir, verify_sets)
    paragraphs = [r["sentence"] for r in results]
    if judge:
        verdict = (
            "**uninformative**: it could not tell these models apart; use a stronger models.judge"
            if judge["uninformative"]
            else "informative"
        )
        paragraphs.append(
            f"The judge over {judge['pairs']} pairs: ties {fmt.pct(judge['tie_rate'])}, verdicts that hold when the order "
            f"flips {fmt.pct(judge['position_consistency'])}, unparsed orders {fmt.pct(judge['unparsed_share'])}: {verdict}."
        )
    for name, h in verified.items():
        why = "; ".join(f"{count} {reason}" for reason, count in h["unscorable"].items())
        paragraphs.append(
            f"{name}: {h['scored']} of {h['prompts']} prompts scored" + (f", unscorable: {why}." if why else ".")
        )
    paragraphs.append(
        "Minimum detectable difference: the paired difference from C0 that a two-sided 5% test would detect with "
        "80% power, from the paired variance this run measured (normal approximation, eval/power.py); where no "
        "paired item differed, a conservative default variance is used and the table says so."
    )
    power = [
        [
            r["name"],
            r.get("n") or fmt.MISSING,
            _with_unit(r.get("minimum_detectable_difference_points"), r["unit"]),
            r.get("items_for_5_points") or fmt.MISSING,
            r["sd_source"],
        ]
        for r in results
    ]
    top = Section(
        title="Headline: which round count wins",
        paragraphs=["Every instrument that ran, per model, with its 95% interval; what each says follows the table."],
        tables=[(["model", *(r["name"] for r in results)], table)],
    )
    header = [
        "instrument",
        "items or prompts",
        "minimum detectable difference",
        "needed for 5 points",
        "variance from",
    ]
    said = Section(
        title="What the instruments say, and whether they could tell", paragraphs=paragraphs, tables=[(header, power)]
    )
    return [top, said], {"instruments": results, "judge": judge, "verified": verified}


def methods_headline(report_a: dict, report_b: dict) -> tuple[Section | None, list[dict]]:
    """`evol compare-methods`' headline: per instrument both runs measured, each method's best C<k> with its
    interval, and whether the intervals tell them apart (the runs are separate: no paired test across them).
    None when either run's report has no headline yet."""
    a = {i["name"]: i for i in (report_a.get("headline") or {}).get("instruments", [])}
    b = {i["name"]: i for i in (report_b.get("headline") or {}).get("instruments", [])}
    rows, data = [], []
    for name in [n for n in a if n in b]:
        best_a, best_b = a[name]["best"], b[name]["best"]
        if best_a is None or best_b is None:
            continue
        cell_a, cell_b = a[name]["cells"][best_a], b[name]["cells"][best_b]
        apart = bool(cell_a.get("ci") and cell_b.get("ci")) and (
            cell_a["ci"][1] < cell_b["ci"][0] or cell_b["ci"][1] < cell_a["ci"][0]
        )
        higher = "B" if cell_b["value"] > cell_a["value"] else "A" if cell_a["value"] > cell_b["value"] else None
        if higher is None:
            said = f"{name}: A's best ({best_a}) and B's best ({best_b}) score the same ({_cell(cell_a)})."
        else:
            verdict = "their intervals do not overlap" if apart else "their intervals overlap: not told apart"
            said = (
                f"{name}: {higher} scores higher, A's best {best_a} {_cell(cell_a)} against B's best {best_b} "
                f"{_cell(cell_b)}; {verdict}."
            )
        rows.append([name, f"{best_a}: {_cell(cell_a)}", f"{best_b}: {_cell(cell_b)}", "yes" if apart else "no"])
        data.append(
            {
                "instrument": name,
                "a": {"best": best_a, **cell_a},
                "b": {"best": best_b, **cell_b},
                "apart": apart,
                "sentence": said,
            }
        )
    if not rows:
        return None, []
    section = Section(
        "Headline: method A against method B",
        [
            "Per instrument both runs measured, each method's best round count with its 95% interval. The runs are "
            "separate, so this compares intervals, not a paired difference; each run's report says whether its own "
            "instruments could tell its round counts apart.",
            *(d["sentence"] for d in data),
        ],
        [(["instrument", "A: best C<k> [95% CI]", "B: best C<k> [95% CI]", "intervals apart"], rows)],
    )
    return section, data
