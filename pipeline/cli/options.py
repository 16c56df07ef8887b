"""The options several `evol` stage commands declare, made once: each factory fixes what the flag is
(its name, type, destination, whether it repeats) and takes the command's own help text, so the same
flag cannot drift between commands. --config/--set are `config_options` in common.py;
`load_config_with` puts a command's own flags (--seeds, --rounds, ...) on top of them.

    @click.command("harness")
    @model_option("A model: a local directory or a prepared name. Repeat it, each with its --label.")
    @out_option("Directory that receives <label>/results.json for every label.")
    @config_options
    def harness(model_names, out_dir, config_path, overrides): ...
"""

from __future__ import annotations

from typing import Any

import click

from pipeline.config import Config, load_config, set_setting


def file_option(name: str, dest: str, help: str, **settings):
    """An option that names a file (click refuses a directory); `settings` add required, multiple, default."""
    return click.option(name, dest, type=click.Path(dir_okay=False), help=help, **settings)


def dir_option(name: str, dest: str, help: str, **settings):
    """An option that names a directory (click refuses a file); `settings` add required, multiple, default."""
    return click.option(name, dest, type=click.Path(file_okay=False), help=help, **settings)


def out_option(help: str, dest: str = "out_dir", **settings):
    """--out DIRECTORY, where the command writes: required unless `settings` say otherwise."""
    return dir_option("--out", dest, help, **{"required": True, **settings})


def seeds_option(help: str):
    """--seeds FILE: the seed file, in place of evolve.seeds (into `seeds_file`)."""
    return file_option("--seeds", "seeds_file", help, default=None)


def model_option(help: str):
    """--model, repeatable: a local model directory or a prepared name each time (into `model_names`)."""
    return click.option("--model", "model_names", multiple=True, help=help)


def label_option(dest: str, help: str):
    """--label, repeatable: the output subdirectory of each model's results."""
    return click.option("--label", dest, multiple=True, help=help)


def adapter_option(help: str):
    """--adapter LABEL=PATH, repeatable: a PEFT LoRA adapter served on the base model (into `adapter_specs`)."""
    return click.option("--adapter", "adapter_specs", multiple=True, metavar="LABEL=PATH", help=help)


def load_config_with(config_path: str | None, overrides: tuple[str, ...], flags: dict[str, Any]) -> Config:
    """--config, then --set, then the command's own flags ("section.option": value); a flag that was
    not given (None, or an empty --seeds) leaves the config's value."""
    config = load_config(config_path, overrides)
    for key, value in flags.items():
        if value is not None and value != "":
            set_setting(config, key, value)
    return config
