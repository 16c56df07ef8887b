"""The round-count ablation of a run: one row per C<k>, the survival rows, and their plots.

    rows = ablation_rows(Path("runs/tiny"), [0, 1, 2])   # the run report (pipeline/report.py) joins these

A row of report.json["ablation"]: round count k, training rows of C<k>, evolved share, kept rate of
round k, and against C0 and against the reference (the evolver's own answers): win/tie/lose,
win rate, capacity (% of the baseline's summed scores), high-difficulty win rate, and the
length-controlled win rate (eval/length_control.py), each with its 95% interval. `round_differences`
compares every two round counts judged against the same baseline, paired over their common items,
and says in words whether the difference is significant. `run_strengths` ranks every model of the
run by Bradley-Terry strength over all its comparisons (eval/ranking.py). Everything is read from
files on disk, so the report can be rebuilt at any time.
"""

from __future__ import annotations

from pathlib import Path

from eval.judge import SCORES_FILE, stored_lengths
from eval.length_control import Lengths, paired_lc_difference
from eval.ranking import bradley_terry
from eval.report.evaluation import counted, load_scores, with_ci
from eval.report.plots import RoundPanel, RoundSeries, plot_over_rounds
from eval.scores import Aggregation, paired_difference
from pipeline.config.eval import EvalConfig
from pipeline.core import fmt
from pipeline.core.jsonio import read_json, read_jsonl
from pipeline.core.paths import REFERENCE, RunDir
from pipeline.core.seeds import derive_seed


def _comparison(run_dir: Path, a: str, b: str, settings: Aggregation) -> dict | None:
    judge_dir = RunDir(run_dir).judge_pair(a, b)
    if not (judge_dir / "scores.json").is_file():
        return None
    scores = load_scores(judge_dir, settings)
    overall, high = scores["overall"], scores.get("high_difficulty", {})
    lc = overall.get("length_controlled") or {}
    return {
        "n": overall["n"],
        "win": overall["win"],
        "tie": overall["tie"],
        "lose": overall["lose"],
        "win_rate": overall["win_rate"],
        "win_rate_ci": overall.get("win_rate_ci"),
        "tie_rate": overall["tie_rate"],
        "tie_rate_ci": overall.get("tie_rate_ci"),
        "capacity_pct": overall["capacity_pct"],
        "capacity_pct_ci": overall.get("capacity_pct_ci"),
        "high_difficulty_win_rate": high.get("win_rate"),
        "high_difficulty_win_rate_ci": high.get("win_rate_ci"),
        "high_difficulty_n": high.get("n", 0),
        "judge_failures": scores.get("judge_failures", {}).get("orders_unparsed"),
        "length_controlled": lc,
    }


def ablation_rows(run_dir: Path, rounds: list[int], settings: Aggregation | None = None) -> list[dict]:
    settings = settings or Aggregation()
    stats_path = RunDir(run_dir).evolve_stats
    stats = read_json(stats_path)["rounds"] if stats_path.is_file() else []
    rows = []
    for k in sorted(rounds):
        data = RunDir(run_dir).data(k)
        records = read_jsonl(data) if data.is_file() else []
        evolved = sum(1 for r in records if r.get("round", 0) > 0)
        round_stats = stats[k] if k < len(stats) else {}
        rows.append(
            {
                "rounds": k,
                "label": f"C{k}",
                "training_rows": len(records),
                "evolved_share": round(evolved / len(records), 3) if records else None,
                "kept_rate_of_round": round(round_stats["kept"] / round_stats["attempted"], 3)
                if k > 0 and round_stats.get("attempted")
                else None,
                "vs_C0": _comparison(run_dir, f"C{k}", "C0", settings) if k else None,
                "vs_reference": _comparison(run_dir, f"C{k}", REFERENCE, settings),
            }
        )
    return rows


def _judged(run_dir: Path, a: str, b: str, settings: Aggregation) -> tuple[list[dict], Lengths | None] | None:
    """A's judgments against B as `settings` count them, and the answer lengths for the length-controlled
    win rate; None when A was not judged against B."""
    judge_dir = RunDir(run_dir).judge_pair(a, b)
    if not (judge_dir / "judgments.jsonl").is_file():
        return None
    return counted(judge_dir, settings)[1], stored_lengths(judge_dir, read_json(judge_dir / SCORES_FILE))


def _signed(value: float) -> str:
    return f"{value:+.1f}"


