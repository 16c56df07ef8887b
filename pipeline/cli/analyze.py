"""The `evol analyze` command (registered by pipeline/cli/__init__.py); the stage is eval/analysis/.

evol analyze runs/tiny                                  # reads runs/tiny/config.yaml when present
evol analyze runs/tiny --config configs/tiny.yaml --set analysis.difficulty=false
"""

from __future__ import annotations

from pathlib import Path

import click

from eval.analysis.analyze import analyze_run
from eval.report.analysis import ANALYSIS_FILE, STAGE
from pipeline.cli.common import config_options, friendly_errors, lock_output
from pipeline.config import load_config
from pipeline.core.fmt import MISSING
from pipeline.core.paths import RunDir


@click.command("analyze")
@click.argument("run_dir", type=click.Path(file_okay=False))
@config_options
@friendly_errors
def analyze(run_dir, config_path, overrides) -> None:
    """Complexity, diversity and survival of an evolution run, per round and per C<k>."""
    lock_output(run_dir)
    saved = RunDir(run_dir).config
    if config_path is None and saved.is_file():
        config_path = str(saved)  # the run's own resolved config: its judge model and seed
        click.echo(f"[analysis] using {saved}", err=True)
    config = load_config(config_path, overrides)
    result = analyze_run(config, Path(run_dir))
    first, last = result["per_round"][0], result["per_round"][-1]

    def difficulty(r: dict) -> str:
        d = r["difficulty"]
        return MISSING if not d or d["mean"] is None else f"{d['mean']:.2f} ({d['rated']}/{d['n']} rated)"

    click.echo(
        f"round 0 -> {last['round']}: difficulty {difficulty(first)} -> {difficulty(last)}; mean pairwise "
        f"cosine distance C0 {result['cumulative'][0]['diversity']['mean_pairwise_cosine_distance']} -> "
        f"C{last['round']} {result['cumulative'][-1]['diversity']['mean_pairwise_cosine_distance']}; "
        f"written to {Path(run_dir) / STAGE / ANALYSIS_FILE}"
    )


COMMANDS = [analyze]
