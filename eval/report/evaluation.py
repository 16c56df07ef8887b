"""Build report.md, a self-contained report.html (PNGs inlined as base64), report.json and plots/.

    evol report runs/tiny                      # every runs/tiny/judge/*/ comparison
    evol report runs/tiny/judge/C1__vs__base   # one comparison, report written beside it

`build_report(judge_dirs, out_dir, extra_sections)` is the function behind the command: it reads
only files on disk (scores.json, judgments.jsonl), so a report can be rebuilt at any time, and it
takes any number of comparisons plus extra `Section`s (the run stage adds the ablation curve over
rounds this way).
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

from eval.judge import JUDGMENTS_FILE, SCORES_FILE, stored_lengths
from eval.report.plots import plot_capacity_per_skill, plot_win_rate_by_difficulty, plot_win_tie_lose
from eval.scores import Aggregation, rescore
from pipeline.config.eval import EvalConfig, check_resamples
from pipeline.core.fmt import MISSING
from pipeline.core.fmt import num as _num
from pipeline.core.fmt import pct as _pct
from pipeline.core.jsonio import InputError, atomic_write_text, read_json, read_jsonl, write_json
from pipeline.core.manifest import now
from pipeline.core.paths import RunDir

EXAMPLES_PER_COMPARISON = 3


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[tuple[list[str], list[list]]] = field(default_factory=list)  # (header, rows)
    images: list[tuple[Path, str]] = field(default_factory=list)  # (png path, caption)
    code: list[str] = field(default_factory=list)  # verbatim blocks (raw judge text)


def find_judge_dirs(path: str | Path) -> tuple[list[Path], Path]:
    """(judge dirs, where the report goes) for a run directory or a single judge directory."""
    path = Path(path)
    if (path / SCORES_FILE).is_file():
        return [path], path
    dirs = sorted(p.parent for p in RunDir(path).judge.glob(f"*/{SCORES_FILE}"))
    if not dirs:
        raise InputError(
            f"{path}: neither a judge directory (no {SCORES_FILE}) nor a run directory with "
            f"judge/*/{SCORES_FILE}; run `evol judge` first."
        )
    return dirs, path


def with_ci(block: dict, key: str) -> str:
    """A rate or capacity with its 95% interval: "50.0% [31.2, 68.8]", "93.3% [80.1, 104.0]"."""
    value, ci = block.get(key), block.get(f"{key}_ci")
    if value is None:
        return MISSING
    scale = 1 if key == "capacity_pct" else 100
    text = f"{value * scale:.1f}%"
    return f"{text} [{ci[0] * scale:.1f}, {ci[1] * scale:.1f}]" if ci else text


def _lc(scores: dict) -> dict:
    return scores["overall"].get("length_controlled") or {}


def lc_cell(lc: dict, key: str = "lc_win_rate") -> str:
    """The length-controlled (or ties-half raw) win rate with its interval; marked when not fitted."""
    text = with_ci(lc, key)
    unfitted = key == "lc_win_rate" and lc.get(key) is not None and not lc["fitted"]
    return f"{text} (length not fitted)" if unfitted else text


def length_line(s: dict) -> str:
    """How many points of A's win rate the length difference explains, or why that is not known."""
    lc, name = _lc(s), _name(s)
    if lc.get("raw_win_rate") is None:
        reason = lc.get("note") or "scores.json predates it and the answers could not be read"
        return f"Length control, {name}: not available ({reason})."
    why = "; the answers carry no token counts" if lc["unit"] == "characters" else ""
    head = (
        f"Length control, {name}: A's answers differ from B's by {_num(lc['mean_length_difference'], spec='+.1f')} "
        f"{lc['unit']} on average (A minus B{why})"
    )
    if not lc["fitted"]:
        return (
            f"{head}; the length term could not be fitted ({lc['note']}), so the length-controlled win rate "
            f"is the raw one (ties half), {with_ci(lc, 'raw_win_rate')}."
        )
    ci = lc.get("explained_points_ci")
    bracket = f" [95% CI {ci[0]:.1f}, {ci[1]:.1f}]" if ci else ""
    return (
        f"{head}; length explains {_num(lc['explained_points'], spec='+.1f')} points{bracket} of the win rate "
        f"(ties half): {with_ci(lc, 'raw_win_rate')} raw, {with_ci(lc, 'lc_win_rate')} at equal length."
    )


