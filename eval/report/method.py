"""The evolving method in the report: which method evolved the run (the six operations or a method file
from `evol optimize`) with the optimisation's failure rate per step, and the ablation of two runs that
differ only in their method (same seeds, rounds and run seed), side by side.

    evol report runs/tiny-opt                       # the run report names the method (method_section)
    evol compare-methods runs/tiny runs/tiny-opt    # comparison.md/.json in the second run (method_comparison)

Kept rates carry 95% Wilson intervals over attempts, differences Newcombe's interval (the two Wilson
intervals combined): attempts of one round are not independent draws of a fixed rate, so read them as a
guide to the noise, not as a test.
"""

from __future__ import annotations

import math
from pathlib import Path

from eval.report.evaluation import Section, with_ci
from pipeline.core import fmt
from pipeline.core.jsonio import InputError, read_json
from pipeline.core.records import RULES

Z = 1.959964  # the 95% normal quantile


def wilson(k: int, n: int) -> tuple[float, float] | None:
    """The 95% Wilson score interval of k successes in n trials; None for n = 0."""
    if n == 0:
        return None
    p = k / n
    centre = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n)) / (1 + Z * Z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float] | None:
    """The 95% interval of p2 - p1 from the two Wilson intervals (Newcombe's method 10)."""
    a, b = wilson(k1, n1), wilson(k2, n2)
    if a is None or b is None:
        return None
    p1, p2 = k1 / n1, k2 / n2
    low = (p2 - p1) - math.sqrt((p2 - b[0]) ** 2 + (a[1] - p1) ** 2)
    high = (p2 - p1) + math.sqrt((b[1] - p2) ** 2 + (p1 - a[0]) ** 2)
    return low, high


def _rate(k: int, n: int) -> str:
    ci = wilson(k, n)
    return f"{k}/{n} = {100 * k / n:.1f}% [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else fmt.MISSING


# ---------------------------------------------------------------- the method of one run


def method_info(run_dir: str | Path) -> dict | None:
    """The evolve manifest's method (kind, name, hash) with the method file's lineage and history; None
    before the evolution finished. A run evolved before evolve.method existed used the operations."""
    evolve = Path(run_dir) / "evolve"
    if not (evolve / "manifest.json").is_file():
        return None
    info = dict(
        read_json(evolve / "manifest.json").get("method") or {"kind": "ops", "name": "hand-written operations"}
    )
    method_file = evolve / "method.json"
    if info["kind"] != "ops" and method_file.is_file():
        saved = read_json(method_file)
        info.update(lineage=saved.get("lineage") or {}, history=saved.get("history") or [], text=saved.get("text"))
    return info


def method_report_json(run_dir: str | Path) -> dict:
    info = method_info(run_dir)
    return {"method": info} if info else {}


def method_section(run_dir: str | Path) -> Section | None:
    info = method_info(run_dir)
    if info is None:
        return None
    if info["kind"] == "ops":
        return Section(
            "Evolving method",
            paragraphs=[
                "Instructions were evolved with the six hand-written operations (evolve.method=ops; prompts in "
                "evolve_local/prompts.py), one chosen per attempt with evolve.operation_weights."
            ],
        )
    paragraphs = [
        f"Instructions were evolved with the evolving method {info['name']} (hash {info['hash']}, evolve.method; "
        f"a copy is evolve/method.json): one prompt for every attempt, in place of the six operations."
    ]
    tables = []
    history = info.get("history") or []
    if history:
        paragraphs.append(
            "It was chosen by `evol optimize`: at each step the optimizer rewrote the current method, every "
            "candidate evolved the same development set, and the lowest failure rate (the share of attempts "
            "the elimination rules removed) was kept, the current method included, so the rate never rises. "
            "The rate of each step's chosen method, with a 95% Wilson interval over its attempts:"
        )
        header = ["step", "method", "failure rate on the development set [95% CI]", "eliminated by rule"]
        rows = []
        for h in history:
            failed = round(h["failure_rate"] * h["attempted"])
            rules = ", ".join(f"{rule} {n}" for rule, n in (h.get("eliminated") or {}).items() if n) or "none"
            rows.append([h["step"], f"{h['name']} ({h['hash']})", _rate(failed, h["attempted"]), rules])
        tables.append((header, rows))
    return Section("Evolving method", paragraphs=paragraphs, tables=tables)


# ---------------------------------------------------------------- two runs, two methods


def _run(run_dir: Path) -> dict:
    stats_path = run_dir / "evolve" / "stats.json"
    if not stats_path.is_file():
        raise InputError(
            f"{run_dir} has no finished evolution (evolve/stats.json); run evol run or evol evolve first."
        )
    manifest = read_json(run_dir / "evolve" / "manifest.json")
    report = run_dir / "report.json"
    return {
        "dir": run_dir,
        "stats": read_json(stats_path),
        "inputs": manifest.get("inputs") or {},
        "method": method_info(run_dir),
        "report": read_json(report) if report.is_file() else {},
    }


