"""Plots and the report section of `evol analyze` (the numbers come from eval/analysis/analyze.py).

    evol analyze runs/tiny      # writes runs/tiny/analysis/plots/*.png; `evol run` adds the section

`analysis_section(run_dir)` turns analysis/analysis.json into a report section and
`analysis_report_json(run_dir)` into the numbers for report.json.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.core.fmt import MISSING, num
from pipeline.core.fmt import pct as _pct
from pipeline.core.jsonio import read_json

STAGE = "analysis"
ANALYSIS_FILE = "analysis.json"


def plot_all(result: dict, points: list[tuple[dict, int]], xy: np.ndarray, plots: Path) -> list[Path]:
    """The four PNGs of the analysis (difficulty only when rated, survival only with evolution rounds)."""
    import matplotlib

    matplotlib.use("Agg")
    plots.mkdir(parents=True, exist_ok=True)
    written = [
        plot_difficulty(result, plots / "difficulty_per_round.png"),
        plot_diversity(result, plots / "diversity_per_round.png"),
        plot_projection(result, points, xy, plots / "projection_by_round.png"),
        plot_survival(result, plots / "survival_per_operation.png"),
    ]
    return [path for path in written if path]


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_difficulty(result: dict, path: Path) -> Path | None:
    """Shares of each score per round, not a box plot: a small judge's ratings are often bimodal
    (1 or 10), which a box and its mean would hide. None when nothing was rated."""
    import matplotlib.pyplot as plt

    rated = [r for r in result["per_round"] if r["difficulty"] and r["difficulty"]["rated"]]
    if not rated:
        return None
    counts = np.array([[r["difficulty"]["distribution"][str(score)] for r in rated] for score in range(1, 11)])
    shares = counts / counts.sum(axis=0, keepdims=True)
    fig, ax = plt.subplots(figsize=(2.4 + 0.9 * len(rated), 4.6))
    image = ax.imshow(
        shares,
        origin="lower",
        cmap="Blues",
        vmin=0,
        vmax=1,
        aspect="auto",
        extent=(-0.5, len(rated) - 0.5, 0.5, 10.5),
    )
    for x in range(len(rated)):
        for score in range(1, 11):
            if counts[score - 1, x]:
                ax.text(
                    x,
                    score,
                    counts[score - 1, x],
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if shares[score - 1, x] > 0.5 else "black",
                )
    ax.plot(range(len(rated)), [r["difficulty"]["mean"] for r in rated], color="#c62828", marker="D")
    ax.set_xticks(range(len(rated)), [f"{r['round']}\nn={r['difficulty']['rated']}" for r in rated])
    ax.set_yticks(range(1, 11))
    ax.set(title="Judge-rated difficulty per round (red: mean)", xlabel="round (0: seeds)", ylabel="difficulty")
    fig.colorbar(image, ax=ax, label="share of the round's ratings")
    return _save(fig, path)


def plot_diversity(result: dict, path: Path) -> Path:
    """The three diversity numbers per round: round k alone, and the cumulative set C0..Ck."""
    import matplotlib.pyplot as plt

    rounds = result["per_round"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    keys = (
        ("mean_pairwise_cosine_distance", "mean pairwise cosine distance"),
        ("clusters_covered", f"k-means clusters covered (of {result['clusters']['k']})"),
        ("cluster_entropy_bits", "cluster-size entropy (bits)"),
    )
    for ax, (key, name) in zip(axes, keys):
        for series, label in ((rounds, "round k alone"), (result["cumulative"], "C0..Ck")):
            ks = [i for i, r in enumerate(series) if r["diversity"][key] is not None]
            ax.plot(ks, [series[i]["diversity"][key] for i in ks], marker="o", label=label)
        ax.set(title=name, xlabel="round k")
        ax.set_xticks(range(len(rounds)))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return _save(fig, path)


def plot_projection(result: dict, points: list[tuple[dict, int]], xy: np.ndarray, path: Path) -> Path | None:
    """The 2-D projection coloured by round; None with fewer than two points."""
    import matplotlib.pyplot as plt

    if len(points) < 2:
        return None
    fig, ax = plt.subplots(figsize=(6, 5))
    ks = np.array([k for _, k in points])
    for k in sorted(set(ks.tolist())):
        ax.scatter(xy[ks == k, 0], xy[ks == k, 1], s=14, alpha=0.75, label=f"round {k}")
    ax.set(
        title=f"Kept instructions, {result['settings']['projection'].upper()} of MiniLM embeddings",
        xticks=[],
        yticks=[],
    )
    ax.legend(fontsize=8, markerscale=1.5)
    return _save(fig, path)


def plot_survival(result: dict, path: Path) -> Path | None:
    """Kept and eliminated (per rule that fired at all) attempts per operation; None without attempts."""
    import matplotlib.pyplot as plt

    ops = {op: v for op, v in result["per_operation"].items() if v["attempted"]}
    if not ops:
        return None
    fig, ax = plt.subplots(figsize=(1.5 + 1.1 * len(ops), 4))
    names, bottom = list(ops), np.zeros(len(ops))
    ax.bar(names, [ops[op]["kept"] for op in names], color="#4c9a2a", label="kept")
    bottom += [ops[op]["kept"] for op in names]
    for rule in (
        rule for rule in next(iter(ops.values()))["eliminated"] if any(v["eliminated"][rule] for v in ops.values())
    ):
        heights = [ops[op]["eliminated"][rule] for op in names]
        ax.bar(names, heights, bottom=bottom, label=rule)
        bottom += heights
    for i, op in enumerate(names):
        ax.text(i, bottom[i], f"{100 * ops[op]['kept_rate']:.0f}% kept", ha="center", va="bottom", fontsize=8)
    ax.set(title="Survival per operation (all evolution rounds)", ylabel="attempts", ylim=(0, 1.15 * max(bottom)))
    ax.tick_params(axis="x", labelrotation=30)
    ax.legend(fontsize=7)
    return _save(fig, path)


def _n(value, digits: int = 2) -> str:
    return num(value, spec=f".{digits}f" if isinstance(value, float) else "")


def analysis_section(run_dir: str | Path):
    """The report section (eval.report.evaluation.Section) built from analysis/analysis.json; None before analysis."""
    from eval.report.evaluation import Section

    path = Path(run_dir) / STAGE / ANALYSIS_FILE
    if not path.is_file():
        return None
    a = read_json(path)
    section = Section("Data analysis: complexity, diversity and survival per round")
    if a["per_round"][0]["difficulty"]:
        section.paragraphs.append(difficulty_paragraph(a))
    section.paragraphs.append(diversity_paragraph(a))
    section.tables += [round_table(a["per_round"]), set_table(a["cumulative"]), operation_table(a["per_operation"])]
    section.images += plot_images(Path(run_dir), a["plots"])
    return section


def difficulty_paragraph(a: dict) -> str:
    first, last, f = a["per_round"][0], a["per_round"][-1], a["judge_failures"]
    return (
        f"Difficulty 1-10 rated by the judge {a['judge_model']} (prompt {a['prompt_version']}, temperature 0) on "
        f"up to {a['settings']['difficulty_per_round'] or 'all'} kept instructions per round: mean "
        f"{_n(first['difficulty']['mean'])} for the seeds, {_n(last['difficulty']['mean'])} in round {last['round']}. "
        f"{f['unparsed']} of {f['rated']} ratings unreadable."
    )


def diversity_paragraph(a: dict) -> str:
    sets = a["cumulative"]
    c0, cm = sets[0]["diversity"], sets[-1]["diversity"]
    return (
        f"Diversity on {a['embedding_model']} embeddings: mean pairwise cosine distance {_n(c0['mean_pairwise_cosine_distance'], 3)} "
        f"in C0 and {_n(cm['mean_pairwise_cosine_distance'], 3)} in C{len(sets) - 1}; C{len(sets) - 1} covers "
        f"{cm['clusters_covered']} of {a['clusters']['k']} k-means clusters (fitted on {a['clusters']['fitted_on']} "
        f"instructions), entropy {_n(cm['cluster_entropy_bits'])} bits. Constraint clauses count clauses that demand, "
        f"bound, forbid or fix a format; attached data means a code block, table, JSON, XML, SQL, code or CSV rows."
    )


def round_table(rounds: list[dict]) -> tuple[list[str], list[list]]:
    header = [
        "round",
        "kept / attempted",
        "words",
        "constraint clauses",
        "attached data",
        "difficulty (rated)",
        "cosine distance",
        "clusters",
        "entropy (bits)",
    ]
    rows = [
        [
            r["round"],
            f"{r['survival']['kept']}/{r['survival']['attempted']}"
            if r["survival"]
            else f"{r['text']['kept']['n']} seeds",
            _n(r["text"]["kept"]["mean_words"], 1),
            _n(r["text"]["kept"]["mean_constraint_clauses"]),
            _pct(r["text"]["kept"]["attached_data_share"]),
            f"{_n(r['difficulty']['mean'])} ({r['difficulty']['rated']})" if r["difficulty"] else MISSING,
            _n(r["diversity"]["mean_pairwise_cosine_distance"], 3),
            r["diversity"]["clusters_covered"],
            _n(r["diversity"]["cluster_entropy_bits"]),
        ]
        for r in rounds
    ]
    return header, rows


def set_table(sets: list[dict]) -> tuple[list[str], list[list]]:
    header = [
        "set",
        "rows",
        "words",
        "constraint clauses",
        "attached data",
        "difficulty (weighted)",
        "cosine distance",
        "clusters",
        "entropy (bits)",
    ]
    rows = [
        [
            c["set"],
            c["rows"],
            _n(c["text"]["mean_words"], 1),
            _n(c["text"]["mean_constraint_clauses"]),
            _pct(c["text"]["attached_data_share"]),
            _n(c["difficulty_mean"]),
            _n(c["diversity"]["mean_pairwise_cosine_distance"], 3),
            c["diversity"]["clusters_covered"],
            _n(c["diversity"]["cluster_entropy_bits"]),
        ]
        for c in sets
    ]
    return header, rows


def operation_table(per_operation: dict[str, dict]) -> tuple[list[str], list[list]]:
    """One row per operation that was attempted; its top elimination is the rule that fired most."""
    header = [
        "operation",
        "kept / attempted",
        "kept rate",
        "top elimination",
        "words (kept)",
        "constraint clauses (kept)",
        "attached data (kept)",
        "difficulty (rated)",
    ]
    rows = [
        [
            op,
            f"{v['kept']}/{v['attempted']}",
            _pct(v["kept_rate"]),
            max(((n, rule) for rule, n in v["eliminated"].items() if n), default=(0, MISSING))[1],
            _n(v["text_kept"]["mean_words"], 1),
            _n(v["text_kept"]["mean_constraint_clauses"]),
            _pct(v["text_kept"]["attached_data_share"]),
            f"{_n(v['difficulty']['mean'])} ({v['difficulty']['rated']})" if v["difficulty"] else MISSING,
        ]
        for op, v in per_operation.items()
        if v["attempted"]
    ]
    return header, rows


PLOT_CAPTIONS = {
    "difficulty_per_round.png": "Judge-rated difficulty per round",
    "diversity_per_round.png": "Diversity per round and per cumulative set C0..Ck",
    "projection_by_round.png": "2-D projection of kept instructions, coloured by round",
    "survival_per_operation.png": "Kept and eliminated attempts per operation",
}


def plot_images(run_dir: Path, plots: list[str]) -> list[tuple[Path, str]]:
    """(path, caption) of each plot the analysis wrote that is still on disk."""
    return [(run_dir / p, PLOT_CAPTIONS.get(Path(p).name, Path(p).name)) for p in plots if (run_dir / p).is_file()]


def analysis_report_json(run_dir: str | Path) -> dict:
    """{"analysis": the numbers of analysis.json} to merge into report.json; {} before analysis."""
    path = Path(run_dir) / STAGE / ANALYSIS_FILE
    return {"analysis": read_json(path)} if path.is_file() else {}
