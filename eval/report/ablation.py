"""The round-count ablation of a run: one row per C<k>, the survival rows, and their plots.

    rows = ablation_rows(Path("runs/tiny"), [0, 1, 2])   # the run report (pipeline/report.py) joins these

A row of report.json["ablation"]: round count k, training rows of C<k>, evolved share, kept rate of
round k, and against C0 and against the reference (the evolver's own answers): win/tie/lose,
win rate, capacity (% of the baseline's summed scores), high-difficulty win rate, each rate with
its 95% interval. `round_differences` compares every two round counts judged against the same
baseline, paired over their common items, and says in words whether the difference is significant.
Everything is read from files on disk, so the report can be rebuilt at any time.
"""

from __future__ import annotations

from pathlib import Path

from eval.report.evaluation import counted, load_scores
from eval.report.plots import error_bars
from eval.scores import Aggregation, paired_difference
from pipeline.core.jsonio import read_json, read_jsonl
from pipeline.core.paths import REFERENCE
from pipeline.core.seeds import derive_seed


def _comparison(run_dir: Path, a: str, b: str, settings: Aggregation) -> dict | None:
    judge_dir = run_dir / "judge" / f"{a}__vs__{b}"
    if not (judge_dir / "scores.json").is_file():
        return None
    scores = load_scores(judge_dir, settings)
    overall, high = scores["overall"], scores.get("high_difficulty", {})
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
    }


def ablation_rows(run_dir: Path, rounds: list[int], settings: Aggregation | None = None) -> list[dict]:
    settings = settings or Aggregation()
    stats_path = run_dir / "evolve" / "stats.json"
    stats = read_json(stats_path)["rounds"] if stats_path.is_file() else []
    rows = []
    for k in sorted(rounds):
        data = run_dir / "data" / f"C{k}.jsonl"
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


def _judgments(run_dir: Path, a: str, b: str, settings: Aggregation) -> list[dict] | None:
    judge_dir = run_dir / "judge" / f"{a}__vs__{b}"
    return counted(judge_dir, settings)[1] if (judge_dir / "judgments.jsonl").is_file() else None


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
    for baseline in (REFERENCE, "C0"):
        for i, a in enumerate(ordered):
            for b in ordered[i + 1 :]:
                earlier, later = f"C{a}", f"C{b}"
                if baseline in (earlier, later):
                    continue  # C<k> vs C0 against C0 itself: that is the C<k> vs C0 comparison
                first = _judgments(run_dir, earlier, baseline, settings)
                second = _judgments(run_dir, later, baseline, settings)
                if first is None or second is None:
                    continue
                seed = derive_seed(settings.seed or 0, earlier, later, baseline)
                diff = paired_difference(first, second, settings.resamples or 0, seed)
                if diff is None:
                    continue
                sentence = difference_sentence(later, earlier, baseline, diff)
                out.append({"a": earlier, "b": later, "baseline": baseline, **diff, "sentence": sentence})
    return out


def survival(run_dir: Path) -> list[dict]:
    """Elimination counts per rule for every evolution round (the survival curve)."""
    stats_path = run_dir / "evolve" / "stats.json"
    if not stats_path.is_file():
        return []
    return [
        {"round": s["round"], "attempted": s["attempted"], "kept": s["kept"], "eliminated": s["eliminated"]}
        for s in read_json(stats_path)["rounds"]
        if s["round"] > 0
    ]


def plot_ablation(rows: list[dict], survival_rows: list[dict], plots: Path) -> list[tuple[Path, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots.mkdir(parents=True, exist_ok=True)
    images = []
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    low, high = 100.0, 100.0
    for shift, (key, name) in ((-0.04, ("vs_C0", "vs C0")), (0.04, ("vs_reference", "vs reference"))):
        points = [(r["rounds"], r[key]) for r in rows if r[key] and r[key]["n"]]
        if not points:
            continue
        xs = [k + shift for k, _ in points]  # side by side, so overlapping error bars stay readable
        capacity = [c["capacity_pct"] for _, c in points]
        cap_err = error_bars(capacity, [c.get("capacity_pct_ci") for _, c in points])
        left.errorbar(xs, capacity, yerr=cap_err, marker="o", capsize=4, label=name)
        win = [100 * (c["win_rate"] or 0) for _, c in points]
        win_ci = [[100 * v for v in c["win_rate_ci"]] if c.get("win_rate_ci") else None for _, c in points]
        right.errorbar(xs, win, yerr=error_bars(win, win_ci), marker="o", capsize=4, label=name)
        ends = [v for c in capacity for v in (c, c)] + [v for _, c in points for v in (c.get("capacity_pct_ci") or [])]
        low, high = min(low, *ends), max(high, *ends)
    # Capacity: 100 (parity) is always on the axis and the axis spans at least 50 points, so a
    # two-point difference looks like two points, not like a cliff.
    span = max(50.0, high - low + 10)
    centre = (low + high) / 2
    left.set_ylim(max(0.0, centre - span / 2), max(0.0, centre - span / 2) + span)
    left.axhline(100, color="black", linewidth=0.6, linestyle="--")
    right.set_ylim(0, 100)
    left.set(title="Capacity (% of baseline score), 95% CI", xlabel="evolution rounds", ylabel="capacity %")
    right.set(title="Win rate, 95% CI", xlabel="evolution rounds", ylabel="win rate %")
    for axis in (left, right):
        axis.set_xticks(sorted(r["rounds"] for r in rows))
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend()
    fig.tight_layout()
    path = plots / "ablation_rounds.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    images.append((path, "Capacity and win rate against the number of evolution rounds"))

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
