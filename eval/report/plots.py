"""The report's PNG charts, drawn with matplotlib's file-only Agg backend (no display needed).

    plot_win_tie_lose([("C1 vs base", scores["overall"])], Path("plots/win_tie_lose.png"))

Each function takes plain numbers from scores.json and writes one PNG; none reads files itself,
so the lead's ablation curve and any later chart can sit beside these with the same style.

The ablation figure over round counts is `plot_over_rounds`: one `RoundPanel` per chart, each with
`RoundSeries` lines (a value and its interval per round count), so a new measure is one more panel:

    plot_over_rounds([RoundPanel("Verified accuracy", "% of prompts", [RoundSeries("IFEval strict", {0: (31.0,
        [24.0, 38.5]), 1: (35.5, None)})], limits=(0, 100))], [0, 1], Path("plots/ablation_rounds.png"))
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

WIN, TIE, LOSE = "#2e7d32", "#9e9e9e", "#c62828"


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def error_bars(values: list[float], cis: list[list[float] | None]) -> list[list[float]]:
    """matplotlib's error rows (below, above) from [low, high] intervals; no interval, no bar."""
    below = [max(0.0, v - ci[0]) if ci else 0.0 for v, ci in zip(values, cis)]
    above = [max(0.0, ci[1] - v) if ci else 0.0 for v, ci in zip(values, cis)]
    return [below, above]


def plot_win_tie_lose(comparisons: list[tuple[str, dict]], path: Path) -> Path:
    """One horizontal stacked bar per comparison: win / tie / lose shares of the judged pairs."""
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.6 * len(comparisons)))
    names = [name for name, _ in comparisons]
    for row, (_, overall) in enumerate(comparisons):
        if not overall.get("n"):
            ax.text(50, row, "no judged pairs (see judge failures)", ha="center", va="center", fontsize=8)
            continue
        left = 0.0
        for key, color in (("win", WIN), ("tie", TIE), ("lose", LOSE)):
            share = (overall.get(f"{key}_rate") or 0) * 100
            ax.barh(row, share, left=left, color=color, label=key if row == 0 else None)
            if share >= 6:
                ax.text(
                    left + share / 2,
                    row,
                    f"{share:.0f}%\n({overall[key]})",
                    ha="center",
                    va="center",
                    color="white",
                    fontsize=8,
                )
            left += share
        ci = overall.get("win_rate_ci")
        if ci:  # the win share's 95% interval, drawn where the win segment ends
            win = (overall.get("win_rate") or 0) * 100
            ax.errorbar(
                win, row + 0.3, xerr=[[win - 100 * ci[0]], [100 * ci[1] - win]], fmt="none", ecolor="black", capsize=4
            )
    ax.set_yticks(range(len(names)), names)
    ax.set_ylim(len(names) - 0.5, -0.5)  # first comparison on top, rows fixed even when all are empty
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of judged pairs (A's side); black bar: 95% interval of the win share")
    ax.set_title("Win / tie / lose", pad=24)
    if any(overall.get("n") for _, overall in comparisons):
        ax.legend(ncol=3, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False, fontsize=8)
    return _save(fig, path)


def plot_capacity_per_skill(name: str, per_skill: dict[str, dict], path: Path) -> Path:
    """Capacity (A's summed score over B's, %) per skill, sorted, with the 100% parity line."""
    rows = sorted(
        (
            (skill, b["capacity_pct"], b["n"], b.get("capacity_pct_ci"))
            for skill, b in per_skill.items()
            if b.get("capacity_pct") is not None
        ),
        key=lambda r: r[1],
    )
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.28 * max(1, len(rows))))
    if rows:
        values = [r[1] for r in rows]
        ax.barh(range(len(rows)), values, color=[WIN if v >= 100 else LOSE for v in values], alpha=0.8)
        ax.errorbar(
            values, range(len(rows)), xerr=error_bars(values, [r[3] for r in rows]), fmt="none", ecolor="black"
        )
        ax.set_yticks(range(len(rows)), [f"{r[0]} (n={r[2]})" for r in rows], fontsize=8)
        for i, value in enumerate(values):
            ax.text(value, i + 0.3, f" {value:.0f}%", va="center", fontsize=7)
        highs = [r[3][1] if r[3] else r[1] for r in rows]
        ax.set_xlim(0, max(110, max(highs) * 1.1))
    else:
        ax.text(0.5, 0.5, "no judged pairs", ha="center", va="center", transform=ax.transAxes)
    ax.axvline(100, color="black", linewidth=0.8, linestyle="--")
    ax.set_xlabel("capacity % (sum of A's scores / sum of B's scores x 100)")
    ax.set_title(f"Capacity per skill: {name}")
    return _save(fig, path)