def _name(scores: dict) -> str:
    return f"{scores['a']} vs {scores['b']}"


def _summary_rows(comparisons: list[dict]) -> list[list]:
    rows = []
    for s in comparisons:
        o, h, f = s["overall"], s["high_difficulty"], s["judge_failures"]
        rows.append(
            [
                s["a"],
                s["b"],
                f"{o['n']}/{s['items']}",
                o["win"],
                o["tie"],
                o["lose"],
                with_ci(o, "win_rate"),
                lc_cell(_lc(s), "raw_win_rate"),
                lc_cell(_lc(s)),
                with_ci(o, "tie_rate"),
                with_ci(o, "capacity_pct"),
                with_ci(h, "capacity_pct"),
                _pct(s["position_consistency"]["rate"]),
                f"{f['orders_unparsed']}/{f['orders_total']}",
            ]
        )
    return rows


SUMMARY_HEADER = [
    "A",
    "B (baseline)",
    "judged",
    "win",
    "tie",
    "lose",
    "win rate [95% CI]",
    "win rate, ties half [95% CI]",
    "length-controlled win rate [95% CI]",
    "tie rate [95% CI]",
    "capacity [95% CI]",
    "capacity (high diff.) [95% CI]",
    "position consistency",
    "unparsed orders",
]


def _headline(s: dict) -> str:
    o, f = s["overall"], s["judge_failures"]
    if not o["n"]:
        return (
            f"**{_name(s)}**: no pair could be judged ({f['orders_unparsed']} of {f['orders_total']} judge "
            f"outputs unparseable); the judge model {s['judge_model']} does not follow the score format."
        )
    return (
        f"**{_name(s)}**: A wins {with_ci(o, 'win_rate')}, ties {with_ci(o, 'tie_rate')}, "
        f"loses {with_ci(o, 'lose_rate')} of {o['n']} judged pairs; capacity {with_ci(o, 'capacity_pct')} of B "
        f"(high difficulty >= {s['high_difficulty']['threshold']}: {with_ci(s['high_difficulty'], 'capacity_pct')}). "
        f"Judge {s['judge_model']}, prompt {s['prompt_version']}; {f['orders_unparsed']} of {f['orders_total']} "
        f"judge outputs unparseable, {f['pairs_unjudged']} pairs unjudged."
        + (
            f" {s['first_turn_only_items']} multi-turn questions were asked and judged on their first turn only."
            if s.get("first_turn_only_items")
            else ""
        )
    )


