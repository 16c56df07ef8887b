"""One writer per output (pipeline/core/lock.py), with real processes: a second command is refused
at once naming the holder, a `kill -9` leaves no stale lock, and `evol run`'s stages are let in."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipeline.core.jsonio import InputError
from pipeline.core.lock import ENV, hold, lock_file

ROOT = Path(__file__).resolve().parents[1]

# Takes the lock of argv[1], says so, then waits; with argv[2] == "parent" it first starts a child
# that takes the same lock and a lock inside it, the way `evol run` starts its stages.
HOLDER = textwrap.dedent(
    """
    import subprocess, sys, time
    from pipeline.core.lock import held_fds, hold
    target, role = sys.argv[1], sys.argv[2]
    with hold(target):
        if role == "parent":
            code = subprocess.call([sys.executable, __file__, target, "child"], pass_fds=held_fds())
            print("child exit", code, flush=True)
        elif role == "child":
            with hold(target + "/sft/C1"):
                print("child in", flush=True)
        elif role == "orphan-maker":
            subprocess.Popen([sys.executable, __file__, target, "sleeper"], pass_fds=held_fds())
            print("held", flush=True)
            time.sleep(60)
        else:
            print("held", flush=True)
            time.sleep(60)
    """
)


@pytest.fixture
def holder_script(tmp_path):
    path = tmp_path / "holder.py"
    path.write_text(HOLDER)
    return path


def _env():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop(ENV, None)
    return env


def _start(script, target, role="sleeper", env=None):
    process = subprocess.Popen(
        [sys.executable, str(script), str(target), role], stdout=subprocess.PIPE, text=True, env=env or _env()
    )
    assert process.stdout.readline().strip() == "held"
    return process


def _evolve(target, env=None):
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "evolve", "--out", str(target)],
        capture_output=True,
        text=True,
        env=env or _env(),
        timeout=60,
    )


def test_second_command_is_refused_naming_directory_and_holder(tmp_path, holder_script):
    run_dir = tmp_path / "runs" / "tiny"
    holder = _start(holder_script, run_dir)
    try:
        second = _evolve(run_dir)
    finally:
        holder.kill()
        holder.wait()
    assert second.returncode == 2
    message = second.stderr.strip()
    assert message.count("\n") == 0 and "Traceback" not in message
    assert str(run_dir) in message and f"process {holder.pid}" in message and "holder.py" in message


def test_kill_9_leaves_no_stale_lock(tmp_path, holder_script):
    run_dir = tmp_path / "run"
    first = _start(holder_script, run_dir)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert lock_file(run_dir).is_file()  # the record stays; the lock went with the process
    second = _start(holder_script, run_dir)
    second.kill()
    second.wait()


def test_command_inside_a_busy_directory_is_refused_and_the_other_way_round(tmp_path, holder_script):
    run_dir = tmp_path / "run"
    outer = _start(holder_script, run_dir)
    try:
        with pytest.raises(InputError, match=f"process {outer.pid}"):
            with hold(run_dir / "sft" / "C1"):
                pass
    finally:
        outer.kill()
        outer.wait()
    inner = _start(holder_script, run_dir / "sft" / "C1")
    try:
        with pytest.raises(InputError, match=str(run_dir)):
            with hold(run_dir):
                pass
    finally:
        inner.kill()
        inner.wait()


def test_stage_processes_of_the_holder_are_let_in(tmp_path, holder_script):
    result = subprocess.run(
        [sys.executable, str(holder_script), str(tmp_path / "run"), "parent"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
    )
    assert "child in" in result.stdout and "child exit 0" in result.stdout, result.stderr


def test_listing_the_lock_in_the_environment_lets_no_stranger_in(tmp_path, holder_script):
    run_dir = tmp_path / "run"
    holder = _start(holder_script, run_dir)
    try:
        second = _evolve(run_dir, env=dict(_env(), **{ENV: str(lock_file(run_dir))}))
    finally:
        holder.kill()
        holder.wait()
    assert second.returncode == 2 and f"process {holder.pid}" in second.stderr


def test_an_orphaned_stage_keeps_the_lock_after_its_parent_is_killed(tmp_path, holder_script):
    run_dir = tmp_path / "run"
    parent = _start(holder_script, run_dir, role="orphan-maker")
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    try:
        with pytest.raises(InputError, match=str(run_dir)):
            with hold(run_dir):
                pass
    finally:
        # The orphan is the only other process holding the lock's descriptor; find it by the file.
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    cmdline = (proc / "cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if str(holder_script).encode() in cmdline and b"sleeper" in cmdline:
                    os.kill(int(proc.name), signal.SIGKILL)
    for _ in range(100):  # the kill lands asynchronously
        try:
            with hold(run_dir):
                return
        except InputError:
            time.sleep(0.1)
    pytest.fail("the lock was not released after the orphan died")


def test_report_reads_a_busy_run_directory_without_asking_for_its_lock(tmp_path, holder_script):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = _start(holder_script, run_dir)
    try:
        shown = subprocess.run(
            [sys.executable, "-m", "pipeline", "report", str(run_dir)],
            capture_output=True,
            text=True,
            env=_env(),
            timeout=60,
        )
    finally:
        holder.kill()
        holder.wait()
    assert "in use" not in shown.stderr and shown.stderr.startswith("Error: ")  # it got as far as reading
