"""The `evol` command line: this file holds the tool commands; each stage's command is a module
beside it (evolve.py, optimize.py, train.py, eval.py, analyze.py), and `evol bench` comes from the benchmarks
package through the `evol.commands` entry point (nothing here imports the benchmarks).

    evol models prepare smollm2-135m
    evol models list
    evol generate --model smollm2-135m --in prompts.jsonl --out answers.jsonl
    evol config show --config configs/tiny.yaml --set engine.max_tokens=64
    evol serve --config configs/tiny.yaml --port 8000
"""

from __future__ import annotations

import json
from pathlib import Path

import click

import pipeline  # noqa: F401  (sets the offline environment before anything imports transformers)
from pipeline.cli.common import config_options, friendly_errors, lock_output
from pipeline.config import load_config, to_yaml
from pipeline.core.paths import RunDir


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Offline Evol-Instruct: evolve, fine-tune and judge with local models."""


# ---------------------------------------------------------------- evol models


@main.group()
def models() -> None:
    """Prepare and list local models (nothing is ever downloaded)."""


@models.command("prepare")
@click.argument("alias", required=False)
@click.option("--gguf", type=click.Path(dir_okay=False), help="A local GGUF file to convert.")
@click.option("--name", help="Name of the prepared model (with --gguf).")
@click.option("--models-dir", default=None, help="Model store (default: config models.dir or $EVOL_MODELS_DIR).")
@config_options
@friendly_errors
def models_prepare(alias, gguf, name, models_dir, config_path, overrides) -> None:
    """Turn the embedded SmolLM2 (ALIAS smollm2-135m) or a GGUF file into a plain HF directory."""
    from pipeline.core.jsonio import InputError
    from pipeline.core.models import prepare_alias, prepare_gguf

    store = models_dir or load_config(config_path, overrides).models.dir
    if gguf and alias:
        raise InputError("Give either a model alias or --gguf FILE --name NAME, not both.")
    if gguf:
        if not name:
            raise InputError("--gguf needs --name NAME for the prepared model.")
        prepared = prepare_gguf(Path(gguf), name, store)
    elif alias:
        prepared = prepare_alias(alias, store)
    else:
        raise InputError("Name a model alias (smollm2-135m) or give --gguf FILE --name NAME.")
    from pipeline.core.models import chat_template_of

    state = "already prepared" if prepared.reused else "prepared"
    kind = "" if chat_template_of(prepared.path) else " (a base model without a chat template: for models.base only)"
    click.echo(f"{prepared.name}: {state} at {prepared.path}{kind}")


@models.command("list")
@click.option("--models-dir", default=None)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@config_options
@friendly_errors
def models_list(models_dir, as_json, config_path, overrides) -> None:
    """Show the prepared and local models with size and architecture."""
    from pipeline.core.models import list_models
    from pipeline.core.models import models_dir as store_of

    store = models_dir or load_config(config_path, overrides).models.dir
    rows = list_models(store)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"No models in {store_of(store)}; run `evol models prepare smollm2-135m`.")
        return
    click.echo(f"{'name':<28} {'architecture':<24} {'kind':<5} {'size':>10}  path")
    for row in rows:
        click.echo(
            f"{row['name']:<28} {row['architecture']:<24} {row['kind']:<5} {row['size_mb']:>8} MB  {row['path']}"
        )


# ---------------------------------------------------------------- evol generate


@main.command()
@click.option(
    "--model", "model_name", default=None, help="Model directory or prepared name (default: models.evolver)."
)
@click.option(
    "--in", "in_path", required=True, type=click.Path(dir_okay=False), help="JSONL of {id, prompt|messages}."
)
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="JSONL of answers.")
@config_options
@friendly_errors
def generate(model_name, in_path, out_path, config_path, overrides) -> None:
    """Answer every prompt of a JSONL file with the local vLLM engine."""
    from pipeline.core.models import require_chat_model, resolve_model
    from pipeline.engine import make_engine
    from pipeline.generate import check_resumable, load_prompts, run_generate, settings_of

    lock_output(out_path)
    config = load_config(config_path, overrides)
    # Everything the user can get wrong is checked before the model loads.
    rows = load_prompts(in_path)
    model_path = resolve_model(model_name or config.models.evolver, config.models.dir)
    require_chat_model("--model" if model_name else "models.evolver", model_path)
    settings = settings_of(config, str(model_path))
    finished = check_resumable(Path(out_path), settings)
    engine = make_engine(config, model_path)
    summary = run_generate(engine, rows, Path(out_path), config, settings, finished)
    click.echo(
        f"{summary['requests']} answers in {out_path} ({summary['generated']} generated, "
        f"{summary['reused']} reused, {summary['too_long']} too long for the context, "
        f"{summary['tokens_per_second']} output tok/s)"
    )


# ---------------------------------------------------------------- evol run


@main.command()
@click.option(
    "--rehearse",
    is_flag=True,
    help="A CPU dress rehearsal: stand-in models, sizes scaled down, every stage, a table of the config's keys.",
)
@click.option(
    "--plan",
    "plan_only",
    is_flag=True,
    help="Print what each model will answer and what that can detect; run nothing.",
)
@click.option(
    "--like",
    type=click.Path(file_okay=False, exists=True),
    help="With --plan: a finished run whose measured variances size the plan.",
)
@config_options
@friendly_errors
def run(rehearse, plan_only, like, config_path, overrides) -> None:
    """The whole pipeline: evolve, train one model per round count, answer, judge, report."""
    if plan_only:
        from pipeline.sizing import plan_sizes, render_plan

        rows, answers = plan_sizes(load_config(config_path, overrides), Path(like) if like else None)
        click.echo(render_plan(rows, answers))
        return
    if rehearse:
        from pipeline.rehearse import rehearse as dress_rehearsal

        run_dir = dress_rehearsal(load_config(config_path, overrides), config_path)
        click.echo(RunDir(run_dir).rehearsal("md").read_text())
        click.echo(f"Rehearsal written to {RunDir(run_dir).rehearsal('md')} (and rehearsal.json).")
        return
    from pipeline.run import run_pipeline

    run_pipeline(load_config(config_path, overrides))


@main.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Bundle directory.")
@click.option("--variant", type=click.Choice(["cpu", "gpu"]), help="Whose wheels (default: this environment's).")
@click.option("--extras", default=None, help="Optional extras to carry, comma-separated (default: the backend's).")
@click.option("--no-wheels", is_flag=True, help="Leave out the Python wheels (models and data only).")
@click.option("--list", "list_only", is_flag=True, help="Print the wheels the bundle would carry; copy nothing.")
@config_options
@friendly_errors
def bundle(out_dir, variant, extras, no_wheels, list_only, config_path, overrides) -> None:
    """Gather models, data and wheels for a machine with no internet (with SHA256SUMS)."""
    from pipeline.bundle import list_wheels, make_bundle

    config = load_config(config_path, overrides)
    extras = [e for e in extras.split(",") if e] if extras is not None else None
    if list_only:
        click.echo(list_wheels(config, variant, extras))
        return
    if not out_dir:
        raise click.UsageError("--out is needed (or --list to print the wheels without copying).")
    summary = make_bundle(config, Path(out_dir), wheels=not no_wheels, variant=variant, extras=extras)
    click.echo(
        f"Bundle {out_dir} ({summary['variant']}, {summary['bytes'] / 1e9:.2f} GB): models "
        f"{', '.join(summary['models'])}, {summary['wheels']} wheels, {summary['files']} files checksummed. "
        f"On the offline machine: ./run_all.sh --bundle {out_dir}"
    )


# ---------------------------------------------------------------- evol config


@main.group()
def config() -> None:
    """Inspect configs."""


@config.command("show")
@config_options
@friendly_errors
def config_show(config_path, overrides) -> None:
    """Print the resolved config (defaults, then the YAML, then --set)."""
    click.echo(to_yaml(load_config(config_path, overrides)), nl=False)


def _register_commands() -> None:
    from importlib.metadata import entry_points

    from pipeline.cli import analyze, eval, evolve, export, harness, optimize, train, view

    for module in (evolve, optimize, train, eval, analyze, harness, export, view):
        for command in module.COMMANDS:
            main.add_command(command)
    # Commands of optional packages (the benchmarks) plug in by entry point, loaded only when asked
    # for, so `evol run` never imports them.
    for point in entry_points(group="evol.commands"):
        main.add_command(_Plugin(point))


class _Plugin(click.Command):
    """A command from an entry point, imported only when it runs or shows its help."""

    def __init__(self, point) -> None:
        super().__init__(point.name, help=f"(from {point.value.split(':')[0]})")
        self.point = point
        self._loaded: click.Command | None = None

    @property
    def loaded(self) -> click.Command:
        if self._loaded is None:
            self._loaded = self.point.load()
        return self._loaded

    def get_short_help_str(self, limit: int = 45) -> str:
        return self.loaded.get_short_help_str(limit)

    def make_context(self, *args, **kwargs):
        return self.loaded.make_context(*args, **kwargs)

    def invoke(self, ctx):
        return self.loaded.invoke(ctx)

    def get_help(self, ctx):
        return self.loaded.get_help(ctx)


_register_commands()

if __name__ == "__main__":  # vLLM spawns an engine process: the entry point must be guarded
    main()


# ---------------------------------------------------------------- evol serve


@main.command("serve")
@click.option("--port", default=8000, show_default=True, type=int)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="The address to listen on; 0.0.0.0 for jobs on other machines (e.g. a judge served for a cluster).",
)
@click.option(
    "--role",
    default="models.evolver",
    show_default=True,
    help="The config key of the model to serve: models.evolver, models.base, models.judge, ... (or evolver, judge).",
)
@click.option("--print", "print_only", is_flag=True, help="Print the command instead of starting the server.")
@click.option("--no-runtime-lora", is_flag=True, help="Do not let the answer stage load fine-tuned adapters.")
@config_options
@friendly_errors
def serve(port, host, role, print_only, no_runtime_lora, config_path, overrides) -> None:
    """Start vLLM's OpenAI-compatible server for a config's model, for engine.backend=server.

    It serves the model under the name the config gives it, with the config's engine settings
    (dtype, context length, KV cache and cores on CPU), and lets the answer stage load the
    fine-tuned LoRA adapters at runtime. The server runs in the foreground until stopped."""
    import os
    import shlex

    from pipeline.config import model_roles
    from pipeline.core.jsonio import InputError
    from pipeline.core.models import CHAT_ROLES, require_chat_model, resolve_model
    from pipeline.engine.vllm_backend import on_cpu
    from pipeline.engine.vllm_server import vllm_server_command

    config = load_config(config_path, overrides)
    config.validate("models", "engine")
    roles = model_roles(config)
    key = role if role in roles else f"models.{role}"
    if key not in roles:
        raise InputError(f"--role {role} is not a model of this config; its models: {', '.join(roles)}.")
    name = roles[key]
    model = resolve_model(name, config.models.dir)
    if key in CHAT_ROLES:  # the base (models.base) is served for its fine-tunes' adapters, template or not
        require_chat_model(key, model)
    argv, env = vllm_server_command(
        config.engine,
        model,
        port,
        config.run.seed,
        cpu=on_cpu(),
        runtime_lora=not no_runtime_lora,
        served_name=name,
        host=host,
        trust_remote_code=config.models.trust_remote_code,
    )
    if print_only:
        click.echo(" ".join([*(f"{k}={shlex.quote(v)}" for k, v in env.items()), *map(shlex.quote, argv)]))
        return
    click.echo(f"Serving {name} ({model}) at http://{host}:{port}/v1; stop it with Ctrl-C.", err=True)
    os.execve(argv[0], argv, {**os.environ, **env})
