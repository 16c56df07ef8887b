"""The engine interface every backend implements: request and result types and the two protocols.

    from pipeline.engine import ChatRequest, Engine, StreamingEngine

`Engine` is a batch interface (`generate` returns results in request order); `StreamingEngine` adds
continuous batching (`submit`/`poll`/`pending`); `BlockStreamingEngine` runs a whole stream as one
job and returns blocks as they finish (`stream`); `ChainEngine` runs chains of dependent requests
where it generates them (`run_chains`: on Ray, each replica chains its share on its own batch). Stages depend on these types only, never on a
backend, so a new backend (another process layout, a cluster) is one new module in this package.
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
    # The caller's state for the chain's next request (see ChainEngine): plain JSON values, carried
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


@runtime_checkable
class Engine(Protocol):
    """What every backend offers: a batch of requests in, their results out, in request order."""

    model_name: str

    def generate(self, requests: list[ChatRequest]) -> list[ChatResult]: ...

    def close(self) -> None: ...


@runtime_checkable
class StreamingEngine(Engine, Protocol):
    """An engine with continuous batching: requests join the running batch between decoding steps.

    `run_dataflow` uses it to send each follow-up request the moment its predecessor finishes.
    """

    @property
    def pending(self) -> int:
        """Requests submitted and not yet returned by `poll`."""
        ...

    def submit(self, requests: list[ChatRequest]) -> None: ...

    def poll(self) -> list[tuple[ChatRequest, ChatResult]]:
        """Advance the engine one step; the requests that finished in it, in no particular order."""
        ...


@runtime_checkable
class BlockStreamingEngine(Engine, Protocol):
    """An engine that runs a whole request stream as one job and hands back finished blocks as they
    arrive, in no particular order (the Ray backend). `generate_in_chunks` saves each block as it
    comes, so a killed job loses only the blocks in flight."""

    def stream(self, requests: Iterable[ChatRequest]) -> Iterator[list[tuple[ChatRequest, ChatResult]]]: ...


# A chain's next request from the last request and its result, or None when the chain is done.
FollowUp = Callable[[ChatRequest, ChatResult], "ChatRequest | None"]


@runtime_checkable
class ChainEngine(Engine, Protocol):
    """An engine that runs chains of dependent requests where it generates them (the Ray backend):
    each replica keeps its share of the chains on its own continuous batch, sending a chain's next
    request the moment the last one ends, so the steps of a chain overlap as on the local engine.

    `first` holds each chain's first request; `follow_up` travels to the replicas, so it must be
    picklable and depend on nothing but the request (its `context`) and the result. Each block holds
    every (request, result) of the chains that finished, a chain's pairs in order; blocks come in no
    particular order, and a chain the engine failed on is reported by the engine, not yielded."""

    def run_chains(
        self, first: Iterable[ChatRequest], follow_up: FollowUp
    ) -> Iterator[list[tuple[ChatRequest, ChatResult]]]: ...
