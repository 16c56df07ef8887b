"""Which engine a stage gets for a model: the only place that chooses a backend and reads the config for it.

engine = make_engine(config, resolve_model("smollm2-135m"))
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config import Config
from pipeline.engine.types import Engine
from pipeline.engine.vllm_backend import VLLMEngine


def make_engine(config: Config, model_path: str | Path, adapters: dict[str, str | Path] | None = None) -> Engine:
    """One vLLM engine in this process, or with `engine.backend=ray` a Ray Data job over
    `engine.replicas` engines (data parallel on one box or over a cluster, joining `ray.address`).

    Every stage calls this with the whole config, so each backend always sees all of its settings
    (engine, ray, run seed, trust_remote_code) and no call site can leave one out."""
    settings, seed, trust = config.engine, config.run.seed, config.models.trust_remote_code
    if settings.backend == "ray":
        from pipeline.engine.ray_backend import RayEngine, check_backend

        check_backend(settings, config.ray)
        return RayEngine(model_path, settings, config.ray, seed=seed, adapters=adapters, trust_remote_code=trust)
    return VLLMEngine(model_path, settings, seed=seed, adapters=adapters, trust_remote_code=trust)
