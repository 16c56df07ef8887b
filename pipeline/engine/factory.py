"""Which engine a stage gets for a model: the only place that chooses a backend and reads the config for it.

engine = make_engine(config, resolve_model("smollm2-135m"))
model = locate_model(config, config.models.judge, "judge")    # a local directory, or the server's model
key_part = model_identity(config, model, "judge")              # its content hash, or what the server reports

With engine.backend=server a model is not a local directory but a name the server serves, so the
stages find their models and key them through `locate_model` and `model_identity`, never by reading
a directory themselves.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config import Config
from pipeline.core.models import content_hash, models_dir, resolve_model
from pipeline.engine.types import Engine
from pipeline.engine.vllm_backend import VLLMEngine


def backend_extras(config: Config) -> list[str]:
    """The optional extras of pyproject.toml that the configured backend needs installed (`evol bundle`)."""
    return ["ray"] if config.engine.backend == "ray" else []


def make_engine(
    config: Config, model_path: str | Path, adapters: dict[str, str | Path] | None = None, role: str = ""
) -> Engine:
    """One vLLM engine in this process, with `engine.backend=ray` a Ray Data job over
    `engine.replicas` engines (data parallel on one box or over a cluster, joining `ray.address`), or
    with `engine.backend=server` requests to the OpenAI-compatible server at the role's URL.

    Every stage calls this with the whole config, so each backend always sees all of its settings
    (engine, ray, run seed, trust_remote_code) and no call site can leave one out. `role` (one of
    pipeline.config.ROLES) picks the server of engine.role_urls; the local backends ignore it."""
    settings, seed, trust = config.engine, config.run.seed, config.models.trust_remote_code
    if settings.backend == "server":
        from pipeline.engine.server_backend import ServerEngine

        return ServerEngine(str(model_path), settings, role=role, adapters=adapters)
    if settings.backend == "ray":
        from pipeline.engine.ray_backend import RayEngine, check_backend

        check_backend(settings, config.ray)
        return RayEngine(model_path, settings, config.ray, seed=seed, adapters=adapters, trust_remote_code=trust)
    return VLLMEngine(model_path, settings, seed=seed, adapters=adapters, trust_remote_code=trust)


def locate_model(config: Config, name: str, role: str = "") -> Path:
    """The model a role uses: a local model directory (resolve_model), or with engine.backend=server the
    served model's name (as a path: its last part labels outputs), checked against the server's
    /v1/models first (a wrong name is one sentence listing what the server offers)."""
    if config.engine.backend == "server":
        from pipeline.engine.server_backend import served_model

        served_model(config.engine, name, role)
        return Path(name)
    return resolve_model(name, config.models.dir)


def model_identity(config: Config, model: str | Path, role: str = "") -> str:
    """What a stage key holds for a model: the content hash of a local directory (a path that is not
    one stands for itself), or with engine.backend=server the served name and what the server reports
    it is (root, context length, an adapter's parent)."""
    if config.engine.backend == "server":
        from pipeline.engine.server_backend import served_model

        return served_model(config.engine, str(model), role).identity
    model = Path(model)
    if not model.is_dir():
        return str(model)
    return content_hash(model, models_dir(config.models.dir))


def server_urls(config: Config, roles: tuple[str, ...]) -> dict:
    """For a stage manifest: {"server": {role: base URL}} with engine.backend=server (which model each
    role used is in the stage's key material), else nothing."""
    if config.engine.backend != "server":
        return {}
    settings = config.engine
    return {"server": {role: (settings.role_urls.get(role) or settings.url).rstrip("/") for role in roles}}
