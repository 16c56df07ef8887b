"""Faults of the machine, each one clear sentence and no lost work: no loopback interface, a full
disk while writing, a read-only or unreadable output, a model directory that vanished mid-run."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.config import EngineConfig
from pipeline.core import jsonio
from pipeline.core.jsonio import InputError, read_json, read_jsonl, write_json
from pipeline.engine.fake import FakeEngine
from pipeline.engine.vllm_backend import VLLMEngine, check_loopback, configure_structured_outputs

ROOT = Path(__file__).resolve().parents[1]
REAL_FSYNC = os.fsync


def _unshare_works() -> bool:
    if not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


needs_netns = pytest.mark.skipif(not _unshare_works(), reason="needs `unshare -n` (a new network namespace)")


def fake_model(tmp_path) -> Path:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "chat_template.jinja").write_text("{{ messages }}")
    return model


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, result.output
    return lines[0]


# ---------------------------------------------------------------- loopback


def test_loopback_is_found_on_this_machine():
    check_loopback()


def test_failed_loopback_connection_is_one_sentence(monkeypatch):
    def unreachable(self, address):
        raise OSError(errno.ENETUNREACH, "Network is unreachable")

    monkeypatch.setattr("socket.socket.connect", unreachable)
    with pytest.raises(InputError, match="loopback.*ip link set lo up"):
        check_loopback()


@needs_netns
def test_no_loopback_interface_stops_generate_before_the_engine(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a", "prompt": "Hi"}\n')
    command = [sys.executable, "-m", "pipeline", "generate", "--model", str(fake_model(tmp_path))]
    command += ["--in", str(prompts), "--out", str(tmp_path / "out.jsonl")]
    result = subprocess.run(
        ["unshare", "-n", *command], capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT))
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("Error: No working loopback") and result.stderr.count("\n") == 1


@needs_netns
def test_loopback_up_without_any_other_network_passes_the_check():
    if not shutil.which("ip"):
        pytest.skip("needs the `ip` command")
    check = f"{sys.executable} -c 'from pipeline.engine.vllm_backend import check_loopback; check_loopback()'"
    result = subprocess.run(
        ["unshare", "-n", "sh", "-c", f"ip link set lo up && {check}"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------- full disk


class DiskFull:
    """os.fsync that fails with ENOSPC from its `at`-th call on, after tearing the last bytes
    written, the way a write that ran out of space leaves a partial line."""

    def __init__(self, at: int):
        self.at, self.calls = at, 0

    def __call__(self, fd):
        self.calls += 1
        if self.calls >= self.at:
            size = os.fstat(fd).st_size
            os.ftruncate(fd, max(0, size - 7))
            raise OSError(errno.ENOSPC, "No space left on device")
        return REAL_FSYNC(fd)


def test_atomic_write_that_runs_out_of_space_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "scores.json"
    write_json(target, {"n": 1})
    monkeypatch.setattr(jsonio.os, "fsync", DiskFull(at=1))
    with pytest.raises(OSError) as caught:
        write_json(target, {"n": 2})
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    assert read_json(target) == {"n": 1} and [p.name for p in tmp_path.iterdir()] == ["scores.json"]


def test_disk_full_during_generate_keeps_finished_records_and_the_rerun_resumes(tmp_path, monkeypatch):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"Question {i}?"}) + "\n" for i in range(10)))
    engines = []

    def make_engine(*args, **kwargs):
        engines.append(FakeEngine(lambda r: "Answer to " + r.prompt_text))
        return engines[-1]

    monkeypatch.setattr("pipeline.engine.make_engine", make_engine)
    args = ["generate", "--model", str(fake_model(tmp_path)), "--in", str(prompts), "--set", "engine.chunk_size=2"]
    clean = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "clean.jsonl")])
    assert clean.exit_code == 0, clean.output

    out = tmp_path / "out.jsonl"
    monkeypatch.setattr(os, "fsync", DiskFull(at=3))
    full = CliRunner().invoke(main, [*args, "--out", str(out)])
    message = one_line_error(full)
    assert "No space left on the device while writing" in message and str(out) in message

    monkeypatch.setattr(os, "fsync", REAL_FSYNC)
    before = {r["id"] for r in jsonio.read_jsonl_tolerant(out)}
    assert 0 < len(before) < 10  # the chunks written before the disk filled are still there
    rerun = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert rerun.exit_code == 0, rerun.output
    generated = [r.id for batch in engines[-1].batches for r in batch]
    assert set(generated).isdisjoint(before)  # resumed: only what was missing was generated
    assert read_jsonl(out) == read_jsonl(tmp_path / "clean.jsonl")


# ---------------------------------------------------------------- read-only, unreadable


@pytest.mark.parametrize(
    ("code", "expected"),
    [(errno.EACCES, "Permission denied on"), (errno.EROFS, "is on a read-only file system")],
)
def test_output_that_cannot_be_written_is_one_sentence_naming_it(tmp_path, monkeypatch, code, expected):
    target = tmp_path / "run" / "config.yaml"

    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code), str(target))

    monkeypatch.setattr("pipeline.cli.evolve.vllm_models", lambda config: None)
    monkeypatch.setattr("pipeline.core.manifest.write_run_manifest", refuse)
    result = CliRunner().invoke(
        main, ["evolve", "--out", str(tmp_path / "run"), "--set", "evolve.decontaminate=false"]
    )
    message = one_line_error(result)
    assert expected in message and str(target) in message


@pytest.mark.parametrize(
    "error",
    [
        # torch.save into a full disk (what a checkpoint at train.save_steps raises)
        RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 1536 vs 1478"),
        RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"),
        # safetensors save_file into a full disk
        Exception('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left" })'),
    ],
)
def test_a_full_disk_hidden_in_a_library_error_is_one_sentence(tmp_path, monkeypatch, error):
    if "enforce fail" in str(error):
        error.__context__ = OSError(errno.ENOSPC, "No space left on device")  # what torch chains

    def full(*args, **kwargs):
        raise error

    monkeypatch.setattr("pipeline.cli.evolve.vllm_models", lambda config: None)
    monkeypatch.setattr("pipeline.core.manifest.write_run_manifest", full)
    result = CliRunner().invoke(
        main, ["evolve", "--out", str(tmp_path / "run"), "--set", "evolve.decontaminate=false"]
    )
    assert one_line_error(result).startswith("Error: No space left on the device while writing")


def test_other_library_errors_keep_their_traceback(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("shape mismatch in layer 3")

    monkeypatch.setattr("pipeline.cli.evolve.vllm_models", lambda config: None)
    monkeypatch.setattr("pipeline.core.manifest.write_run_manifest", broken)
    result = CliRunner().invoke(
        main, ["evolve", "--out", str(tmp_path / "run"), "--set", "evolve.decontaminate=false"]
    )
    assert isinstance(result.exception, RuntimeError) and "shape mismatch" in str(result.exception)


def test_other_os_errors_are_bugs_and_keep_their_traceback(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr("pipeline.cli.evolve.vllm_models", lambda config: None)
    monkeypatch.setattr("pipeline.core.manifest.write_run_manifest", broken)
    result = CliRunner().invoke(
        main, ["evolve", "--out", str(tmp_path / "run"), "--set", "evolve.decontaminate=false"]
    )
    assert isinstance(result.exception, OSError) and result.exception.errno == errno.EBADF


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads and writes through any permission")
def test_read_only_run_directory_for_real(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run_dir.chmod(0o555)
    try:
        result = CliRunner().invoke(main, ["evolve", "--out", str(run_dir), "--set", "evolve.decontaminate=false"])
    finally:
        run_dir.chmod(0o755)
    assert "Permission denied on" in one_line_error(result)


# ---------------------------------------------------------------- a model that vanished


def test_model_directory_gone_before_the_engine_starts(tmp_path):
    model = fake_model(tmp_path)
    shutil.rmtree(model)
    with pytest.raises(InputError, match=f"Model directory {model} is gone"):
        VLLMEngine(model, EngineConfig())


def test_adapter_gone_before_the_engine_starts(tmp_path):
    adapter = tmp_path / "sft" / "C1" / "adapter"
    with pytest.raises(InputError, match="Adapter C1 at .* is gone"):
        VLLMEngine(fake_model(tmp_path), EngineConfig(), adapters={"C1": adapter})


def test_model_gone_between_stages_is_one_sentence(tmp_path):
    model = fake_model(tmp_path)
    shutil.rmtree(model)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a", "prompt": "Hi"}\n')
    result = CliRunner().invoke(
        main, ["generate", "--model", str(model), "--in", str(prompts), "--out", str(tmp_path / "o.jsonl")]
    )
    assert str(model) in one_line_error(result)


# ---------------------------------------------------------------- a busy machine


def test_structured_output_compilation_does_not_depend_on_machine_load(monkeypatch):
    monkeypatch.delenv("VLLM_REGEX_COMPILATION_TIMEOUT_S", raising=False)
    configure_structured_outputs()
    assert float(os.environ["VLLM_REGEX_COMPILATION_TIMEOUT_S"]) >= 60  # vLLM's own 5 s ran out under load
    monkeypatch.setenv("VLLM_REGEX_COMPILATION_TIMEOUT_S", "7")
    configure_structured_outputs()
    assert os.environ["VLLM_REGEX_COMPILATION_TIMEOUT_S"] == "7"  # a user's setting wins
