"""The evolving method in the report: which method evolved the run (the six operations or a method file
from `evol optimize`) with the optimisation's failure rate per step, and the ablation of two runs that
differ only in their method (same seeds, rounds and run seed), side by side.

    evol report runs/tiny-opt                       # the run report names the method (method_section)
    evol compare-methods runs/tiny runs/tiny-opt    # comparison.md/.json in the second run (method_comparison)

Kept rates carry 95% Wilson intervals over attempts, differences Newcombe's interval (the two Wilson
intervals combined): attempts of one round are not independent draws of a fixed rate, so read them as a
guide to the noise, not as a test. The judge's scores and the verified accuracy carry the bootstrap
intervals of each run's report; a round's mean difficulty a Student t interval over its rated
instructions (from the rating histogram). A and B sit in columns of their own, so no cell holds two
intervals.
"""

from __future__ import annotations

import math
from pathlib import Path

from eval.report.evaluation import Section, with_ci
from eval.report.headline import methods_headline
from pipeline.core import fmt
from pipeline.core.jsonio import InputError, read_json
from pipeline.core.paths import RunDir
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
    manifest = RunDir(run_dir).evolve_manifest
    if not manifest.is_file():
        return None
    info = dict(read_json(manifest).get("method") or {"kind": "ops", "name": "hand-written operations"})
    method_file = RunDir(run_dir).evolve_method
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
            "It was chosen by evol optimize: at each step the optimizer rewrote the current method, every "
            "candidate evolved the same development set, and the lowest failure rate (the share of attempts "
            "the elimination rules removed) was kept, the current method included, so the rate never rises. "
            "The table gives the rate of each step's chosen method with a 95% Wilson interval over its attempts"
            + ("; below it, the method's prompt as the evolver received it." if info.get("text") else ".")
        )
        header = ["step", "method", "failure rate on the development set [95% CI]", "eliminated by rule"]
        rows = []
        for h in history:
            failed = round(h["failure_rate"] * h["attempted"])
            rules = ", ".join(f"{rule} {n}" for rule, n in (h.get("eliminated") or {}).items() if n) or "none"
            rows.append([h["step"], f"{h['name']} ({h['hash']})", _rate(failed, h["attempted"]), rules])
        tables.append((header, rows))
    elif info.get("text"):
        paragraphs.append("Its prompt, as the evolver received it:")
    code = [info["text"]] if info.get("text") else []
    return Section("Evolving method", paragraphs=paragraphs, tables=tables, code=code)


# ---------------------------------------------------------------- two runs, two methods


def _run(run_dir: Path) -> dict:
    stats_path = RunDir(run_dir).evolve_stats
    if not stats_path.is_file():
        raise InputError(
            f"{run_dir} has no finished evolution (evolve/stats.json); run evol run or evol evolve first."
        )
    manifest = read_json(RunDir(run_dir).evolve_manifest)
    report = RunDir(run_dir).report("json")
    return {
        "dir": run_dir,
        "stats": read_json(stats_path),
        "inputs": manifest.get("inputs") or {},
        "method": method_info(run_dir),
        "report": read_json(report) if report.is_file() else {},
    }


