"""The `evol export` command (registered by pipeline/cli/__init__.py); the work is pipeline/export.py.

evol export runs/tiny --out exports/tiny                  # Parquet, one config per C<k> + the tree
evol export runs/tiny --out exports/tiny --format jsonl --force
"""

from __future__ import annotations

import click

from pipeline.cli.common import friendly_errors, lock_output
from pipeline.export import FORMATS, export_run


@click.command("export")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(), help="The dataset folder to write.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="parquet", show_default=True)
@click.option("--force", is_flag=True, help="Write into a non-empty --out, replacing an earlier export's files.")
@friendly_errors
def export(run_dir, out_dir, fmt, force) -> None:
    """A run's C<k> training sets and evolution tree as a Hugging Face dataset folder (no upload)."""
    lock_output(out_dir)
    result = export_run(run_dir, out_dir, fmt=fmt, force=force)
    configs = result["configs"]
    sets = [name for name, c in configs.items() if not c["tree"]]
    tree = next(name for name, c in configs.items() if c["tree"])
    counts = ", ".join(f"{name} {configs[name]['rows']} rows" for name in sets)
    click.echo(
        f"{out_dir}: {counts}, "
        f"{tree} {configs[tree]['rows']} attempts ({fmt}, {result['bytes'] / 1e6:.2f} MB with README.md). "
        f"Load it with datasets.load_dataset({str(out_dir)!r}, {sets[-1]!r})."
    )


COMMANDS = [export]
