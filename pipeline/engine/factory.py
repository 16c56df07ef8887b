"""Which engine a stage gets for a model: the only place that chooses a backend.

engine = make_engine(resolve_model("smollm2-135m"), config.engine, seed=config.run.seed)
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config import EngineConfig
from pipeline.config.ray import RayConfig
from pipeline.engine.types import Engine
from pipeline.engine.vllm_backend import VLLMEngine


def make_engine(
    model_path: str | Path,
    settings: EngineConfig,
    seed: int = 0,
    adapters: dict[str, str | Path] | None = None,
    trust_remote_code: bool = False,
    ray_settings: RayConfig | None = None,
) -> Engine:
    """One vLLM engine in this process, or with `engine.backend=ray` a Ray Data job over
    `engine.replicas` engines (data parallel on one box or over a cluster)."""
    if settings.backend == "ray":
        from pipeline.engine.ray_backend import RayEngine, check_backend

        ray_settings = ray_settings or RayConfig()
        check_backend(settings, ray_settings)
        return RayEngine(
            model_path, settings, ray_settings, seed=seed, adapters=adapters, trust_remote_code=trust_remote_code
        )
    return VLLMEngine(model_path, settings, seed=seed, adapters=adapters, trust_remote_code=trust_remote_code)
