"""The engine interface every backend implements: the request and result types and one protocol.

    from pipeline.engine import ChatRequest, Engine
    for block in engine.stream(first_requests, follow_up, window=256): save(block)

`Engine.stream` is the one verb: a stream of first requests and an optional follow-up in, blocks of
finished (request, result) pairs out, as they finish. A follow-up turns a finished request and its
result into the chain's next request (evolve, then check, then answer), or None when the chain is
done; without one every request is a chain of one. Each backend runs it where it runs best: local
batches and continuous batching (`schedule.BatchEngine`, `schedule.ContinuousBatching`: vLLM, the
server), one Ray job over the replicas (`ray_backend.RayEngine`). `generate` is the one-shot form,
a batch in and its results in request order. Stages depend on these types only, never on a backend,
so a new backend (another process layout, a cluster) is one new module in this package.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

TOO_LONG = "too_long"
# vLLM's finish reason for a request the engine failed on (e.g. its grammar did not compile in time).
ENGINE_ERROR = "error"


@dataclass
class ChatRequest:
    id: str
    messages: list[dict]
    max_tokens: int | None = None  # None: the engine's configured max_tokens
    temperature: float | None = None  # None: the engine's configured temperature
    top_p: float | None = None
    seed: int | None = None  # per-request seed: same seed, same text
    adapter: str | None = None  # name of a LoRA adapter given to the engine; None: the base model
    # Constrained decoding, for answers a program must read (a verdict, two scores): the text is
    # forced to match the regular expression, or to be one of the choices. None: free text.
    regex: str | None = None
    choice: list[str] | None = None
    purpose: str | None = None  # the caller's tag (which step asked); engines ignore it
    # The caller's state for the chain's next request (see FollowUp): plain JSON values, carried
    # with the request to wherever its follow-up is made; engines ignore it.
    context: dict | None = None

    @property
    def prompt_text(self) -> str:
        return "\n".join(str(m.get("content", "")) for m in self.messages)


@dataclass
class ChatResult:
    id: str
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop", "length", "too_long" (prompt did not fit; nothing generated), or "error"


# A chain's next request from the last request and its result, or None when the chain is done.
FollowUp = Callable[[ChatRequest, ChatResult], "ChatRequest | None"]
# Finished requests with their results: what `Engine.stream` hands back at a time.
Block = list[tuple[ChatRequest, ChatResult]]
DEFAULT_WINDOW = 256  # requests in the engine at once when the caller does not say (engine.chunk_size's default)


@runtime_checkable
class Engine(Protocol):
    """What every backend offers (see the module doc)."""

    model_name: str

    def stream(
        self, requests: Iterable[ChatRequest], follow_up: FollowUp | None = None, window: int = DEFAULT_WINDOW
    ) -> Iterator[Block]:
        """Run every chain that starts with one of `requests` (read lazily), up to `window` requests in
        the engine at once (a Ray job sizes its blocks by its own settings); yield blocks of finished
        pairs as they come, in no particular order across chains, a chain's pairs in order. A chain
        the engine failed on is reported by the engine (an error after the last block), not yielded.
        On Ray `follow_up` travels to the replicas, so it must be picklable and depend on nothing but
        the request (its `context`) and the result."""
        ...

    def generate(self, requests: list[ChatRequest]) -> list[ChatResult]:
        """One batch, its results in request order (the one-shot form of `stream`)."""
        ...

    def close(self) -> None: ...
