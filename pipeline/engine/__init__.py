"""The engine package: the interface stages use, its backends, and the scheduler that feeds them.

    from pipeline.engine import ChatRequest, make_engine, generate_in_chunks
    engine = make_engine(config, resolve_model("smollm2-135m"))
    results = engine.generate([ChatRequest(id="a", messages=[{"role": "user", "content": "Hi"}])])

  types.py         ChatRequest, ChatResult and the Engine protocol: its one verb, `stream`
  vllm_backend.py  VLLMEngine: one vllm.LLM in this process (chat template, seeds, LoRA, constraints)
  ray_backend.py   RayEngine: every call a Ray job over engine.replicas engines (local Ray or a cluster)
  ray_job.py       that job, the driver's side: the round read a block at a time, blocks handed to
                   replicas as they have room, a dead replica's blocks handed on; the stage's replicas
  ray_replica.py   one replica actor: a local engine running its blocks as chains on one continuous batch
  server_backend.py ServerEngine: requests to an OpenAI-compatible server already running (engine.url)
  vllm_server.py   the command that starts vLLM's OpenAI server with a config's engine settings (evol serve)
  fake.py          FakeEngine: scripted answers for unit tests
  backends.py      Local, Ray, Server: engine.backend resolved once (backend_of), each with its settings'
                   checks, engine, model lookup and identity, manifest, lm-eval model, lanes and rehearsal
  factory.py       make_engine, locate_model, model_identity, server_urls: the backend object's answers
                   for a config (a role's model: a local directory, or a served model)
  schedule.py      the scheduler behind local engines' `stream`; generate_in_chunks (resumable chunks), chain_blocks

The chat template is applied by the backend with the model's own tokenizer, so a prompt that does
not fit the context is reported per request (`finish_reason == "too_long"`) instead of failing.
"""

from pipeline.engine.factory import locate_model, make_engine, model_identity, server_urls
from pipeline.engine.schedule import ChunkStats, chain_blocks, generate_in_chunks
from pipeline.engine.types import (
    DEFAULT_WINDOW,
    ENGINE_ERROR,
    TOO_LONG,
    Block,
    ChatRequest,
    ChatResult,
    Engine,
    FollowUp,
)

__all__ = [
    "DEFAULT_WINDOW",
    "ENGINE_ERROR",
    "TOO_LONG",
    "Block",
    "ChatRequest",
    "ChatResult",
    "ChunkStats",
    "chain_blocks",
    "Engine",
    "FollowUp",
    "generate_in_chunks",
    "locate_model",
    "make_engine",
    "model_identity",
    "server_urls",
]