def difference_sentence(later: str, earlier: str, baseline: str, diff: dict) -> str:
    """One line a reader can act on: the capacity and win-rate differences, their intervals, the verdict."""
    head = f"{later} vs {earlier} (both against {baseline})"
    cap, win = diff["capacity_points"], diff["win_rate_points"]
    if cap["difference"] is None or not cap["ci"]:
        return f"{head}: no interval ({diff['items']} common judged items, resamples {diff['resamples']})."
    word = "significant" if cap["significant"] else "not significant"
    text = (
        f"{head}: {_signed(cap['difference'])} capacity points, 95% CI [{cap['ci'][0]:.1f}, {cap['ci'][1]:.1f}]: "
        f"{word} on {diff['items']} items"
    )
    if win["ci"]:
        win_word = "significant" if win["significant"] else "not significant"
        text += (
            f"; win rate {_signed(win['difference'])} points, 95% CI [{win['ci'][0]:.1f}, {win['ci'][1]:.1f}]: "
            f"{win_word}"
        )
    return text + "."


def round_differences(run_dir: Path, rounds: list[int], settings: Aggregation) -> list[dict]:
    """C<b> minus C<a> for every a < b judged against the same baseline (the reference, and C0)."""
    out = []
    ordered = sorted(rounds)
    judged = {  # each comparison read once, though it takes part in several differences
        (f"C{k}", baseline): _judged(run_dir, f"C{k}", baseline, settings)
        for baseline in (REFERENCE, "C0")
        for k in ordered
        if f"C{k}" != baseline
    }
    for baseline in (REFERENCE, "C0"):
        for i, a in enumerate(ordered):
            for b in ordered[i + 1 :]:
                earlier, later = f"C{a}", f"C{b}"
                if baseline in (earlier, later):
                    continue  # C<k> vs C0 against C0 itself: that is the C<k> vs C0 comparison
                if judged[earlier, baseline] is None or judged[later, baseline] is None:
                    continue
                (first, first_lengths), (second, second_lengths) = judged[earlier, baseline], judged[later, baseline]
                seed = derive_seed(settings.seed or 0, earlier, later, baseline)
                diff = paired_difference(first, second, settings.resamples or 0, seed)
                if diff is None:
                    continue
                if first_lengths is not None and second_lengths is not None:
                    lengths = (first_lengths, second_lengths)
                    diff["lc_win_rate_points"] = paired_lc_difference(
                        first, second, lengths, settings.resamples or 0, seed
                    )
                sentence = difference_sentence(later, earlier, baseline, diff)
                out.append({"a": earlier, "b": later, "baseline": baseline, **diff, "sentence": sentence})
    return out


def survival(run_dir: Path) -> list[dict]:
    """Elimination counts per rule for every evolution round (the survival curve)."""
    stats_path = RunDir(run_dir).evolve_stats
    if not stats_path.is_file():
        return []
    return [
        {"round": s["round"], "attempted": s["attempted"], "kept": s["kept"], "eliminated": s["eliminated"]}
        for s in read_json(stats_path)["rounds"]
        if s["round"] > 0
    ]


def run_strengths(run_dir: Path, settings: Aggregation) -> dict:
    """Bradley-Terry strengths from every comparison under <run>/judge/, counted as `settings` say;
    the draws follow settings (else the comparisons' recorded bootstrap), seeded from the run seed."""
    comparisons, recorded = [], {}
    for judge_dir in sorted(p.parent for p in RunDir(run_dir).judge.glob("*/scores.json")):
        scores, judgments = counted(judge_dir, settings)
        comparisons.append((scores["a"], scores["b"], judgments))
        recorded = recorded or scores.get("bootstrap") or {}
    resamples = settings.resamples
    if resamples is None:
        resamples = recorded.get("resamples", EvalConfig.bootstrap_resamples)
    seed = settings.seed if settings.seed is not None else recorded.get("seed", 0)
    return bradley_terry(comparisons, resamples, derive_seed(seed, "bradley_terry", "bootstrap"))


def _percent(value: float | None, ci: list[float] | None) -> tuple[float, list[float] | None] | None:
    return None if value is None else (100 * value, [100 * v for v in ci] if ci else None)


