"""The `evol` subcommands of this package (registered by pipeline/cli.py)."""

COMMANDS: list = []