def method_comparison(ops_dir: str | Path, method_dir: str | Path) -> tuple[list[Section], dict]:
    """The sections and the JSON comparing two runs' evolutions (A, then B) round by round and rule by
    rule, plus the report's scores per C<k> and the analysis per round where both runs have them (each
    a section of its own, so its words stand above its table)."""
    a, b = _run(Path(ops_dir)), _run(Path(method_dir))
    paragraphs = [
        f"A = {a['dir'].name} ({_method_name(a['method'])}), B = {b['dir'].name} ({_method_name(b['method'])}). "
        f"Kept rate of each round with a 95% Wilson interval over its attempts; B - A with Newcombe's interval."
    ]
    same = [key for key in ("seeds", "run_seed", "testset", "models") if a["inputs"].get(key) == b["inputs"].get(key)]
    differ = [key for key in ("seeds", "run_seed", "testset", "models") if key not in same]
    paragraphs.append(
        "Both runs evolved the same seeds with the same run seed, test set and models."
        if not differ
        else f"Warning: the runs differ in {', '.join(differ)} besides the method, so this is not a clean ablation."
    )
    per_round = _per_round(a["stats"]["rounds"], b["stats"]["rounds"])
    ta, tb = a["stats"]["evolution_totals"], b["stats"]["evolution_totals"]
    tables = [
        (["round", "A kept", "B kept", "B - A", "mean words kept A / B"], [_kept_row(r) for r in per_round]),
        (["survival per rule, all rounds (share of attempts)", "A", "B"], _rule_rows(ta, tb)),
    ]
    sections = [Section("Ablation: hand-written operations vs evolving method", paragraphs=paragraphs, tables=tables)]
    top, top_data = methods_headline(a["report"], b["report"])
    if top:
        sections.insert(0, top)
    downstream = _downstream_sections(a["report"], b["report"])
    if not downstream:
        paragraphs.append("Neither judge scores nor analysis are compared: a run has no report.json with them yet.")
    sections += downstream
    data = {
        "a": {"run": a["dir"].name, "method": a["method"]},
        "b": {"run": b["dir"].name, "method": b["method"]},
        "differ_in": differ,
        "headline": top_data,
        "per_round": per_round,
        "totals": {"a": ta, "b": tb},
    }
    return sections, data


def _per_round(rounds_a: list[dict], rounds_b: list[dict]) -> list[dict]:
    """Each evolution round both runs have: attempts, kept and eliminated, the kept rates' Wilson
    intervals and Newcombe's interval of their difference."""
    per_round = []
    for k in range(1, min(len(rounds_a), len(rounds_b))):
        ra, rb = rounds_a[k], rounds_b[k]
        per_round.append(
            {
                "round": k,
                "a": {key: ra[key] for key in ("attempted", "kept", "eliminated")},
                "b": {key: rb[key] for key in ("attempted", "kept", "eliminated")},
                "a_kept_ci": wilson(ra["kept"], ra["attempted"]),
                "b_kept_ci": wilson(rb["kept"], rb["attempted"]),
                "difference_ci": newcombe(ra["kept"], ra["attempted"], rb["kept"], rb["attempted"]),
                "a_words_kept": ra["mean_instruction_words"]["kept"],
                "b_words_kept": rb["mean_instruction_words"]["kept"],
            }
        )
    return per_round


