"""The `evol optimize` command (registered by pipeline/cli/__init__.py); the stage is evolve_local/optimize.py.

    evol optimize --config configs/tiny.yaml --out runs/tiny-opt --set optimize.steps=2
    evol run --config configs/tiny.yaml --set evolve.method=runs/tiny-opt/best_method.json --set run.name=tiny-m
    evol compare-methods runs/tiny runs/tiny-m       # the ablation, side by side: runs/tiny-m/comparison.md

Auto Evol-Instruct with local models: improves an evolving method (optimize.start) from the failures of
its own evolutions, scored by the elimination rules on a development set of seeds. The seeds, test set,
config values, starting method and every model path are checked before a model loads; rerunning the
same command resumes a killed optimisation.
"""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.cli.common import config_options, friendly_errors, lock_output
from pipeline.cli.options import load_config_with, out_option, seeds_option


@click.command("optimize")
@seeds_option("Seed file (default: evolve.seeds); the development set and the mini-batches are drawn from it.")
@click.option("--steps", type=int, default=None, help="Optimisation steps (default: optimize.steps).")
@out_option("Output directory, e.g. runs/tiny-opt; writes optimize/ and best_method.json there.")
@config_options
@friendly_errors
def optimize(seeds_file, steps, out_dir, config_path, overrides) -> None:
    """Improve an evolving method from its evolution failures (Auto Evol-Instruct)."""
    from evolve_local.inputs import load_inputs
    from evolve_local.optimize import BEST_FILE, run_optimize, split_seeds, start_method
    from pipeline.cli.evolve import vllm_models
    from pipeline.core.manifest import record_config

    lock_output(out_dir)
    config = load_config_with(config_path, overrides, {"evolve.seeds": seeds_file, "optimize.steps": steps})
    config.validate("optimize")
    inputs = load_inputs(config)
    start = start_method(config)  # a bad method file is one sentence here
    split_seeds(config, inputs.seeds)  # too few seeds for the development set and a mini-batch: here too
    models = vllm_models(config, optimizer=True)
    record_config(out_dir, config)
    o = config.optimize
    click.echo(
        f"[optimize] {len(inputs.seeds)} seeds from {inputs.seeds_file}: {o.steps} steps from method "
        f"{start.name} ({start.hash}), {o.candidates} candidates each, development set {o.dev_size} seeds x "
        f"{o.dev_rounds} rounds, mini-batch {o.minibatch} x {o.trajectory_rounds} rounds; evolver "
        f"{models.names['evolver']}, optimizer {models.names['optimizer']}",
        err=True,
    )
    summary = run_optimize(config, Path(out_dir), models, inputs)
    rates = " -> ".join(f"{h['failure_rate']:.1%}" for h in summary["history"])
    click.echo(
        f"failure rate per step {rates}; chosen method {summary['chosen']} in {Path(out_dir) / BEST_FILE} "
        f"(use it with --set evolve.method={Path(out_dir) / BEST_FILE})"
    )


@click.command("compare-methods")
@click.argument("ops_run", type=click.Path(file_okay=False))
@click.argument("method_run", type=click.Path(file_okay=False))
@friendly_errors
def compare_methods(ops_run, method_run) -> None:
    """The ablation: two runs that differ only in evolve.method, side by side (comparison.md in METHOD_RUN).

    Run the same config twice, e.g. `evol run --config configs/tiny.yaml --set run.name=tiny-ops` and
    `evol run --config configs/tiny.yaml --set run.name=tiny-opt --set evolve.method=runs/tiny-opt/best_method.json`,
    then `evol compare-methods runs/tiny-ops runs/tiny-opt`. Reads files only: no model."""
    from eval.report.evaluation import render_html, render_markdown
    from eval.report.method import method_comparison, method_section
    from pipeline.core.jsonio import atomic_write_text, write_json

    out = Path(method_run)
    lock_output(out)
    sections, data = method_comparison(Path(ops_run), out)
    sections += [s for s in (method_section(out),) if s]
    title = f"Evolving methods: {Path(ops_run).name} vs {out.name}"
    atomic_write_text(out / "comparison.md", render_markdown(title, sections, out))
    atomic_write_text(out / "comparison.html", render_html(title, sections))
    write_json(out / "comparison.json", data)
    totals = data["totals"]
    click.echo(
        f"kept {totals['a']['kept']}/{totals['a']['attempted']} ({data['a']['method']['name']}) vs "
        f"{totals['b']['kept']}/{totals['b']['attempted']} ({data['b']['method']['name']}); "
        f"{out / 'comparison.md'}"
    )


COMMANDS = [optimize, compare_methods]