def method_comparison(ops_dir: str | Path, method_dir: str | Path) -> tuple[Section, dict]:
    """The section and the JSON comparing two runs' evolutions (A, then B) round by round and rule by
    rule, plus the report's scores per C<k> and the analysis per round where both runs have them."""
    a, b = _run(Path(ops_dir)), _run(Path(method_dir))
    paragraphs = [
        f"A = {a['dir'].name} (method {a['method']['name']}), B = {b['dir'].name} (method {b['method']['name']}). "
        f"Kept rate of "
        f"each round with a 95% Wilson interval over its attempts; B - A with Newcombe's interval."
    ]
    same = [key for key in ("seeds", "run_seed", "testset", "models") if a["inputs"].get(key) == b["inputs"].get(key)]
    differ = [key for key in ("seeds", "run_seed", "testset", "models") if key not in same]
    paragraphs.append(
        "Both runs evolved the same seeds with the same run seed, test set and models."
        if not differ
        else f"Warning: the runs differ in {', '.join(differ)} besides the method, so this is not a clean ablation."
    )
    rounds = min(len(a["stats"]["rounds"]), len(b["stats"]["rounds"]))
    per_round = []
    for k in range(1, rounds):
        ra, rb = a["stats"]["rounds"][k], b["stats"]["rounds"][k]
        diff = newcombe(ra["kept"], ra["attempted"], rb["kept"], rb["attempted"])
        per_round.append(
            {
                "round": k,
                "a": {key: ra[key] for key in ("attempted", "kept", "eliminated")},
                "b": {key: rb[key] for key in ("attempted", "kept", "eliminated")},
                "a_kept_ci": wilson(ra["kept"], ra["attempted"]),
                "b_kept_ci": wilson(rb["kept"], rb["attempted"]),
                "difference_ci": diff,
                "a_words_kept": ra["mean_instruction_words"]["kept"],
                "b_words_kept": rb["mean_instruction_words"]["kept"],
            }
        )
    kept_rows = [
        [
            r["round"],
            _rate(r["a"]["kept"], r["a"]["attempted"]),
            _rate(r["b"]["kept"], r["b"]["attempted"]),
            (
                f"{100 * (r['b']['kept'] / r['b']['attempted'] - r['a']['kept'] / r['a']['attempted']):+.1f} points "
                f"[{100 * r['difference_ci'][0]:+.1f}, {100 * r['difference_ci'][1]:+.1f}]"
                if r["difference_ci"]
                else fmt.MISSING
            ),
            f"{fmt.num(r['a_words_kept'])} / {fmt.num(r['b_words_kept'])}",
        ]
        for r in per_round
    ]
    tables = [(["round", "A kept", "B kept", "B - A", "mean words kept A / B"], kept_rows)]
    ta, tb = a["stats"]["evolution_totals"], b["stats"]["evolution_totals"]
    rule_rows = [
        [
            rule,
            f"{ta['eliminated'].get(rule, 0)} ({100 * ta['eliminated'].get(rule, 0) / max(ta['attempted'], 1):.1f}%)",
            f"{tb['eliminated'].get(rule, 0)} ({100 * tb['eliminated'].get(rule, 0) / max(tb['attempted'], 1):.1f}%)",
        ]
        for rule in RULES
    ]
    rule_rows.append(["kept", _rate(ta["kept"], ta["attempted"]), _rate(tb["kept"], tb["attempted"])])
    tables.append((["survival per rule, all rounds (share of attempts)", "A", "B"], rule_rows))

    scores = _score_rows(a["report"], b["report"])
    if scores:
        tables.append(
            (["C<k>", "capacity vs C0 A / B", "capacity vs reference A / B", "win rate vs reference A / B"], scores)
        )
    analysis = _analysis_rows(a["report"], b["report"])
    if analysis:
        tables.append(
            (["round", "difficulty A / B (rated)", "diversity A / B (mean pairwise cosine distance)"], analysis)
        )
    if not scores:
        paragraphs.append("Neither judge scores nor analysis are compared: a run has no report.json with them yet.")
    section = Section("Ablation: hand-written operations vs evolving method", paragraphs=paragraphs, tables=tables)
    data = {
        "a": {"run": a["dir"].name, "method": a["method"]},
        "b": {"run": b["dir"].name, "method": b["method"]},
        "differ_in": differ,
        "per_round": per_round,
        "totals": {"a": ta, "b": tb},
    }
    return section, data


def _score_rows(ra: dict, rb: dict) -> list[list]:
    rows_a = {r["rounds"]: r for r in ra.get("ablation") or []}
    rows_b = {r["rounds"]: r for r in rb.get("ablation") or []}

    def cell(row: dict | None, baseline: str, key: str) -> str:
        block = (row or {}).get(baseline)
        return with_ci(block, key) if block else fmt.MISSING

    out = []
    for k in sorted(set(rows_a) & set(rows_b)):
        out.append(
            [f"C{k}"]
            + [
                f"{cell(rows_a[k], baseline, key)} / {cell(rows_b[k], baseline, key)}"
                for baseline, key in (
                    ("vs_C0", "capacity_pct"),
                    ("vs_reference", "capacity_pct"),
                    ("vs_reference", "win_rate"),
                )
            ]
        )
    return out


def _analysis_rows(ra: dict, rb: dict) -> list[list]:
    pa = {r["round"]: r for r in (ra.get("analysis") or {}).get("per_round") or []}
    pb = {r["round"]: r for r in (rb.get("analysis") or {}).get("per_round") or []}

    def difficulty(r: dict) -> str:
        d = r.get("difficulty")
        return f"{fmt.num(d['mean'], spec='.2f')} ({d['rated']})" if d else fmt.MISSING

    def diversity(r: dict) -> str:
        return fmt.num((r.get("diversity") or {}).get("mean_pairwise_cosine_distance"), spec=".3f")

    return [
        [k, f"{difficulty(pa[k])} / {difficulty(pb[k])}", f"{diversity(pa[k])} / {diversity(pb[k])}"]
        for k in sorted(set(pa) & set(pb))
    ]