def _comparison_section(s: dict, judge_dir: Path, plots_dir: Path, slug: str) -> Section:
    section = Section(f"{_name(s)}")
    section.paragraphs += [_headline(s), length_line(s)]
    skills = sorted(s["per_skill"].items(), key=lambda kv: (kv[1]["capacity_pct"] is None, kv[1]["capacity_pct"] or 0))
    section.tables.append(
        (
            ["skill", "judged", "win", "tie", "lose", "capacity [95% CI]"],
            [[k, b["n"], b["win"], b["tie"], b["lose"], with_ci(b, "capacity_pct")] for k, b in skills],
        )
    )
    section.tables.append(
        (
            ["difficulty", "judged", "win", "tie", "lose", "win rate [95% CI]", "capacity [95% CI]"],
            [
                [k, b["n"], b["win"], b["tie"], b["lose"], with_ci(b, "win_rate"), with_ci(b, "capacity_pct")]
                for k, b in s["per_difficulty"].items()
            ],
        )
    )
    f = s["judge_failures"]
    reasons = "; ".join(f"{reason}: {count}" for reason, count in f["reasons"].items()) or "none"
    rules = ", ".join(f"{rule}: {count}" for rule, count in f["parser_rules"].items()) or "none"
    section.paragraphs.append(
        f"Judge outputs unparseable: {f['orders_unparsed']} of {f['orders_total']} ({reasons}). "
        f"Pairs judged on one order only: {f['pairs_single_order']}. "
        f"Parser rules that matched: {rules}."
    )
    section.images.append(
        (
            plot_capacity_per_skill(_name(s), s["per_skill"], plots_dir / f"capacity_per_skill_{slug}.png"),
            f"Capacity per skill, {_name(s)} (100% = parity with {s['b']})",
        )
    )
    judgments_path = judge_dir / JUDGMENTS_FILE
    if judgments_path.is_file():
        for j in read_jsonl(judgments_path)[:EXAMPLES_PER_COMPARISON]:
            ab = j["orders"]["AB"]
            section.code.append(
                f"item {j['id']} ({j.get('category')}, difficulty {j.get('difficulty')}): verdict {j['verdict']}, "
                f"A {_num(j['score_a'])} / B {_num(j['score_b'])}\n"
                f"judge, order AB ({ab.get('method') or ab.get('error')}):\n{ab['raw'].strip()[:600]}"
            )
    return section


def build_report(
    judge_dirs: list[str | Path],
    out_dir: str | Path,
    extra_sections: list[Section] | None = None,
    title: str = "Evaluation report",
    settings: Aggregation | None = None,
    leading_sections: list[Section] | None = None,
) -> dict[str, Path]:
    """The report; every number is recounted from judgments.jsonl as `settings` say (a run's report
    passes its config's), so the intervals and the high-difficulty subset follow the current settings."""
    out_dir = Path(out_dir)
    plots_dir = out_dir / "plots"
    comparisons = [(Path(d), load_scores(d, settings)) for d in judge_dirs]
    if not comparisons:
        raise InputError("build_report needs at least one judge directory.")
    scores = [s for _, s in comparisons]
    overview = Section("Summary")
    overview.paragraphs += [_headline(s) for s in scores]
    # the summary keeps the length lines that say something; the others are named once
    overview.paragraphs += [length_line(s) for s in scores if _lc(s).get("fitted")]
    unfitted = [_name(s) for s in scores if not _lc(s).get("fitted")]
    if unfitted:
        overview.paragraphs.append(
            f"Length term not fitted for {', '.join(unfitted)}: their length-controlled win rate is the raw "
            f"one, and each comparison's section says why."
        )
    overview.paragraphs.append(
        "Capacity = sum of A's judge scores / sum of B's x 100. Each pair is judged in both "
        "orders at temperature 0; a verdict that changes with the order counts as a tie. Brackets hold the "
        "95% interval from a bootstrap over test items (each item drawn with its verdict from both orders): "
        "on a few items they are wide, and two numbers whose intervals overlap may well be equal. "
        "Length-controlled win rate (AlpacaEval 2's method, eval/length_control.py): a logistic model of each "
        "item's verdict (win 1, tie 0.5, lose 0) on tanh of the answer-length difference over its standard "
        "deviation, read at zero difference, and refitted on every bootstrap draw."
    )
    overview.tables.append((SUMMARY_HEADER, _summary_rows(scores)))
    overview.images.append(
        (
            plot_win_tie_lose([(_name(s), s["overall"]) for s in scores], plots_dir / "win_tie_lose.png"),
            "Win / tie / lose per comparison",
        )
    )
    overview.images.append(
        (
            plot_win_rate_by_difficulty(
                [(_name(s), s["per_difficulty"]) for s in scores], plots_dir / "win_rate_by_difficulty.png"
            ),
            "Win rate by difficulty level",
        )
    )
    sections = [*(leading_sections or []), overview, *(extra_sections or [])]
    sections += [_comparison_section(s, d, plots_dir, d.name) for d, s in comparisons]

    paths = {kind: RunDir(out_dir).report(kind) for kind in ("md", "html", "json")}
    atomic_write_text(paths["md"], render_markdown(title, sections, out_dir))
    atomic_write_text(paths["html"], render_html(title, sections))
    write_json(
        paths["json"],
        {
            "title": title,
            "generated": now(),
            "comparisons": [{"dir": str(d), **s} for d, s in comparisons],
            "plots": sorted(str(p.relative_to(out_dir)) for p in plots_dir.glob("*.png")),
        },
    )
    return paths


