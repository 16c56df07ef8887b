"""Which engine a stage gets for a model, through the backend object (pipeline/engine/backends.py).

engine = make_engine(config, resolve_model("smollm2-135m"))
model = locate_model(config, config.models.judge, "judge")    # a local directory, or the server's model
key_part = model_identity(config, model, "judge")              # its content hash, or what the server reports

Each call asks `backend_of(config)`, so a stage passes the whole config and no call site can leave a
setting out; with engine.backend=server a model is not a local directory but a name the server
serves, so the stages find their models and key them through `locate_model` and `model_identity`,
never by reading a directory themselves.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config import Config
from pipeline.engine.backends import BACKEND_CLASSES, backend_of
from pipeline.engine.types import Engine


def backend_extras(config: Config) -> list[str]:
    """The optional extras of pyproject.toml that the configured backend needs installed (`evol bundle`)."""
    return list(BACKEND_CLASSES[config.engine.backend].extras)


def make_engine(
    config: Config, model_path: str | Path, adapters: dict[str, str | Path] | None = None, role: str = ""
) -> Engine:
    """One vLLM engine in this process, with `engine.backend=ray` a Ray Data job over
    `engine.replicas` engines (data parallel on one box or over a cluster, joining `ray.address`), or
    with `engine.backend=server` requests to the OpenAI-compatible server at the role's URL. `role`
    (one of pipeline.config.ROLES) picks the server of engine.role_urls; the local backends ignore it."""
    return backend_of(config).make_engine(model_path, adapters, role)


def locate_model(config: Config, name: str, role: str = "") -> Path:
    """The model a role uses: a local model directory, or the served model's name (Backend.locate_model)."""
    return backend_of(config).locate_model(name, role)


def model_identity(config: Config, model: str | Path, role: str = "") -> str:
    """What a stage key holds for a model (Backend.model_identity)."""
    return backend_of(config).model_identity(model, role)


def server_urls(config: Config, roles: tuple[str, ...]) -> dict:
    """What a stage manifest records of where its roles ran (Backend.manifest)."""
    return backend_of(config).manifest(roles)
