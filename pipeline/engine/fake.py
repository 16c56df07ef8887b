"""Scripted engines with the interfaces of the real ones, for unit tests.

    engine = FakeEngine(lambda request: "Paris." if "France" in request.prompt_text else "?")
    results = engine.generate([ChatRequest(id="q1", messages=[{"role": "user", "content": "..."}])])

Tokens are counted as whitespace-separated words. Every batch it receives is recorded in
`engine.batches`, so tests can check that callers send large batches, not one request per call.
Each one's `stream` is the `Engine` verb as one backend runs it: `FakeEngine` in waves of batches
(`schedule.BatchEngine`); `StreamingFakeEngine` with continuous batching, as `VLLMEngine` (submit/
poll: each poll finishes the `finish_per_poll` oldest requests in flight, and `engine.polls` records
which requests were in flight at each poll); `BlockFakeEngine` as one Ray job, out-of-order blocks.
"""

from __future__ import annotations

from collections.abc import Callable

from pipeline.engine.schedule import BatchEngine, ContinuousBatching
from pipeline.engine.types import DEFAULT_WINDOW, ChatRequest, ChatResult


class FakeEngine(BatchEngine):
    def __init__(
        self,
        respond: Callable[[ChatRequest], str] | dict[str, str] | str = "",
        max_model_len: int = 2048,
        max_tokens: int = 512,
        model_name: str = "fake-model",
        finish_per_poll: int = 1,
    ):
        self._respond = respond
        self.max_model_len = max_model_len
        self.max_tokens = max_tokens
        self.model_name = model_name
        self.batches: list[list[ChatRequest]] = []
        self.finish_per_poll = finish_per_poll
        self.in_flight: list[ChatRequest] = []
        self.polls: list[list[ChatRequest]] = []

    @property
    def calls(self) -> int:
        return len(self.batches)

    @property
    def requests_seen(self) -> list[ChatRequest]:
        return [request for batch in self.batches for request in batch]

    def _text_for(self, request: ChatRequest) -> str:
        if callable(self._respond):
            return self._respond(request)
        if isinstance(self._respond, dict):
            return self._respond.get(request.id, "")
        return self._respond

    def generate(self, requests: list[ChatRequest]) -> list[ChatResult]:
        self.batches.append(list(requests))
        return [self._result(request) for request in requests]

    def _result(self, request: ChatRequest) -> ChatResult:
        prompt_tokens = len(request.prompt_text.split())
        if prompt_tokens >= self.max_model_len:
            return ChatResult(request.id, "", prompt_tokens, 0, "too_long")
        words = self._text_for(request).split(" ")
        budget = min(request.max_tokens or self.max_tokens, self.max_model_len - prompt_tokens)
        finish = "length" if len(words) > budget else "stop"
        text = " ".join(words[:budget])
        return ChatResult(request.id, text, prompt_tokens, len(text.split()), finish)

    def close(self) -> None:
        pass


class StreamingFakeEngine(ContinuousBatching, FakeEngine):
    @property
    def pending(self) -> int:
        return len(self.in_flight)

    def submit(self, requests: list[ChatRequest]) -> None:
        self.in_flight += requests

    def poll(self) -> list[tuple[ChatRequest, ChatResult]]:
        self.polls.append(list(self.in_flight))
        done, self.in_flight = self.in_flight[: self.finish_per_poll], self.in_flight[self.finish_per_poll :]
        self.batches.append(done)
        return [(request, self._result(request)) for request in done]


class BlockFakeEngine(FakeEngine):
    """An engine that streams like the Ray backend: blocks of `block_size` come back in reverse order
    (the order must not matter), then `RowsFailed` if any chain's id is in `fail` (those get no
    pairs, as on Ray). `engine.streams` records each call's requests without a follow-up,
    `engine.chains` each call's first requests with one."""

    def __init__(self, *args, block_size: int = 3, fail: set[str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.block_size, self.fail = block_size, set(fail or ())
        self.streams: list[list[ChatRequest]] = []
        self.chains: list[list[ChatRequest]] = []

    def stream(self, requests, follow_up=None, window=DEFAULT_WINDOW):
        return self._chains(requests, follow_up) if follow_up is not None else self._requests(requests)

    def _requests(self, requests):
        from pipeline.engine.ray_job import RowsFailed

        requests = list(requests)
        self.streams.append(requests)
        good = [r for r in requests if r.id not in self.fail]
        blocks = [good[i : i + self.block_size] for i in range(0, len(good), self.block_size)]
        for block in reversed(blocks):
            self.batches.append(block)
            yield [(request, self._result(request)) for request in reversed(block)]
        failed = [r.id for r in requests if r.id in self.fail]
        if failed:
            raise RowsFailed(f"{len(failed)} of {len(requests)} rows failed (first, {failed[0]}: scripted).")

    def _chains(self, first, follow_up):
        """Like the Ray backend's job of chains: the requests and the follow-up go through what the trip
        to a replica needs (JSON text, pickling), the chains run on a streaming fake, and blocks of
        `block_size` finished chains come back in reverse order."""
        import json
        import pickle

        from pipeline.engine.ray_job import RowsFailed, decode_pairs, decode_request, encode_pairs, encode_request
        from pipeline.engine.schedule import chain_blocks

        first = [decode_request(encode_request(request)) for request in first]
        self.chains.append(first)
        follow_up = pickle.loads(pickle.dumps(follow_up))
        replica = StreamingFakeEngine(self._respond, self.max_model_len, self.max_tokens, finish_per_poll=4)
        blocks = list(chain_blocks(replica, first, follow_up, window=8, block=self.block_size))
        self.batches += replica.batches
        for chains in reversed(blocks):
            kept = [pair for chain in chains if chain[0][0].id not in self.fail for pair in chain]
            if kept:
                yield decode_pairs(json.loads(json.dumps(encode_pairs(kept))))
        failed = [r.id for r in first if r.id in self.fail]
        if failed:
            raise RowsFailed(f"{len(failed)} of {len(first)} chains failed (first, {failed[0]}: scripted).")
