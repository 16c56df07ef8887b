"""Pieces every `evol` subcommand shares: --config/--set options and one-sentence errors.

    @click.command()
    @config_options
    def mycommand(config_path, overrides):
        config = load_cli_config(config_path, overrides)

A subcommand raises `InputError` (or `ConfigError`) for anything the user can fix; `friendly_errors`
turns it into one line on stderr and exit status 2, with no traceback. A command that writes calls
`lock_output(path)` first: one writer per output (pipeline/core/lock.py).
"""

from __future__ import annotations

import functools
import os
import sys

import click

from pipeline.config import Config, load_config
from pipeline.core.jsonio import InputError
from pipeline.core.lock import hold


def config_options(func):
    func = click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="KEY=VALUE",
        help="Override a config value, e.g. --set engine.max_tokens=64 (repeatable).",
    )(func)
    func = click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        default=None,
        help="YAML config file (defaults: dataclass values, see configs/tiny.yaml).",
    )(func)
    return func


def load_cli_config(config_path: str | None, overrides: tuple[str, ...]) -> Config:
    return load_config(config_path, overrides)


def lock_output(target) -> None:
    """Hold the one-writer lock on `target` until the command returns; refused at once if busy."""
    if os.environ.get("RANK", "0") != "0":
        return  # a non-main rank under `accelerate launch`: its main rank holds the lock for all
    click.get_current_context().with_resource(hold(target))


def friendly_errors(func):
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except InputError as err:
            click.echo(f"Error: {err}", err=True)
            sys.exit(2)

    return wrapper
