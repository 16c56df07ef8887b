"""The `evol view` command (registered by pipeline/cli/__init__.py); the work is pipeline/view.py.

evol view runs/tiny        # writes runs/tiny/data.html: open it from disk in any browser
"""

from __future__ import annotations

import time

import click

from pipeline.cli.common import friendly_errors, lock_output


@click.command("view")
@click.argument("run_dir", type=click.Path(file_okay=False))
@friendly_errors
def view(run_dir) -> None:
    """Every attempt of a run's evolution, with its lineage, in one offline page (runs/<name>/data.html)."""
    from pipeline.view import VIEW_FILE, check_run, write_viewer

    check_run(run_dir)  # a folder that is not a finished run is one sentence, before the lock file appears
    lock_output(f"{run_dir}/{VIEW_FILE}")
    started = time.perf_counter()
    result = write_viewer(run_dir)
    differ = result["differences"]
    click.echo(
        f"{result['path']}: {result['attempts']:,} attempts of {result['seeds']:,} seeds over rounds 0-{result['rounds']}, "
        f"{result['bytes'] / 1e6:.2f} MB, {time.perf_counter() - started:.1f} s; "
        + (
            "every count matches evolve/stats.json."
            if not differ
            else f"{len(differ)} counts differ from evolve/stats.json (marked in the page), e.g. {differ[0]}."
        )
        + f" Open it from disk: file://{result['path'].resolve()}"
    )


COMMANDS = [view]
