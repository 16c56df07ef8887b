"""The round-count ablation of a run: one row per C<k>, the survival rows, and their plots.

    rows = ablation_rows(Path("runs/tiny"), [0, 1, 2])   # the run report (pipeline/report.py) joins these

A row of report.json["ablation"]: round count k, training rows of C<k>, evolved share, kept rate of
round k, and against C0 and against the reference (the evolver's own answers): win/tie/lose,
win rate, capacity (% of the baseline's summed scores), high-difficulty win rate.
Everything is read from files on disk, so the report can be rebuilt at any time.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.core.jsonio import read_json, read_jsonl
from pipeline.core.paths import REFERENCE


def _comparison(run_dir: Path, a: str, b: str) -> dict | None:
    path = run_dir / "judge" / f"{a}__vs__{b}" / "scores.json"
    if not path.is_file():
        return None
    scores = read_json(path)
    overall, high = scores["overall"], scores.get("high_difficulty", {})
    return {
        "n": overall["n"],
        "win": overall["win"],
        "tie": overall["tie"],
        "lose": overall["lose"],
        "win_rate": overall["win_rate"],
        "capacity_pct": overall["capacity_pct"],
        "high_difficulty_win_rate": high.get("win_rate"),
        "high_difficulty_n": high.get("n", 0),
        "judge_failures": scores.get("judge_failures", {}).get("orders_unparsed"),
    }


def ablation_rows(run_dir: Path, rounds: list[int]) -> list[dict]:
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
                "vs_C0": _comparison(run_dir, f"C{k}", "C0") if k else None,
                "vs_reference": _comparison(run_dir, f"C{k}", REFERENCE),
            }
        )
    return rows


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
    for key, name in (("vs_C0", "vs C0"), ("vs_reference", "vs reference")):
        points = [(r["rounds"], r[key]) for r in rows if r[key] and r[key]["n"]]
        if points:
            left.plot([k for k, _ in points], [c["capacity_pct"] or 0 for _, c in points], marker="o", label=name)
            right.plot([k for k, _ in points], [100 * (c["win_rate"] or 0) for _, c in points], marker="o", label=name)
    left.set(title="Capacity (% of baseline score) by rounds", xlabel="evolution rounds", ylabel="capacity %")
    right.set(title="Win rate by rounds", xlabel="evolution rounds", ylabel="win rate %")
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
        bottom = [0] * len(xs)
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
