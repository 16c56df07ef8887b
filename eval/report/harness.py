"""The report's section on standard benchmarks: lm-evaluation-harness results of every model of a run.

    section = harness_section(Path("runs/tiny"))      # None when the run has no harness/*/results.json
    harness_report_json(Path("runs/tiny"))            # {"harness": rows} for report.json

Reads only files on disk (`<run>/harness/<label>/results.json` and the per-sample logs beside it,
written by eval/harness/run.py). Each metric is shown with lm-eval's standard error and a 95%
interval of value ± 1.96 stderr (normal approximation); each C<k> is also compared with C0 on the
same items, a paired difference whose interval comes from the per-item differences.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from eval.harness.run import RESULTS_FILE
from eval.report.evaluation import Section
from pipeline.core.fmt import MISSING
from pipeline.core.jsonio import read_json, read_jsonl_tolerant

STAGE = "harness"
Z95 = 1.96
# Metrics that are shares of items (accuracy, exact match, pass@k): their interval is cut to [0, 1],
# where the normal approximation would reach past it on a few items.
PROPORTIONS = ("acc", "exact_match", "pass@", "em", "mc1", "mc2", "prompt_level", "inst_level")


def _label_order(label: str) -> tuple:
    """reference first, then C0, C1, ... by number, then anything else by name."""
    match = re.fullmatch(r"C(\d+)", label)
    return (label != "reference", int(match.group(1)) if match else math.inf, label)


def load_results(run_dir: Path) -> dict[str, dict]:
    """{label: results.json} for every finished harness label of the run, in model order."""
    found = {p.parent.name: read_json(p) for p in (Path(run_dir) / STAGE).glob(f"*/{RESULTS_FILE}")}
    return {label: found[label] for label in sorted(found, key=_label_order)}


def metric_rows(label: str, results: dict) -> list[dict]:
    """One row per (task, metric, filter) of a label's results: value, stderr, 95% interval, n.

    Only the tasks the run named (a group's subtasks stay in results.json), or every task when none
    of them is a row of its own."""
    per_task = results.get("results") or {}
    named = [t for t in (results.get("evol", {}).get("settings", {}).get("tasks") or []) if t in per_task]
    rows = []
    for task in named or sorted(per_task):
        metrics = per_task[task]
        n = ((results.get("n-samples") or {}).get(task) or {}).get("effective") or metrics.get("sample_len")
        for key, value in metrics.items():
            metric, _, filt = key.partition(",")
            if not filt or metric.endswith("_stderr") or not isinstance(value, (int, float)):
                continue
            stderr = metrics.get(f"{metric}_stderr,{filt}")
            stderr = stderr if isinstance(stderr, (int, float)) and math.isfinite(stderr) else None
            ci = [value - Z95 * stderr, value + Z95 * stderr] if stderr is not None else None
            if ci and metric.startswith(PROPORTIONS) and 0 <= value <= 1:
                ci = [max(ci[0], 0.0), min(ci[1], 1.0)]
            rows.append(
                {
                    "model": label,
                    "task": task,
                    "metric": metric,
                    "filter": filt,
                    "value": value,
                    "stderr": stderr,
                    "ci": ci,
                    "n": n,
                }
            )
    return rows


def paired_difference(run_dir: Path, label: str, baseline: str, task: str, metric: str, filt: str) -> dict | None:
    """label minus baseline on the items both answered (per-sample logs): mean, 95% interval, n."""
    a, b = (
        _per_item(Path(run_dir) / STAGE / name / f"samples_{task}.jsonl", metric, filt) for name in (label, baseline)
    )
    common = sorted(set(a) & set(b))
    if len(common) < 2:
        return None
    diffs = [a[i] - b[i] for i in common]
    mean = sum(diffs) / len(diffs)
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1))
    half = Z95 * sd / math.sqrt(len(diffs))
    return {"difference": mean, "ci": [mean - half, mean + half], "n": len(diffs)}


def _per_item(path: Path, metric: str, filt: str) -> dict:
    if not path.is_file():
        return {}
    values = {}
    for row in read_jsonl_tolerant(path):
        value = row.get(metric)
        if row.get("filter", filt) == filt and isinstance(value, (int, float)) and not isinstance(value, bool):
            values[row.get("doc_id")] = float(value)
    return values


def _number(value: float | None) -> str:
    return MISSING if value is None else f"{value:.3f}"


def harness_section(run_dir: str | Path) -> Section | None:
    """A table model x task metric with stderr, 95% interval and n, and each C<k> against C0."""
    run_dir = Path(run_dir)
    loaded = load_results(run_dir)
    if not loaded:
        return None
    rows = [row for label, results in loaded.items() for row in metric_rows(label, results)]
    rows.sort(key=lambda r: (r["task"], r["metric"], r["filter"], _label_order(r["model"])))
    table = [
        [
            r["task"],
            f"{r['metric']} ({r['filter']})",
            r["model"],
            _number(r["value"]),
            _number(r["stderr"]),
            f"[{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]" if r["ci"] else MISSING,
            r["n"] if r["n"] is not None else MISSING,
        ]
        for r in rows
    ]
    first = next(iter(loaded.values()))
    settings = first.get("evol", {}).get("settings", {})
    limit = settings.get("limit")
    paragraphs = [
        f"lm-evaluation-harness {first.get('evol', {}).get('lm_eval', first.get('lm_eval_version', '?'))} on "
        f"every model through its vLLM backend, greedy as each task defines it, chat template "
        f"{'on' if settings.get('chat_template') else 'off'}"
        f"{f', the first {limit} items of each task' if limit else ''}. Each value carries lm-eval's standard "
        f"error and a 95% interval of value ± 1.96 stderr (normal approximation). Per-item logs: "
        f"{STAGE}/<model>/samples_<task>.jsonl.",
        *_difference_sentences(run_dir, rows),
    ]
    header = ["task", "metric (filter)", "model", "value", "stderr", "95% CI", "n"]
    return Section(
        title="Standard benchmarks (lm-evaluation-harness)", paragraphs=paragraphs, tables=[(header, table)]
    )


def _difference_sentences(run_dir: Path, rows: list[dict]) -> list[str]:
    out = []
    for r in rows:
        if not re.fullmatch(r"C[1-9]\d*", r["model"]):
            continue
        d = paired_difference(run_dir, r["model"], "C0", r["task"], r["metric"], r["filter"])
        if d is None:
            continue
        low, high = d["ci"]
        word = "significant" if low > 0 or high < 0 else "not significant"
        out.append(
            f"{r['model']} vs C0 on {r['task']} {r['metric']} ({r['filter']}): {d['difference']:+.3f}, "
            f"95% CI [{low:.3f}, {high:.3f}]: {word} on {d['n']} paired items."
        )
    return out


def harness_report_json(run_dir: str | Path) -> dict:
    """{"harness": one row per model, task and metric} to merge into report.json; {} without results."""
    loaded = load_results(Path(run_dir))
    if not loaded:
        return {}
    return {"harness": [row for label, results in loaded.items() for row in metric_rows(label, results)]}
