"""`evol run`'s warm stage server (pipeline/warm.py): stages forked from one interpreter that has
imported the heavy libraries. Real processes: the server, and steps that record where they ran."""

import json
import os
import sys
import time
from pathlib import Path

import pytest

from pipeline.config import load_config, semantic_dict
from pipeline.core.jsonio import InputError
from pipeline.run import Step, run_steps, warm_start_for
from pipeline.warm import Warm

ROOT = Path(__file__).resolve().parent.parent
ENTRY = "tests.test_warm:run_code"  # the server runs a step's code instead of `evol ARGS`


def run_code(argv):
    exec(argv[0], {"__name__": "__main__"})


def recorder(log: Path, name: str, seconds: float = 0.1, code: int = 0) -> Step:
    """A step (no launcher: the server forks it) that records its process, parent, cores and environment."""
    source = "\n".join(
        [
            "import json, os, sys, time",
            f"time.sleep({seconds!r})",
            f"record = dict(name={name!r}, pid=os.getpid(), parent=os.getppid(), end=time.time(),",
            "    cores=sorted(os.sched_getaffinity(0)), omp=os.environ.get('OMP_NUM_THREADS'),",
            "    marker=os.environ.get('EVOL_TEST_MARKER'), argv0=sys.argv[0])",
            f"open({str(log)!r}, 'a').write(json.dumps(record) + '\\n')",
            f"sys.exit({code})",
        ]
    )
    return Step("test", name, [source])


def records(log: Path) -> dict:
    return {r["name"]: r for r in map(json.loads, log.read_text().splitlines())} if log.exists() else {}


def test_steps_are_forked_by_the_server_with_the_environment_of_the_moment(tmp_path, monkeypatch):
    log = tmp_path / "log.jsonl"
    with Warm(preload=("json",), entry=ENTRY) as warm:
        monkeypatch.setenv("EVOL_TEST_MARKER", "set after the server started")  # as the run's lock list is
        run_steps([recorder(log, "a"), recorder(log, "b")], lanes=1, warm=warm)
        server = warm.server.pid
    r = records(log)
    assert r["a"]["parent"] == r["b"]["parent"] == server  # forked, not started fresh
    assert r["a"]["pid"] != r["b"]["pid"]  # one process per step
    assert r["a"]["marker"] == "set after the server started"
    assert r["a"]["argv0"] == "evol"
    assert warm.server.returncode == 0  # closed: the server exited once its children were done


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to give two lanes")
def test_forked_steps_get_their_lanes_cores_and_a_failure_stops_the_neighbour(tmp_path):
    log = tmp_path / "log.jsonl"
    slow, bad = recorder(log, "slow", 30), recorder(log, "bad", 0.3, code=3)
    ok = recorder(log, "ok", 0.0)
    later = recorder(log, "later")
    later.after = [bad]
    started = time.time()
    with Warm(preload=(), entry=ENTRY) as warm:
        run_steps([ok], lanes=2, warm=warm)
        with pytest.raises(InputError, match=r"Stage test bad failed \(exit status 3\)"):
            run_steps([slow, bad, later], lanes=2, warm=warm)
    assert time.time() - started < 20  # the slow neighbour was terminated through its pid
    r = records(log)
    assert set(r) == {"ok", "bad"}
    assert len(r["ok"]["cores"]) == 1 and r["ok"]["omp"] == "1"
    assert r["bad"]["cores"] != sorted(os.sched_getaffinity(0))


def test_a_step_with_a_launcher_still_starts_fresh(tmp_path):
    log = tmp_path / "log.jsonl"
    step = recorder(log, "fresh")
    step.launcher, step.args = [sys.executable, "-c", step.args[0]], []
    with Warm(preload=(), entry=ENTRY) as warm:
        run_steps([step], lanes=1, warm=warm)
        assert records(log)["fresh"]["parent"] == os.getpid()


def test_a_server_that_cannot_start_is_one_sentence(tmp_path):
    with Warm(preload=(), entry="tests.test_warm:no_such_function") as warm:
        with pytest.raises(
            InputError, match=r"warm stage server .* stopped before starting a stage.*warm_start=false"
        ):
            warm.start(["x"])


def test_warm_start_is_automatic_on_cpu_only_and_a_throughput_knob():
    config = load_config(ROOT / "configs" / "tiny.yaml")
    assert warm_start_for(config, gpu=False) is True
    assert warm_start_for(config, gpu=True) is False
    off = load_config(ROOT / "configs" / "tiny.yaml", ["run.warm_start=false"])
    assert warm_start_for(off, gpu=False) is False
    assert semantic_dict(off) == semantic_dict(config)


def test_a_run_that_stops_leaves_no_stage_of_the_server_behind(tmp_path):
    log = tmp_path / "log.jsonl"
    started = time.time()
    with pytest.raises(KeyboardInterrupt):
        with Warm(preload=(), entry=ENTRY) as warm:
            stray = warm.start(recorder(log, "stray", 30).args)  # as if asked for just before Ctrl-C
            raise KeyboardInterrupt
    assert time.time() - started < 20  # the stage was stopped, not waited for
    assert not records(log) and warm.server.returncode is not None
    assert ended(stray.pid)


def ended(pid: int, within: float = 10.0) -> bool:
    """Whether the process is gone or a zombie (its parent, the server, is gone too) within a while."""
    deadline = time.time() + within
    while time.time() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except OSError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("ignored", [False, True], ids=["default", "ignored"])
def test_a_forked_step_handles_ctrl_c_as_evol_run_does(tmp_path, ignored):
    """A fresh stage inherits evol run's Ctrl-C handling (ignored in a background job); so does a forked one."""
    import signal

    log = tmp_path / "log.jsonl"
    code = (
        "import json, signal\n"
        "h = signal.getsignal(signal.SIGINT)\n"
        f"open({str(log)!r}, 'w').write(json.dumps('ignored' if h == signal.SIG_IGN else h.__name__))\n"
    )
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN if ignored else signal.default_int_handler)
    try:
        with Warm(preload=(), entry=ENTRY) as warm:
            assert warm.start([code]).wait() == 0
    finally:
        signal.signal(signal.SIGINT, previous)
    assert json.loads(log.read_text()) == ("ignored" if ignored else "default_int_handler")