def _kept_row(r: dict) -> list:
    return [
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


def _rule_rows(ta: dict, tb: dict) -> list[list]:
    """Attempts each rule eliminated over all rounds (count and share of attempts), then the kept rate."""
    rows = [
        [
            rule,
            f"{ta['eliminated'].get(rule, 0)} ({100 * ta['eliminated'].get(rule, 0) / max(ta['attempted'], 1):.1f}%)",
            f"{tb['eliminated'].get(rule, 0)} ({100 * tb['eliminated'].get(rule, 0) / max(tb['attempted'], 1):.1f}%)",
        ]
        for rule in RULES
    ]
    rows.append(["kept", _rate(ta["kept"], ta["attempted"]), _rate(tb["kept"], tb["attempted"])])
    return rows


def _downstream_sections(ra: dict, rb: dict) -> list[Section]:
    """From the runs' report.json: each fine-tune's scores side by side, and difficulty and diversity
    per round; none where a run has no report with them yet."""
    sections = []
    scores = _score_rows(ra, rb) + _verified_rows(ra, rb)
    if scores:
        paragraph = (
            "Downstream, each fine-tune C<k> of A beside the one of B: the judge's capacity and win rate with the "
            "paired bootstrap interval over test items of each run's report, and the accuracy verified by code "
            "(prompt level, strict) with its bootstrap interval over prompts. The intervals are each run's own: "
            "where they overlap widely the two methods are not told apart."
        )
        header = ["C<k>", "measure", "A [95% CI]", "B [95% CI]"]
        sections.append(Section("Ablation: downstream scores per fine-tune", [paragraph], [(header, scores)]))
    analysis = _analysis_rows(ra, rb)
    if analysis:
        paragraph = (
            "Per round (0: the seeds), the judge-rated difficulty of the kept instructions (1-10; mean, 95% t "
            "interval, how many were rated) and their diversity (mean pairwise cosine distance of the embeddings)."
        )
        header = [
            "round",
            "difficulty A [95% CI] (rated)",
            "difficulty B [95% CI] (rated)",
            "diversity A",
            "diversity B",
        ]
        sections.append(Section("Ablation: difficulty and diversity per round", [paragraph], [(header, analysis)]))
    return sections


def _method_name(info: dict) -> str:
    if info["kind"] == "ops":
        return "the hand-written operations"
    return f"the evolving method {info['name']}, {info['hash']}"


def _score_rows(ra: dict, rb: dict) -> list[list]:
    """One row per C<k> and judge score: [C<k>, measure, A, B]; a score neither run has is left out."""
    rows_a = {r["rounds"]: r for r in ra.get("ablation") or []}
    rows_b = {r["rounds"]: r for r in rb.get("ablation") or []}
    measures = (
        ("vs_C0", "capacity_pct", "capacity vs C0"),
        ("vs_reference", "capacity_pct", "capacity vs reference"),
        ("vs_reference", "win_rate", "win rate vs reference"),
    )
    out = []
    for k in sorted(set(rows_a) & set(rows_b)):
        for baseline, key, label in measures:
            block_a, block_b = rows_a[k].get(baseline), rows_b[k].get(baseline)
            if block_a or block_b:
                cells = [with_ci(block, key) if block else fmt.MISSING for block in (block_a, block_b)]
                out.append([f"C{k}", label, *cells])
    return out


def _verified_rows(ra: dict, rb: dict) -> list[list]:
    """[C<k>, "<set> prompt-level strict", A, B] for each prompt set and model both runs verified."""
    from eval.report.verify import NAMES

    out = []
    va, vb = ra.get("verified") or {}, rb.get("verified") or {}
    for name in sorted(set(va) & set(vb)):
        for label in sorted(set(va[name]) & set(vb[name]), key=_label_order):
            cells = []
            for model in (va[name][label], vb[name][label]):
                block = model.get("prompt_strict") or {}
                value, ci = block.get("value"), block.get("ci")
                text = fmt.MISSING if value is None else f"{100 * value:.1f}%"
                if value is not None and ci:
                    text += f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}] of {model.get('scored')}"
                cells.append(text)
            out.append([label, f"{NAMES.get(name, name)}: prompt-level strict", *cells])
    return out


def _label_order(label: str) -> tuple:
    return (0, int(label[1:])) if label[:1] == "C" and label[1:].isdigit() else (1, label)


def difficulty_ci(summary: dict) -> tuple[float, float] | None:
    """The 95% Student t interval of a round's mean difficulty from its 1-10 histogram, kept within 1-10;
    None below two ratings."""
    from scipy.stats import t

    counts = {int(score): n for score, n in (summary.get("distribution") or {}).items() if n}
    n = sum(counts.values())
    if n < 2:
        return None
    mean = sum(score * c for score, c in counts.items()) / n
    sd = math.sqrt(sum(c * (score - mean) ** 2 for score, c in counts.items()) / (n - 1))
    half = float(t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return max(1.0, mean - half), min(10.0, mean + half)


def _analysis_rows(ra: dict, rb: dict) -> list[list]:
    pa = {r["round"]: r for r in (ra.get("analysis") or {}).get("per_round") or []}
    pb = {r["round"]: r for r in (rb.get("analysis") or {}).get("per_round") or []}

    def difficulty(r: dict) -> str:
        d = r.get("difficulty")
        if not d or d.get("mean") is None:
            return fmt.MISSING
        ci = difficulty_ci(d)
        interval = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""
        return f"{fmt.num(d['mean'], spec='.2f')}{interval} ({d['rated']})"

    def diversity(r: dict) -> str:
        return fmt.num((r.get("diversity") or {}).get("mean_pairwise_cosine_distance"), spec=".3f")

    return [
        [k, difficulty(pa[k]), difficulty(pb[k]), diversity(pa[k]), diversity(pb[k])]
        for k in sorted(set(pa) & set(pb))
    ]