def plot_win_rate_by_difficulty(comparisons: list[tuple[str, dict]], path: Path) -> Path:
    """Win rate (and win + half the ties) per difficulty level, one line per comparison."""
    fig, ax = plt.subplots(figsize=(8, 4))
    for name, per_difficulty in comparisons:
        levels = sorted((int(k), b) for k, b in per_difficulty.items() if k.isdigit() and b["n"])
        if not levels:
            continue
        xs = [level for level, _ in levels]
        win = [b["win_rate"] * 100 for _, b in levels]
        cis = [[100 * v for v in b["win_rate_ci"]] if b.get("win_rate_ci") else None for _, b in levels]
        bars = ax.errorbar(xs, win, yerr=error_bars(win, cis), marker="o", capsize=3, label=f"{name}: win rate")
        line = bars.lines[0]
        ax.plot(
            xs,
            [(b["win_rate"] + b["tie_rate"] / 2) * 100 for _, b in levels],
            linestyle=":",
            color=line.get_color(),
            label=f"{name}: win + tie/2",
        )
    ax.axhline(50, color="black", linewidth=0.6, linestyle="--")
    ax.set_ylim(0, 100)
    ax.set_xticks(range(1, 11))
    ax.set_xlabel("difficulty")
    ax.set_ylabel("% of judged pairs")
    ax.set_title("Win rate by difficulty")
    if len(ax.lines) > 1:  # the 50% guide line alone means nothing was judged
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no judged pairs", ha="center", va="center", transform=ax.transAxes)
    return _save(fig, path)


@dataclass
class RoundSeries:
    """One line of a panel: its legend name and, per round count, (value, [low, high] or None)."""

    name: str
    points: dict[int, tuple[float, list[float] | None]]


@dataclass
class RoundPanel:
    """One chart of the figure over round counts. The y axis is `limits` when given; else it spans the
    values, their intervals and `guide` (a dashed line: parity, an even split, the fixed model) and at
    least `min_span`, so a small difference is drawn small, never stretched to fill the axis."""

    title: str
    ylabel: str
    series: list[RoundSeries] = field(default_factory=list)
    guide: float | None = None
    limits: tuple[float, float] | None = None
    min_span: float = 0.0
    floor: float | None = None  # the axis never goes below this (capacity cannot be negative)
    empty: str = "nothing to show"


def _axis_range(panel: RoundPanel) -> tuple[float, float]:
    if panel.limits:
        return panel.limits
    ends = [v for s in panel.series for value, ci in s.points.values() for v in (value, *(ci or []))]
    ends += [panel.guide] if panel.guide is not None else []
    low, high = (min(ends), max(ends)) if ends else (0.0, 1.0)
    span = max(panel.min_span, (high - low) * 1.2)
    bottom = (low + high) / 2 - span / 2
    if panel.floor is not None:
        bottom = max(panel.floor, bottom)
    return bottom, bottom + span


def plot_over_rounds(panels: list[RoundPanel], rounds: list[int], path: Path) -> Path:
    """The panels side by side (two columns up to four panels, then three), x = evolution rounds; the
    series of a panel sit slightly apart so their error bars stay readable."""
    columns = min(len(panels), 2 if len(panels) <= 4 else 3)
    lines = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(lines, columns, figsize=(5 * columns, 3.8 * lines), squeeze=False)
    for axis in axes.flat[len(panels) :]:
        axis.set_visible(False)
    for axis, panel in zip(axes.flat, panels):
        shown = [s for s in panel.series if s.points]
        for k, series in enumerate(shown):
            shift = (k - (len(shown) - 1) / 2) * 0.06
            ks = sorted(series.points)
            values = [series.points[r][0] for r in ks]
            bars = error_bars(values, [series.points[r][1] for r in ks])
            axis.errorbar([r + shift for r in ks], values, yerr=bars, marker="o", capsize=4, label=series.name)
        if panel.guide is not None:
            axis.axhline(panel.guide, color="black", linewidth=0.6, linestyle="--")
        if not shown:
            axis.text(0.5, 0.5, panel.empty, ha="center", va="center", transform=axis.transAxes, fontsize=8)
        axis.set_ylim(*_axis_range(panel))
        axis.set(title=panel.title, xlabel="evolution rounds", ylabel=panel.ylabel)
        axis.title.set_fontsize(10)
        axis.set_xticks(sorted(rounds))
        axis.grid(alpha=0.3)
        if shown:
            axis.legend(fontsize=8)
    return _save(fig, path)
