"""Pieces every `evol` subcommand shares: --config/--set options and one-sentence errors.

    @click.command()
    @config_options
    def mycommand(config_path, overrides):
        config = load_config(config_path, overrides)

A subcommand raises `InputError` (or `ConfigError`) for anything the user can fix; `friendly_errors`
turns it into one line on stderr and exit status 2, with no traceback. A command that writes calls
`lock_output(path)` first: one writer per output (pipeline/core/lock.py).
"""

from __future__ import annotations

import errno
import functools
import os
import sys

import click

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


def lock_output(target) -> None:
    """Hold the one-writer lock on `target` until the command returns; refused at once if busy."""
    if os.environ.get("RANK", "0") != "0":
        return  # a non-main rank under `accelerate launch`: its main rank holds the lock for all
    click.get_current_context().with_resource(hold(target))


def machine_fault(err: OSError) -> str | None:
    """One sentence for a fault of the machine the user can fix; None for anything else (a bug)."""
    where = err.filename or "a file"
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return (
            f"No space left on the device while writing {where}; free some space and run the same command "
            f"again: the finished work is kept and the command resumes from it."
        )
    if err.errno == errno.EACCES:
        return (
            f"Permission denied on {where}; make it readable and writable for this user (or choose another "
            f"output directory) and run the command again."
        )
    if err.errno == errno.EROFS:
        return f"{where} is on a read-only file system; choose a writable output directory and run the command again."
    return None


# What a full disk looks like when a library wraps the OSError in its own exception: torch.save
# ("PytorchStreamWriter failed writing file ...: file write failed") and safetensors ("StorageFull").
DISK_FULL_MESSAGES = ("No space left on device", "file write failed", "StorageFull", "Disk quota exceeded")


def wrapped_disk_full(err: BaseException) -> str | None:
    """The ENOSPC sentence for a library error that hides a full disk, else None."""
    seen = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return machine_fault(seen)
        seen = seen.__cause__ or seen.__context__
    if any(text in str(err) for text in DISK_FULL_MESSAGES):
        return machine_fault(OSError(errno.ENOSPC, "No space left on device"))
    return None


def friendly_errors(func):
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except InputError as err:
            click.echo(f"Error: {err}", err=True)
            sys.exit(2)
        except OSError as err:
            sentence = machine_fault(err)
            if sentence is None:
                raise
            click.echo(f"Error: {sentence}", err=True)
            sys.exit(2)
        except Exception as err:  # noqa: BLE001 - only a hidden full disk is turned into a sentence
            sentence = wrapped_disk_full(err)
            if sentence is None:
                raise
            click.echo(f"Error: {sentence}", err=True)
            sys.exit(2)

    return wrapper
