"""The server backend: generation on an OpenAI-compatible server that is already running.

    python -m vllm.entrypoints.openai.api_server --model models/smollm2-135m --served-model-name smollm2-135m \\
        --max-model-len 2048 --port 8000 &
    evol evolve --config configs/tiny.yaml --set engine.backend=server \\
        --set engine.url=http://127.0.0.1:8000/v1 --out runs/tiny-server

`ServerEngine` is an `Engine` with continuous batching over `/v1/chat/completions`: up to `engine.max_in_flight`
requests are on the server at once (one thread and one kept-alive connection each), so the server's
continuous batch stays full and each follow-up of a chain is sent the moment its predecessor returns.
The model names of the config are the names the server serves (`/v1/models`, checked before any
work); a LoRA adapter is asked for by its name as the `model`, and one the server does not list is
loaded through vLLM's runtime endpoint when the server allows it.

What vLLM's own backend does in-process is asked of the server in the request body: the per-request
`seed`, and constrained output as `structured_outputs` (`{"choice": [...]}` or `{"regex": ...}`). A
server that refuses one of these fields is said once and sent the request without it (counted in
`stats`); the callers' tolerant parsers read the free text then. A prompt longer than the context is
the server's HTTP 400 about the maximum context length, mapped to `finish_reason == "too_long"`.

Faults: a refused connection, a timeout, a 5xx or 429, or a reply that is not the JSON it should be
is retried `engine.retries` times with exponential backoff; then the stage stops with one sentence
naming the URL and what happened, and the requests that had finished are kept by their stage, so
rerunning the same command sends only the rest.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import EngineConfig
from pipeline.core.jsonio import InputError
from pipeline.core.models import chat_template_of
from pipeline.engine.schedule import ContinuousBatching
from pipeline.engine.types import TOO_LONG, ChatRequest, ChatResult

# Statuses worth another try: the server is starting, overloaded or restarting behind a proxy.
TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
CONTEXT_OVERFLOW = re.compile(r"maximum context length", re.IGNORECASE)
# vLLM 0.32: "your prompt contains at least 2049 input tokens"; older: "(2000 in the messages, ...)".
PROMPT_TOKENS = re.compile(r"contains (?:at least )?(\d+) input tokens|(\d+) in the messages")
# How a kept-alive connection the server has closed fails when it is used again.
STALE_CONNECTION = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError, ConnectionAbortedError)
# The optional request fields a server may not know, in the order they are given up.
OPTIONAL_FIELDS = ("structured_outputs", "seed")


class ServerError(InputError):
    """The server could not be used (not there, failing, refusing a request): one sentence naming it."""


class Transient(Exception):
    """A fault that another try may cure; its text says what happened."""


class Skipped(Exception):
    """A queued request not sent because an earlier one failed for good."""


@dataclass
class Reply:
    status: int
    body: dict | None  # the parsed JSON, None when the reply was not JSON
    text: str = ""  # the raw reply, for one that is not JSON

    @property
    def message(self) -> str:
        """The server's error text: OpenAI's {"error": {"message"}}, vLLM's older {"message"}, FastAPI's {"detail"}."""
        body = self.body or {}
        error = body.get("error")
        if isinstance(error, dict):
            return str(error.get("message", ""))
        return str(error or body.get("message") or body.get("detail") or self.text[:200])


@dataclass
class ServedModel:
    """A model as the server lists it in /v1/models."""

    url: str
    name: str
    root: str | None = None  # what the server loaded (vLLM: the model path; for an adapter, the adapter path)
    parent: str | None = None  # an adapter's base model
    max_model_len: int | None = None

    @property
    def identity(self) -> str:
        """What the stage keys hold for this model: its name and what the server reports it is (not
        the URL, so the same model served elsewhere keeps the keys)."""
        parts = [f"served {self.name}", f"root={self.root}", f"max_model_len={self.max_model_len}"]
        return " ".join(parts + ([f"parent={self.parent}"] if self.parent else []))

    def to_dict(self) -> dict:
        return {
            "url": self.url,
            "name": self.name,
            "root": self.root,
            "parent": self.parent,
            "max_model_len": self.max_model_len,
        }


def api_key(settings: EngineConfig) -> str | None:
    """The API key from the environment variable engine.api_key_env names (never from the config)."""
    if not settings.api_key_env:
        return None
    key = os.environ.get(settings.api_key_env)
    if not key:
        raise ServerError(
            f"engine.api_key_env names ${settings.api_key_env}, which is not set; export the server's API key "
            f"in it (or set engine.api_key_env to empty for a server without a key)."
        )
    return key


def role_url(settings: EngineConfig, role: str) -> str:
    return (settings.role_urls.get(role) or settings.url).rstrip("/")


class ServerClient:
    """JSON over HTTP to one base URL, one kept-alive connection per thread, with retries."""

    def __init__(
        self,
        url: str,
        key: str | None = None,
        timeout_s: float = 600.0,
        retries: int = 4,
        backoff_s: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.url = url.rstrip("/")
        parts = urllib.parse.urlsplit(self.url)
        self.https = parts.scheme == "https"
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port
        self.base_path = parts.path.rstrip("/")
        self.key, self.timeout_s, self.retries, self.backoff_s, self.sleep = key, timeout_s, retries, backoff_s, sleep
        self.retried = 0  # transient faults retried, over every thread
        self.reconnected = 0  # requests sent again on a new connection: the kept-alive one had been closed
        self._lock = threading.Lock()
        self._local = threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            kind = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
            conn = self._local.conn = kind(self.host, self.port, timeout=self.timeout_s)
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _exchange(self, method: str, path: str, data: bytes | None, headers: dict) -> tuple:
        """One request and its whole reply on this thread's connection. A kept-alive connection the
        server closed while it idled (uvicorn closes them after 5 s) fails at once when reused: that
        is no fault of the server, so the request goes again at once on a new connection, uncounted."""
        reused = getattr(self._local, "conn", None) is not None
        try:
            conn = self._connection()
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            return response, response.read()
        except STALE_CONNECTION:
            if not reused:
                raise
            self._drop_connection()
            with self._lock:
                self.reconnected += 1
            conn = self._connection()
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            return response, response.read()

    def _once(self, method: str, path: str, body: dict | None, want_json: bool) -> Reply:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        data = json.dumps(body).encode() if body is not None else None
        try:
            response, raw = self._exchange(method, self.base_path + path, data, headers)
        except TimeoutError:
            self._drop_connection()
            raise Transient(f"did not answer within {self.timeout_s:g} s (engine.request_timeout_s)") from None
        except ConnectionRefusedError:
            self._drop_connection()
            raise Transient("refused the connection (is the server running?)") from None
        except (OSError, http.client.HTTPException) as err:
            self._drop_connection()
            raise Transient(f"dropped the connection ({type(err).__name__}: {err})") from None
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        if response.status in TRANSIENT_STATUS:
            raise Transient(
                f"returned HTTP {response.status} ({Reply(response.status, parsed).message or raw[:200]!r})"
            )
        if response.status == 200 and want_json and not isinstance(parsed, dict):
            raise Transient(f"returned a reply that is not a JSON object ({raw[:80]!r})")
        text = raw.decode("utf-8", "replace") if not isinstance(parsed, dict) else ""
        return Reply(response.status, parsed if isinstance(parsed, dict) else None, text)

    def request(
        self,
        method: str,
        path: str,
        body: dict | None = None,
        check: Callable[[Reply], None] | None = None,
        want_json: bool = True,
    ) -> Reply:
        """The reply, after up to `retries` more tries on transient faults (backoff 1, 2, 4 ... x backoff_s,
        at most 30 s); then one sentence naming the URL and the last fault. `check` may raise Transient
        for a reply that parsed but lacks what the caller needs."""
        for attempt in range(self.retries + 1):
            try:
                reply = self._once(method, path, body, want_json)
                if check is not None:
                    check(reply)
                return reply
            except Transient as fault:
                last = fault
                if attempt < self.retries:
                    with self._lock:
                        self.retried += 1
                    self.sleep(min(30.0, self.backoff_s * 2**attempt))
        tries = f"{self.retries + 1} {'try' if self.retries == 0 else 'tries'}"
        raise ServerError(
            f"The server at {self.url} {last} on {method} {path}, {tries} in all (engine.retries); start or fix "
            f"it and rerun the same command: finished requests are kept and only the rest are sent."
        )


def served_models(client: ServerClient) -> list[ServedModel]:
    def check(reply: Reply) -> None:
        if reply.status == 200 and not isinstance((reply.body or {}).get("data"), list):
            raise Transient("returned a /models reply without a list of models")

    reply = client.request("GET", "/models", check=check)
    if reply.status != 200:
        raise ServerError(
            f"The server at {client.url} answered GET /models with HTTP {reply.status} ({reply.message}); "
            f"is engine.url its OpenAI base URL (ending in /v1), and is the API key right (engine.api_key_env)?"
        )
    return [
        ServedModel(client.url, str(m.get("id")), m.get("root"), m.get("parent"), m.get("max_model_len"))
        for m in reply.body["data"]
        if isinstance(m, dict)
    ]


def find_model(models: list[ServedModel], name: str, url: str, role: str = "") -> ServedModel:
    """The served model of this name, or one sentence listing what the server offers."""
    for model in models:
        if model.name == name:
            return model
    offered = ", ".join(m.name for m in models) or "nothing"
    who = f" for the {role}" if role else ""
    raise ServerError(
        f"The server at {url} does not serve a model named {name!r}{who}; it offers: {offered}. "
        f"Name one of these in the config (the model names are the server's with engine.backend=server)."
    )


def client_for(settings: EngineConfig, role: str, backoff_s: float = 1.0) -> ServerClient:
    return ServerClient(
        role_url(settings, role), api_key(settings), settings.request_timeout_s, settings.retries, backoff_s
    )


def open_model(
    settings: EngineConfig,
    name: str,
    role: str = "",
    adapters: dict[str, str] | None = None,
    backoff_s: float = 1.0,
) -> tuple[ServerClient, ServedModel]:
    """A client for the role's server and the model it asks for, as the server reports it (a wrong name
    is one sentence, before any work), with every adapter the server must answer with loaded into it."""
    client = client_for(settings, role, backoff_s)
    offered = served_models(client)
    served = find_model(offered, name, client.url, role)
    load_adapters(client, offered, adapters or {})
    return client, served


def served_model(settings: EngineConfig, name: str, role: str = "") -> ServedModel:
    """The model a role asks for, as the server at its URL reports it (before any work)."""
    return open_model(settings, name, role)[1]


@dataclass
class ServerStats:
    requests: int = 0
    too_long: int = 0
    retries: int = 0
    # requests answered without a field they asked for (the server refused it), by field
    fallbacks: dict[str, int] = field(default_factory=lambda: {name: 0 for name in OPTIONAL_FIELDS})


class ServerEngine(ContinuousBatching):
    """An `Engine` on an OpenAI-compatible server: submit/poll keep up to max_in_flight requests there."""

    def __init__(
        self,
        model: str,
        settings: EngineConfig,
        role: str = "",
        adapters: dict[str, str | Path] | None = None,
        backoff_s: float = 1.0,
    ):
        self.settings = settings
        self.adapters = {name: str(path) for name, path in (adapters or {}).items()}
        self.client, self.served = open_model(settings, model, role, self.adapters, backoff_s)
        # An adapter whose template is not the served model's (a fine-tune of a base model) sends its own
        # with each request; the server renders the rest with the model's. What the server cannot show
        # (no local copy of the model) counts as different.
        served_template = chat_template_of(self.served.root) if self.served.root else None
        self.templates = {name: chat_template_of(path) for name, path in self.adapters.items()}
        self.templates = {name: t if t != served_template else None for name, t in self.templates.items()}
        self.url = self.client.url
        self.model_name = model
        self._refused: set[str] = set()  # optional fields this server refused: never sent again
        self._lock = threading.Lock()
        self._stats = ServerStats()
        self._pool = ThreadPoolExecutor(max_workers=settings.max_in_flight, thread_name_prefix="evol-server")
        self._futures: dict[Future, ChatRequest] = {}
        self._failed: BaseException | None = None

    @property
    def stats(self) -> ServerStats:
        self._stats.retries = self.client.retried
        return self._stats

    def body(self, request: ChatRequest) -> dict:
        settings = self.settings
        body = {
            "model": request.adapter or self.model_name,
            "messages": request.messages,
            "max_tokens": request.max_tokens or settings.max_tokens,
            "temperature": settings.temperature if request.temperature is None else request.temperature,
            "top_p": settings.top_p if request.top_p is None else request.top_p,
        }
        if request.seed is not None:
            body["seed"] = request.seed
        if request.choice:
            body["structured_outputs"] = {"choice": list(request.choice)}
        elif request.regex:
            body["structured_outputs"] = {"regex": request.regex}
        if request.adapter is not None and request.adapter not in self.adapters:
            raise KeyError(f"Adapter '{request.adapter}' was not given to the engine; known: {sorted(self.adapters)}.")
        if request.adapter is not None and self.templates[request.adapter]:
            # vLLM's server renders with the base's template unless the request brings the adapter's own
            body["chat_template"] = self.templates[request.adapter]
        return body

    def complete(self, request: ChatRequest) -> ChatResult:
        """One request to the end: retries inside, too_long for a context overflow, refused fields dropped.
        Once a request has failed for good, the requests not yet sent are not sent (Skipped)."""
        if self._failed is not None:
            raise Skipped()
        try:
            return self._complete(request)
        except ServerError as err:
            with self._lock:
                self._failed = self._failed or err
            raise

    def _complete(self, request: ChatRequest) -> ChatResult:
        body = self.body(request)
        wanted = [name for name in OPTIONAL_FIELDS if name in body]
        while True:
            for name in self._refused:
                body.pop(name, None)
            reply = self.client.request("POST", "/chat/completions", body, check=_check_completion)
            if reply.status == 200:
                with self._lock:  # each request answered without a field it asked for, by field
                    for name in wanted:
                        self._stats.fallbacks[name] += name not in body
                return self._result(request, reply.body)
            message = reply.message
            if reply.status == 400 and CONTEXT_OVERFLOW.search(message):
                with self._lock:
                    self._stats.requests += 1
                    self._stats.too_long += 1
                return ChatResult(request.id, "", _prompt_tokens(message), 0, TOO_LONG)
            refused = _refused_field(reply, body)
            if refused is None:
                raise ServerError(
                    f"The server at {self.url} refused a request for {body['model']!r} with HTTP {reply.status}: "
                    f"{message or 'no reason given'}."
                )
            with self._lock:
                if refused not in self._refused:
                    self._refused.add(refused)
                    print(
                        f"[server] {self.url} does not accept `{refused}` ({message or f'HTTP {reply.status}'}); "
                        f"sending requests without it from now on"
                        + (", and reading the free text instead" if refused == "structured_outputs" else ""),
                        file=sys.stderr,
                    )

    def _result(self, request: ChatRequest, body: dict) -> ChatResult:
        choice = body["choices"][0]
        usage = body.get("usage") or {}
        with self._lock:
            self._stats.requests += 1
        return ChatResult(
            request.id,
            (choice.get("message") or {}).get("content") or "",
            int(usage.get("prompt_tokens") or 0),
            int(usage.get("completion_tokens") or 0),
            choice.get("finish_reason") or "stop",
        )

    def generate(self, requests: list[ChatRequest]) -> list[ChatResult]:
        try:
            return list(self._pool.map(self.complete, requests))
        except Skipped:
            raise self._failed from None

    @property
    def pending(self) -> int:
        return len(self._futures)

    def submit(self, requests: list[ChatRequest]) -> None:
        for request in requests:
            self._futures[self._pool.submit(self.complete, request)] = request

    def poll(self) -> list[tuple[ChatRequest, ChatResult]]:
        """Waits until at least one request has come back; those that did. After a request failed for
        good no more are sent, the others still running are handed back as they end, and the failure
        is raised once nothing finished is left to hand back (so callers keep every finished result)."""
        if not self._futures:
            return []
        done, _ = wait(list(self._futures), return_when=FIRST_COMPLETED)
        finished = []
        for future in done:
            request = self._futures.pop(future)
            error = future.exception()
            if error is None:
                finished.append((request, future.result()))
            elif not isinstance(error, Skipped) and self._failed is None:
                self._failed = error  # anything else a request raised (a bug, an unknown adapter)
        if self._failed is not None and not finished:
            while self._futures:  # what is still out comes back first: finished work is never dropped
                request_done, _ = wait(list(self._futures), return_when=FIRST_COMPLETED)
                for future in request_done:
                    request = self._futures.pop(future)
                    if future.exception() is None:
                        finished.append((request, future.result()))
                if finished:
                    return finished
            raise self._failed
        return finished

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._futures.clear()
        stats = self.stats
        notes = [f"{stats.retries} transient faults retried"] if stats.retries else []
        notes += [f"{n} answered without {name}" for name, n in stats.fallbacks.items() if n]
        if notes:
            print(f"[server] {self.url}: {stats.requests} requests, " + ", ".join(notes), file=sys.stderr)


def _check_completion(reply: Reply) -> None:
    """A 200 that is not a chat completion is a torn or garbled reply: worth another try."""
    if reply.status != 200:
        return
    try:
        choice = reply.body["choices"][0]
        if not isinstance(choice, dict):
            raise TypeError
    except (KeyError, IndexError, TypeError):
        raise Transient(f"returned JSON that is not a chat completion ({json.dumps(reply.body)[:80]})") from None


def _prompt_tokens(message: str) -> int:
    match = PROMPT_TOKENS.search(message)
    return int(next(g for g in match.groups() if g)) if match else 0


def _refused_field(reply: Reply, body: dict) -> str | None:
    """The optional field a 4xx reply refuses: the one its message names, else the first one sent."""
    if reply.status not in (400, 422):
        return None
    sent = [name for name in OPTIONAL_FIELDS if name in body]
    message = reply.message.lower()
    named = [name for name in sent if name in message or (name == "structured_outputs" and "guided" in message)]
    if named:
        return named[0]
    return (
        sent[0]
        if sent and any(word in message for word in ("unknown", "unsupported", "extra", "not permitted"))
        else None
    )


def load_adapters(client: ServerClient, offered: list[ServedModel], adapters: dict[str, str]) -> None:
    """Every adapter the server must answer with: one it lists already, or loaded at runtime through
    vLLM's /load_lora_adapter (allowed when the server runs with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)."""
    names = {m.name for m in offered}
    for name, path in adapters.items():
        if name in names:
            continue
        # vLLM answers a load with plain text ("Success: LoRA adapter ... added successfully.")
        reply = client.request("POST", "/load_lora_adapter", {"lora_name": name, "lora_path": path}, want_json=False)
        if reply.status == 200 or "already" in reply.message.lower():
            print(f"[server] loaded the LoRA adapter {name} from {path} into {client.url}", file=sys.stderr)
            continue
        reason = f"HTTP {reply.status}" + (f": {reply.message}" if reply.message else "")
        raise ServerError(
            f"The server at {client.url} does not serve the LoRA adapter {name!r} and could not load it from "
            f"{path} ({reason}); start it with --enable-lora --lora-modules {name}={path} (or with "
            f"VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, so adapters are loaded as they are needed)."
        )
