"""The one scheduler behind every local backend's `Engine.stream`, and what callers build on the verb.

    for block in engine.stream(first_requests, follow_up, window=256): save(block)
    stats = generate_in_chunks(engine, requests, chunk_size=256, on_chunk=save)
    for chains in chain_blocks(engine, first_requests, follow_up, window=256, block=16): save(chains)

`dataflow` sends up to `window` requests at a time, a chain's follow-up before any fresh request, so
chains finish early and the batch stays full to the end. An engine that generates batches
(`BatchEngine`: one `generate` per window) gets waves; one with continuous batching
(`ContinuousBatching`: vLLM, the server, with `submit`/`poll`/`pending`) has each follow-up join the
running batch the moment its predecessor finishes. A backend subclasses the one that fits and adds
only what it does better (the Ray backend runs the whole stream as one job instead).
`generate_in_chunks` saves each block as it comes, which is how stages persist work and resume
after a crash; `chain_blocks` groups finished pairs into whole chains (a Ray replica's share of a job).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from pipeline.engine.types import DEFAULT_WINDOW, TOO_LONG, Block, ChatRequest, ChatResult, Engine, FollowUp


class BatchEngine:
    """The verb for an engine that generates batches (`generate`): waves of `window` requests."""

    continuous = False  # ContinuousBatching: follow-ups join the running batch (submit/poll/pending)

    def stream(
        self, requests: Iterable[ChatRequest], follow_up: FollowUp | None = None, window: int = DEFAULT_WINDOW
    ) -> Iterator[Block]:
        return dataflow(self, requests, follow_up, window)


class ContinuousBatching(BatchEngine):
    """An engine with continuous batching: requests join the running batch between decoding steps.
    It implements `submit(requests)`, `poll()` (advance one step; the pairs that finished in it) and
    `pending` (submitted, not yet polled). Chains with a follow-up use them; independent requests
    still go in waves of `window` through `generate`, the batches (which decide vLLM's numerics)
    that the stages' chunked resume has always sent."""

    continuous = True


@dataclass
class ChunkStats:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    too_long: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds else 0.0


def generate_in_chunks(
    engine: Engine,
    requests: Iterable[ChatRequest],
    chunk_size: int,
    on_chunk: Callable[[list[ChatRequest], list[ChatResult]], None],
    total: int | None = None,
    desc: str = "generate",
    postfix: Callable[[], dict] | None = None,
) -> ChunkStats:
    """Stream `requests` through `engine` (`chunk_size` at a time) and call `on_chunk` (which saves it)
    with each block as it finishes. On a local engine a block is a chunk in request order; a Ray job
    hands back blocks out of order, so callers pair requests with results, never rely on position.
    The progress bar shows requests done and output tokens/s, plus whatever `postfix` adds.
    """
    from tqdm import tqdm

    stats = ChunkStats()
    bar = tqdm(total=total, desc=desc, unit="req", dynamic_ncols=True, mininterval=1.0)
    try:
        waited = time.perf_counter()
        for pairs in engine.stream(requests, None, chunk_size):
            stats.seconds += time.perf_counter() - waited
            results = [result for _, result in pairs]
            stats.requests += len(results)
            stats.prompt_tokens += sum(r.prompt_tokens for r in results)
            stats.completion_tokens += sum(r.completion_tokens for r in results)
            stats.too_long += sum(r.finish_reason == TOO_LONG for r in results)
            on_chunk([request for request, _ in pairs], results)
            bar.update(len(results))
            bar.set_postfix({"tok/s": f"{stats.tokens_per_second:.0f}", **(postfix() if postfix else {})})
            waited = time.perf_counter()
    finally:
        bar.close()
    return stats


def dataflow(
    engine: BatchEngine, fresh: Iterable[ChatRequest], follow_up: FollowUp | None, window: int
) -> Iterator[Block]:
    """The scheduler (see the module doc): yields each batch of finished pairs, their follow-ups
    already queued. `fresh` is iterated again at every take, so a queue that ran dry and was refilled
    (a Ray replica's next block) is read on."""
    fresh = iter(fresh)
    follow: deque[ChatRequest] = deque()

    def take(n: int) -> list[ChatRequest]:
        batch = []
        while len(batch) < n and follow:
            batch.append(follow.popleft())
        for request in fresh if len(batch) < n else ():
            batch.append(request)
            if len(batch) >= n:
                break
        return batch

    def queue(finished: Block) -> Exception | None:
        """Queue the follow-ups of `finished`; an error of the follow-up is raised after the caller had
        the pairs, so it can save the ones before it (a caller that calls the follow-up on them too
        meets the error at the same pair)."""
        for request, result in finished if follow_up is not None else ():
            try:
                after = follow_up(request, result)
            except Exception as err:
                return err
            if after is not None:
                follow.append(after)
        return None

    if follow_up is None or not engine.continuous:
        while batch := take(window):
            finished = list(zip(batch, engine.generate(batch)))
            error = queue(finished)
            yield finished
            if error is not None:
                raise error
        return
    while True:
        engine.submit(take(window - engine.pending))
        if not engine.pending:
            return
        finished = engine.poll()
        if finished:
            error = queue(finished)
            yield finished
            if error is not None:
                raise error


def chain_blocks(
    engine: Engine, first: Iterable[ChatRequest], follow_up: FollowUp, window: int, block: int
) -> Iterator[list[Block]]:
    """Run chains on this engine (what a Ray replica does with its share of a job). Once at least
    `block` chains have finished, yields every chain finished so far (one decoding step may end
    several, so a yield can hold more than `block`; the Ray replica cuts them to exactly `block`),
    each chain its (request, result) pairs in order; a chain is the requests sharing an id, ended
    when `follow_up` returns None."""
    open_chains: dict[str, Block] = {}
    ended: list[Block] = []

    def follow(request: ChatRequest, result: ChatResult) -> ChatRequest | None:
        open_chains.setdefault(request.id, []).append((request, result))
        after = follow_up(request, result)
        if after is None:
            ended.append(open_chains.pop(request.id))
        return after

    for _ in engine.stream(first, follow, window):
        if len(ended) >= block:
            yield ended[:]
            ended.clear()
    if ended:
        yield ended