def round_panels(rows: list[dict], strengths: dict | None) -> list[RoundPanel]:
    """The charts over round counts: capacity, win rate, length-controlled win rate, BT strength."""
    baselines = (("vs_C0", "vs C0"), ("vs_reference", "vs reference"))

    def series(pick) -> list[RoundSeries]:
        out = []
        for key, name in baselines:
            points = {r["rounds"]: pick(r[key]) for r in rows if r[key] and r[key]["n"]}
            out.append(RoundSeries(name, {k: p for k, p in points.items() if p is not None}))
        return out

    def lc(c: dict):
        block = c.get("length_controlled") or {}
        return _percent(block.get("lc_win_rate"), block.get("lc_win_rate_ci"))

    panels = [
        # capacity: 100 (parity) is always on the axis and the axis spans at least 50 points, so a
        # two-point difference looks like two points, not like a cliff
        RoundPanel(
            "Capacity (% of baseline score), 95% CI",
            "capacity %",
            series(lambda c: (c["capacity_pct"], c.get("capacity_pct_ci")) if c["capacity_pct"] is not None else None),
            guide=100,
            min_span=50,
            floor=0,
        ),
        RoundPanel(
            "Win rate, 95% CI",
            "win rate %",
            series(lambda c: _percent(c["win_rate"] or 0, c.get("win_rate_ci"))),
            limits=(0, 100),
        ),
        RoundPanel(
            "Length-controlled win rate (ties half), 95% CI",
            "win rate % at equal length",
            series(lc),
            guide=50,
            limits=(0, 100),
        ),
    ]
    models = (strengths or {}).get("models", {})
    fixed = (strengths or {}).get("fixed")
    points = {}
    for r in rows:
        model = models.get(r["label"]) or {}
        if model.get("strength") is not None:
            points[r["rounds"]] = (model["strength"], model.get("strength_ci"))
    panels.append(
        RoundPanel(
            f"Bradley-Terry strength ({fixed} = 0), 95% CI",
            "strength (logit)",
            [RoundSeries("all judged pairs", points)],
            guide=0,
            min_span=2.0,  # +-1 logit around the fixed model: 27% to 73% expected share
            empty="no strength (see the report)",
        )
    )
    return panels


def plot_ablation(
    rows: list[dict],
    survival_rows: list[dict],
    plots: Path,
    strengths: dict | None = None,
    extra_panels: list[RoundPanel] | None = None,
) -> list[tuple[Path, str]]:
    """The figure over round counts (round_panels, then `extra_panels`) and the survival bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots.mkdir(parents=True, exist_ok=True)
    panels = round_panels(rows, strengths) + (extra_panels or [])
    path = plot_over_rounds(panels, [r["rounds"] for r in rows], plots / "ablation_rounds.png")
    images = [(path, "Against the number of evolution rounds: " + "; ".join(p.title for p in panels))]

    if survival_rows:
        fig, axis = plt.subplots(figsize=(7, 4))
        rules = [rule for rule in survival_rows[0]["eliminated"] if any(s["eliminated"][rule] for s in survival_rows)]
        xs = [s["round"] for s in survival_rows]
        axis.bar(xs, [s["kept"] for s in survival_rows], label="kept", color="#4c9a2a")
        bottom = [s["kept"] for s in survival_rows]
        for rule in rules:
            heights = [s["eliminated"][rule] for s in survival_rows]
            axis.bar(xs, heights, bottom=bottom, label=rule)
            bottom = [b + h for b, h in zip(bottom, heights)]
        axis.set(title="Survival per round: kept and eliminated by rule", xlabel="round", ylabel="attempts")
        axis.set_xticks(xs)
        axis.legend(fontsize=8)
        fig.tight_layout()
        path = plots / "survival.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        images.append((path, "Evolution attempts per round: kept, and eliminated by each rule"))
    return images


def _order(label: str, fixed: str | None) -> tuple:
    rounds = label[1:] if label.startswith("C") and label[1:].isdigit() else None
    return (label != fixed, rounds is None, int(rounds) if rounds else 0, label)


def strength_table(strengths: dict) -> tuple[list[str], list[list]]:
    """(header, rows) of the Bradley-Terry strengths: the fixed model first, then C0..CM."""
    fixed = strengths.get("fixed")
    header = ["model", "BT strength (logit) [95% CI]", f"implied win rate vs {fixed} [95% CI]", "verdicts"]
    rows = []
    for label in sorted(strengths.get("models", {}), key=lambda name: _order(name, fixed)):
        m = strengths["models"][label]
        ci = m.get("strength_ci")
        strength = fmt.num(m["strength"], spec="+.2f")
        if ci and m["strength"] is not None:
            strength += f" [{ci[0]:+.2f}, {ci[1]:+.2f}]"
        rows.append(
            [label + (" (fixed)" if label == fixed else ""), strength, with_ci(m, "win_rate_vs_fixed"), m["verdicts"]]
        )
    return header, rows


def strength_sentence(strengths: dict) -> str:
    """What the strengths are and what they rest on, and which models have none."""
    if not strengths.get("models"):
        return "Bradley-Terry strengths: no judged comparison."
    text = (
        f"Bradley-Terry strengths: one ranking from all {strengths['verdicts']} judged verdicts of the run "
        f"({strengths['items']} test items; ties count half a win to each side), {strengths['fixed']} fixed at 0; "
        f"a strength of s means an expected share of sigmoid(s) against {strengths['fixed']}. Intervals: "
        f"{strengths['resamples']} bootstrap draws of test items, each item with its verdicts in every comparison."
    )
    return text + (f" {strengths['note']}" if strengths.get("note") else "")
