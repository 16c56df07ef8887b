"""How stages feed an engine: in resumable chunks, or as chains of dependent requests.

    stats = generate_in_chunks(engine, requests, chunk_size=256, on_chunk=save)
    run_dataflow(engine, first_requests, on_results=follow_ups, window=256)
    for chains in chain_blocks(engine, first_requests, follow_up, window=256, block=16): save(chains)

`generate_in_chunks` hands each finished chunk to a callback, which is how stages persist work and
resume after a crash. `run_dataflow` is for work whose next request depends on the last one's
result (evolve, then check, then answer): on a `StreamingEngine` it keeps continuous batching full
by sending each follow-up as soon as its predecessor finishes; any other engine gets waves.
`chain_blocks` runs whole chains on a local engine and hands back the finished ones in blocks: what
a Ray replica does with its share of a `ChainEngine.run_chains` job.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from pipeline.engine.types import (
    TOO_LONG,
    BlockStreamingEngine,
    ChatRequest,
    ChatResult,
    Engine,
    FollowUp,
    StreamingEngine,
)


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
    """Send requests in chunks of `chunk_size`; after each chunk call `on_chunk` (which saves it).

    A `BlockStreamingEngine` (Ray) gets every request in one job instead, and `on_chunk` each block
    as it arrives (out of order: callers pair requests with results, never rely on position).
    The progress bar shows requests done and output tokens/s, plus whatever `postfix` adds.
    """
    from tqdm import tqdm

    stats = ChunkStats()
    bar = tqdm(total=total, desc=desc, unit="req", dynamic_ncols=True, mininterval=1.0)
    chunk: list[ChatRequest] = []

    def flush(results: list[ChatResult] | None = None, seconds: float = 0.0) -> None:
        if results is None:
            started = time.perf_counter()
            results = engine.generate(chunk)
            seconds = time.perf_counter() - started
        stats.seconds += seconds
        stats.requests += len(results)
        stats.prompt_tokens += sum(r.prompt_tokens for r in results)
        stats.completion_tokens += sum(r.completion_tokens for r in results)
        stats.too_long += sum(r.finish_reason == TOO_LONG for r in results)
        on_chunk(list(chunk), results)
        bar.update(len(results))
        bar.set_postfix({"tok/s": f"{stats.tokens_per_second:.0f}", **(postfix() if postfix else {})})
        chunk.clear()

    try:
        if isinstance(engine, BlockStreamingEngine):
            waited = time.perf_counter()
            for pairs in engine.stream(requests):
                chunk[:] = [request for request, _ in pairs]
                flush([result for _, result in pairs], time.perf_counter() - waited)
                waited = time.perf_counter()
            return stats
        for request in requests:
            chunk.append(request)
            if len(chunk) >= chunk_size:
                flush()
        if chunk:
            flush()
    finally:
        bar.close()
    return stats


def run_dataflow(
    engine: Engine,
    fresh: Iterable[ChatRequest],
    on_results: Callable[[list[tuple[ChatRequest, ChatResult]]], list[ChatRequest]],
    window: int,
) -> None:
    """Generate requests whose follow-ups depend on their results, keeping the engine busy.

    Up to `window` requests are in the engine at once. Each batch of finished (request, result)
    pairs goes to `on_results`, which returns the follow-up requests; these are sent before any
    further fresh ones, so chains finish early and the batch stays full to the end. An engine
    without `submit`/`poll` (data-parallel workers) gets waves: one `generate` call per window.
    """
    for _ in dataflow(engine, fresh, on_results, window):
        pass


def dataflow(
    engine: Engine,
    fresh: Iterable[ChatRequest],
    on_results: Callable[[list[tuple[ChatRequest, ChatResult]]], list[ChatRequest]],
    window: int,
) -> Iterator[list[tuple[ChatRequest, ChatResult]]]:
    """`run_dataflow` as a generator: yields each batch of finished pairs once `on_results` has had it."""
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

    if not isinstance(engine, StreamingEngine):
        while batch := take(window):
            finished = list(zip(batch, engine.generate(batch)))
            follow.extend(on_results(finished))
            yield finished
        return
    while True:
        engine.submit(take(window - engine.pending))
        if not engine.pending:
            return
        finished = engine.poll()
        if finished:
            follow.extend(on_results(finished))
            yield finished


def chain_blocks(
    engine: Engine, first: Iterable[ChatRequest], follow_up: FollowUp, window: int, block: int
) -> Iterator[list[list[tuple[ChatRequest, ChatResult]]]]:
    """Run chains on this engine (`ChainEngine.run_chains` where the engine is local: a Ray replica
    runs its share with it). Once at least `block` chains have finished, yields every chain finished
    so far (one decoding step may end several, so a yield can hold more than `block`; the Ray replica
    cuts them to exactly `block`), each chain its (request, result) pairs in order; a chain is the
    requests sharing an id, ended when `follow_up` returns None."""
    open_chains: dict[str, list[tuple[ChatRequest, ChatResult]]] = {}
    ended: list[list[tuple[ChatRequest, ChatResult]]] = []

    def on_results(pairs: list[tuple[ChatRequest, ChatResult]]) -> list[ChatRequest]:
        following = []
        for request, result in pairs:
            chain = open_chains.setdefault(request.id, [])
            chain.append((request, result))
            after = follow_up(request, result)
            if after is None:
                ended.append(open_chains.pop(request.id))
            else:
                following.append(after)
        return following

    for _ in dataflow(engine, first, on_results, window):
        if len(ended) >= block:
            yield ended[:]
            ended.clear()
    if ended:
        yield ended
