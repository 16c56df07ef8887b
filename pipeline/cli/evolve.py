"""The `evol evolve` command (registered by pipeline/cli/__init__.py); the stage is evolve_local/.

    evol evolve --config configs/tiny.yaml --seeds evolve_local/data/seeds.jsonl --rounds 2 --out runs/tiny

--seeds and --rounds override `evolve.seeds` / `evolve.rounds`. Seeds, test set, config values and
model paths are all checked before a model loads. Each role (evolver, equality check, responder)
gets its model from the config; roles played by different models share no memory: the engine of
one is closed before the next starts.
"""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.cli.common import config_options, friendly_errors, lock_output
from pipeline.cli.options import load_config_with, out_option, seeds_option
from pipeline.config import model_roles


def vllm_models(config, optimizer: bool = False):
    """The ModelSet of the real engine: names, content hashes and a lazy vLLM factory per role
    (with `optimizer`, evol optimize's models.optimizer too, by default the evolver)."""
    from evolve_local.steps import ModelSet
    from pipeline.core.models import check_chat_roles
    from pipeline.engine.factory import locate_model, model_identity

    m = config.models
    from pipeline.engine.backends import backend_of

    backend_of(config).connect()  # a missing Ray or a wrong address: one sentence, before any model
    roles = model_roles(config)
    keys = {"evolver": "models.evolver", "equality": "evolve.equality_model", "responder": "models.responder"}
    if optimizer:
        roles["models.optimizer"] = m.optimizer or m.evolver
        keys["optimizer"] = "models.optimizer"
    # A base model in a conversing role: one sentence now, not a traceback after the engine started.
    check_chat_roles({key: roles[key] for key in keys.values()}, config.models.dir)
    # Local directories keyed by content, or with engine.backend=server the served models (checked
    # against the server's list before any work) keyed by what the server reports.
    paths = {role: locate_model(config, roles[key], role) for role, key in keys.items()}
    hashes = {role: model_identity(config, path, role) for role, path in paths.items()}

    def make(role: str):
        from pipeline.engine import make_engine

        return make_engine(config, paths[role], role=role)

    return ModelSet(names={role: path.name for role, path in paths.items()}, hashes=hashes, make=make)


@click.command("evolve")
@seeds_option("Seed file (Alpaca, self-instruct, ShareGPT, chat messages or plain instruction JSON/JSONL).")
@click.option("--rounds", type=int, default=None, help="Evolution rounds M (default: evolve.rounds).")
@out_option("Run directory, e.g. runs/tiny; writes evolve/ and data/C0..CM.jsonl there.", "run_dir")
@config_options
@friendly_errors
def evolve(seeds_file, rounds, run_dir, config_path, overrides) -> None:
    """Evolve seed instructions for M rounds with elimination (Evol-Instruct)."""
    from evolve_local.evolve import load_inputs, run_evolve
    from evolve_local.method import describe
    from pipeline.core.manifest import record_config

    lock_output(run_dir)
    config = load_config_with(config_path, overrides, {"evolve.seeds": seeds_file, "evolve.rounds": rounds})
    inputs = load_inputs(config)
    models = vllm_models(config)
    record_config(run_dir, config)
    names = models.names
    click.echo(
        f"[evolve] {len(inputs.seeds)} seeds ({inputs.seed_format}) from {inputs.seeds_file}, {config.evolve.rounds} "
        f"rounds, evolver {names['evolver']}, responder {names['responder']}, equality check {names['equality']}, "
        f"method {describe(inputs.method)['name']}",
        err=True,
    )
    stats = run_evolve(config, Path(run_dir), models, inputs)
    last = stats["rounds"][config.evolve.rounds]
    totals = stats["evolution_totals"]
    click.echo(
        f"{totals['kept']}/{totals['attempted']} evolutions kept over {config.evolve.rounds} rounds; "
        f"C{config.evolve.rounds} has {last['training_set_size']} items in {Path(run_dir) / 'data'}"
    )


COMMANDS = [evolve]