def counted(judge_dir: str | Path, settings: Aggregation | None = None) -> tuple[dict, list[dict]]:
    """scores.json and the judgments as `settings` count them (see eval/scores.py: `rescore`), in
    memory: a report never rewrites a judge's files. Default: the bootstrap's default draws, the
    rest as scores.json records. The verdicts themselves are never redone."""
    judge_dir = Path(judge_dir)
    scores = read_json(judge_dir / SCORES_FILE)
    judgments = judge_dir / JUDGMENTS_FILE
    if not judgments.is_file():
        return scores, []
    settings = settings or Aggregation(resamples=EvalConfig.bootstrap_resamples)
    if settings.resamples is not None:
        check_resamples(settings.resamples)
    return rescore(scores, read_jsonl(judgments), settings, stored_lengths(judge_dir, scores))


def load_scores(judge_dir: str | Path, settings: Aggregation | None = None) -> dict:
    return counted(judge_dir, settings)[0]


# ---------------------------------------------------------------- rendering


def _md_cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _link(image: Path, out_dir: Path) -> str:
    """Images under the report directory are linked relatively, so the folder can be moved whole."""
    image, out_dir = image.resolve(), out_dir.resolve()
    return (image.relative_to(out_dir) if image.is_relative_to(out_dir) else image).as_posix()


def render_markdown(title: str, sections: list[Section], out_dir: Path) -> str:
    lines = [f"# {title}", "", f"Generated {now()}.", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for paragraph in section.paragraphs:
            lines += [paragraph, ""]
        for header, rows in section.tables:
            lines += ["| " + " | ".join(map(_md_cell, header)) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in rows]
            lines.append("")
        for image, caption in section.images:
            lines += [f"![{caption}]({_link(Path(image), out_dir)})", ""]
        for block_text in section.code:
            lines += ["```text", block_text.replace("```", "'''"), "```", ""]
    return "\n".join(lines)


# A link to a file beside the report: [text](name.html), a relative name only (no scheme, no folder).
_LOCAL_LINK = re.compile(r"\[([^\]]+)\]\(([\w.-]+)\)")


def _inline_markup(text: str) -> str:
    # The only markdown the paragraphs use is **bold** and links to files beside the report;
    # everything else is escaped.
    parts = html.escape(text).split("**")
    bold = "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))
    return _LOCAL_LINK.sub(lambda m: f"<a href='{m.group(2)}'>{m.group(1)}</a>", bold)


STYLE = """body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:0.9em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f2f2f2}img{max-width:100%;border:1px solid #eee}pre{background:#f7f7f7;padding:0.6em;white-space:pre-wrap}
figure{margin:1em 0}figcaption{color:#555;font-size:0.9em}"""


def render_html(title: str, sections: list[Section]) -> str:
    out = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1><p>Generated {now()}.</p>"
    ]
    for section in sections:
        out.append(f"<h2>{html.escape(section.title)}</h2>")
        out += [f"<p>{_inline_markup(p)}</p>" for p in section.paragraphs]
        for header, rows in section.tables:
            out.append("<table><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows]
            out.append("</table>")
        for image, caption in section.images:
            data = base64.b64encode(Path(image).read_bytes()).decode("ascii")
            out.append(
                f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(caption)}'>"
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
        out += [f"<pre>{html.escape(block_text)}</pre>" for block_text in section.code]
    out.append("</body></html>")
    return "\n".join(out)
