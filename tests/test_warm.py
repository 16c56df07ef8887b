"""`evol run`'s warm stage server (pipeline/warm.py): stages forked from one interpreter that has
imported the heavy libraries. Real processes: the server, and steps that log where they ran, in the
order things happened."""

import json
import os
import select
import subprocess
import sys
import threading
import types
from pathlib import Path

import pytest

from pipeline.config import load_config, semantic_dict
from pipeline.core.jsonio import InputError
from pipeline.plan import Step
from pipeline.run import run_steps, warm_start_for
from pipeline.warm import Warm, fork_hazard

ROOT = Path(__file__).resolve().parent.parent
ENTRY = "tests.test_warm:run_code"  # the server runs a step's code instead of `evol ARGS`


def run_code(argv):
    exec(argv[0], {"__name__": "__main__"})


def recorder(log: Path, name: str, code: int = 0, wait_for: Path | None = None) -> Step:
    """A step (no launcher: the server forks it) that logs a start event and, as it exits, an end event
    with its process, parent, cores and environment. With `wait_for` it ends only once that file
    exists (at most 120 s: a guard against a hang, which the code under test never needs)."""
    lines = [
        "import json, os, pathlib, sys, time",
        "def event(kind, **more):",
        f"    open({str(log)!r}, 'a').write(json.dumps(dict(name={name!r}, event=kind, **more)) + '\\n')",
        "event('start')",
    ]
    if wait_for:
        lines += [
            f"w, t = pathlib.Path({str(wait_for)!r}), time.time()",
            "while not w.exists() and time.time() - t < 120:",
            "    time.sleep(0.05)",
        ]
    lines += [
        "event('end', pid=os.getpid(), parent=os.getppid(), cores=sorted(os.sched_getaffinity(0)),",
        "    omp=os.environ.get('OMP_NUM_THREADS'), marker=os.environ.get('EVOL_TEST_MARKER'), argv0=sys.argv[0])",
        f"sys.exit({code})",
    ]
    return Step("test", name, ["\n".join(lines)])


def events(log: Path) -> list[str]:
    """The log as "name start" / "name end", in the order they happened."""
    return [f"{e['name']} {e['event']}" for e in map(json.loads, log.read_text().splitlines())] if log.exists() else []


def records(log: Path) -> dict:
    """Each step's end event, by name."""
    if not log.exists():
        return {}
    return {e["name"]: e for e in map(json.loads, log.read_text().splitlines()) if e["event"] == "end"}


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
    slow = recorder(log, "slow", wait_for=tmp_path / "never")  # ends on its own only after 120 s
    bad, ok, later = recorder(log, "bad", code=3), recorder(log, "ok"), recorder(log, "later")
    later.after = [bad.title]
    with Warm(preload=(), entry=ENTRY) as warm:
        run_steps([ok], lanes=2, warm=warm)
        with pytest.raises(InputError, match=r"Stage test bad failed \(exit status 3\)"):
            run_steps([slow, bad, later], lanes=2, warm=warm)
    order = events(log)
    assert "slow end" not in order  # the slow neighbour was terminated through its pid, not waited for
    assert "later start" not in order
    r = records(log)
    assert set(r) == {"ok", "bad"}
    assert len(r["ok"]["cores"]) == 1 and r["ok"]["omp"] == "1"
    assert r["bad"]["cores"] != sorted(os.sched_getaffinity(0))


def test_a_forked_step_sizes_the_blas_and_openmp_pools_the_server_loaded(tmp_path):
    """A pool sized when the server imported its library never reads the environment again: the forked
    stage resizes it, besides setting the variables for the libraries it loads itself."""
    log = tmp_path / "pools.json"
    code = (
        "import json, os, threadpoolctl\n"
        "pools = {p['filepath']: p['num_threads'] for p in threadpoolctl.threadpool_info()}\n"
        "names = ('OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'OPENBLAS_NUM_THREADS')\n"
        f"open({str(log)!r}, 'w').write(json.dumps(dict(pools=pools, env=[os.environ.get(n) for n in names])))\n"
    )
    with Warm(preload=("numpy",), entry=ENTRY) as warm:
        assert warm.start([code], cores=[min(os.sched_getaffinity(0))]).wait() == 0
    result = json.loads(log.read_text())
    assert result["env"] == ["1", "1", "1"]
    assert result["pools"] and set(result["pools"].values()) == {1}  # numpy's OpenBLAS among them


def test_a_server_running_a_thread_refuses_to_fork_and_says_why(tmp_path, capfd):
    forked = tmp_path / "forked"
    with Warm(preload=("tests.warm_thread",), entry=ENTRY) as warm:
        assert warm.start([f"open({str(forked)!r}, 'w')"]) is None
    assert not forked.exists()
    err = capfd.readouterr().err.splitlines()
    assert sum("fresh instead of forking it from the warm stage server" in line for line in err) == 1
    assert any("the server runs 1 thread(s) besides its main one" in line for line in err)


def test_a_stage_the_server_may_not_fork_starts_fresh(capfd):
    step = Step("config", "show", ["config", "show", "--set", "run.name=started-fresh"])
    with Warm(preload=("tests.warm_thread",), entry="pipeline.cli:main") as warm:
        run_steps([step], lanes=1, warm=warm)
    out, err = capfd.readouterr()
    assert "Starting `evol config` fresh instead of forking it" in err
    assert "name: started-fresh" in out  # and the fresh process ran it


def test_fork_hazard_names_a_thread_that_runs_beside_the_main_one():
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait)
    worker.start()
    try:
        assert "thread(s) besides its main one" in (fork_hazard() or "")
    finally:
        stop.set()
        worker.join()


def test_fork_hazard_names_cuda_once_torch_has_initialised_it(monkeypatch):
    torch = types.SimpleNamespace(cuda=types.SimpleNamespace(is_initialized=lambda: True))
    monkeypatch.setitem(sys.modules, "torch", torch)
    assert "has initialised CUDA" in (fork_hazard() or "")


def test_idle_blas_and_allocator_pools_do_not_stop_a_fork():
    """numpy's OpenBLAS and pyarrow's jemalloc start worker threads at import and prepare for a fork
    themselves: a server that imported them (as the real one does) still forks."""
    code = (
        "import os, numpy, pyarrow\n"
        "from pipeline.warm import fork_hazard\n"
        "print(len(os.listdir('/proc/self/task')), fork_hazard())"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    threads, hazard = run.stdout.split(maxsplit=1)
    assert int(threads) > 1  # guards the test itself: there are pool threads to tell apart
    assert hazard.strip() == "None"


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
    with pytest.raises(KeyboardInterrupt):
        with Warm(preload=(), entry=ENTRY) as warm:
            # as if asked for just before Ctrl-C; it would end on its own only after 120 s
            stray = warm.start(recorder(log, "stray", wait_for=tmp_path / "never").args)
            watch = os.pidfd_open(stray.pid)  # the process itself, whoever becomes its parent
            raise KeyboardInterrupt
    select.select([watch], [], [])  # returns once the stray has ended
    os.close(watch)
    assert "stray end" not in events(log)  # it was stopped, not waited for
    assert warm.server.returncode is not None


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
