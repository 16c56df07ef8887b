"""`evol run` lanes: the two-lane plan of the tiny run on CPU, and the scheduler that runs it
(real processes: short Python commands that record when they ran and on which cores)."""

import json
import os
import sys
import time
from pathlib import Path

import pytest

from pipeline.config import load_config, semantic_dict
from pipeline.core.jsonio import InputError
from pipeline.run import Step, lane_cores, lanes_for, plan, run_steps

ROOT = Path(__file__).resolve().parent.parent
RUN = Path("runs/x")
CFG = RUN / "config.yaml"


def tiny(*sets):
    return load_config(ROOT / "configs" / "tiny.yaml", ["run.rounds=[0,1,2]", *sets])


def titles(steps):
    return [s.title for s in steps]


def test_two_lanes_make_each_model_a_chain_that_may_start_once_its_round_is_committed():
    steps = plan(tiny(), RUN, CFG, gpu=False, lanes=2)
    by_title = {s.title: s for s in steps}
    assert titles(steps) == [
        "evolve evolve",
        "answer reference",  # needs no fine-tune: beside the evolution
        "train C0",
        "train C1",
        "train C2",
        "answer C0",
        "answer C1",
        "answer C2",
        "judge C0 vs reference, C1 vs C0, C1 vs reference",  # one judge engine per lane, in model order
        "judge C2 vs C0, C2 vs reference",
        "analyze analysis",
    ]

    def needs(title):
        return sorted(a.title for a in by_title[title].after)

    assert needs("answer reference") == needs("evolve evolve") == []
    assert needs("train C1") == needs("analyze analysis") == ["evolve evolve"]
    # ... or, for a fine-tune, round k's pool, written last once C<k> is complete
    assert [by_title[f"train C{k}"].early for k in range(3)] == [
        RUN / "evolve" / "work" / f"pool_{k}.jsonl" for k in range(3)
    ]
    assert by_title["analyze analysis"].early is None and by_title["answer C1"].early is None
    assert needs("answer C2") == ["train C2"]
    assert needs("judge C0 vs reference, C1 vs C0, C1 vs reference") == ["answer C0", "answer C1", "answer reference"]
    assert needs("judge C2 vs C0, C2 vs reference") == ["answer C0", "answer C2", "answer reference"]
    train = by_title["train C1"].args
    assert [train[i + 1] for i, a in enumerate(train) if a in ("--data", "--out")] == [
        str(RUN / "data" / "C1.jsonl"),
        str(RUN / "sft" / "C1"),
    ]
    assert "--merge" in train
    # every comparison and every answer label exactly once over the lanes
    judged = [a for s in steps if s.stage == "judge" for a in s.args if a.startswith(str(RUN / "answers"))]
    assert len(judged) == 10
    labels = [s.args[i + 1] for s in steps if s.stage == "answer" for i, a in enumerate(s.args) if a == "--label"]
    assert sorted(labels) == ["C0", "C1", "C2", "reference"]


def test_the_evolution_commits_a_round_where_the_plan_looks_for_it():
    from evolve_local.generation import Run

    run = Run(None, None, None, RUN / "evolve", RUN / "data", None, None)
    steps = plan(tiny(), RUN, CFG, gpu=False, lanes=2)
    assert run.pool(2) == next(s for s in steps if s.title == "train C2").early


def test_more_round_counts_than_lanes_still_get_a_chain_each():
    steps = plan(tiny("run.rounds=[0,1,2,3,4]", "evolve.rounds=4"), RUN, CFG, gpu=False, lanes=2)
    assert [s.label for s in steps if s.stage == "train"] == ["C0", "C1", "C2", "C3", "C4"]
    assert [s.label for s in steps if s.stage == "answer"] == ["reference", "C0", "C1", "C2", "C3", "C4"]
    assert [s.label for s in steps if s.stage == "judge"] == [
        "C0 vs reference, C1 vs C0, C1 vs reference, C2 vs C0, C2 vs reference",
        "C3 vs C0, C3 vs reference, C4 vs C0, C4 vs reference",
    ]


def test_lanes_are_automatic_on_a_cpu_with_two_cores_and_a_throughput_knob(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert lanes_for(tiny(), gpu=False) == 2
    assert lanes_for(tiny(), gpu=True) == 1
    assert lanes_for(tiny("engine.backend=ray"), gpu=False) == 1
    assert lanes_for(tiny("run.lanes=3"), gpu=True) == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert lanes_for(tiny(), gpu=False) == 1
    assert semantic_dict(tiny("run.lanes=1")) == semantic_dict(tiny("run.lanes=2"))
    assert lane_cores(2) == [[0]]  # never more lanes than cores


def recorder(log: Path, name: str, seconds: float = 0.3, code: int = 0, wait_for: Path | None = None, touch=None):
    """A step whose process records when it ran, on which cores, and (with `wait_for`) whether the
    file appeared while it waited, up to 60 s: an order shown by events, not by timing."""
    lines = ["import json, os, pathlib, sys, time", "t, saw = time.time(), None"]
    if touch:
        lines.append(f"pathlib.Path({str(touch)!r}).touch()")
    if wait_for:
        lines += [
            f"w = pathlib.Path({str(wait_for)!r})",
            "while not w.exists() and time.time() - t < 60:",
            "    time.sleep(0.05)",
            "saw = w.exists()",
        ]
    lines += [
        f"time.sleep({seconds!r})",
        "cores = sorted(os.sched_getaffinity(0))",
        f"record = dict(name={name!r}, start=t, end=time.time(), cores=cores, omp=os.environ.get('OMP_NUM_THREADS'), saw=saw)",
        f"open({str(log)!r}, 'a').write(json.dumps(record) + '\\n')",
        f"sys.exit({code})",
    ]
    return Step("test", name, [], launcher=[sys.executable, "-c", "\n".join(lines)])


def records(log: Path) -> dict:
    return {r["name"]: r for r in map(json.loads, log.read_text().splitlines())}


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to give two lanes")
def test_the_scheduler_runs_ready_steps_side_by_side_on_their_own_cores(tmp_path):
    log, marker = tmp_path / "log.jsonl", tmp_path / "d-started"
    a = recorder(log, "a", 0.0, wait_for=marker)  # ends only once d has started (or after 60 s)
    b, c = recorder(log, "b", 0.1), recorder(log, "c", 0.1)
    c.after = [b]
    d = recorder(log, "d", 0.1, touch=marker)
    d.after = [c]  # b, c and d run one after the other in the lane a leaves free
    x = recorder(log, "x")
    x.after, x.exclusive = [a], True  # waits for an empty machine
    e = recorder(log, "e")
    e.after = [x]
    run_steps([a, b, c, x, d, e], lanes=2)
    r = records(log)
    assert r["a"]["saw"] is True  # d started while a was still running
    assert r["c"]["start"] >= r["b"]["end"] and r["d"]["start"] >= r["c"]["end"]
    assert all(r[n]["end"] <= r["x"]["start"] or r[n]["start"] >= r["x"]["end"] for n in "abcde")  # x alone
    assert r["e"]["start"] >= r["x"]["end"]
    assert r["a"]["cores"] != r["b"]["cores"] and len(r["a"]["cores"]) == len(r["b"]["cores"])
    assert r["a"]["omp"] == str(len(r["a"]["cores"]))
    assert r["x"]["cores"] == sorted(os.sched_getaffinity(0)) and r["x"]["omp"] == os.environ.get("OMP_NUM_THREADS")


def test_one_lane_runs_the_plan_in_order(tmp_path):
    log = tmp_path / "log.jsonl"
    steps = [recorder(log, n, 0.1) for n in "abc"]
    run_steps(steps, lanes=1)
    r = records(log)
    assert r["a"]["end"] <= r["b"]["start"] and r["b"]["end"] <= r["c"]["start"]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to give two lanes")
def test_a_failed_step_stops_its_neighbours_and_nothing_after_it_starts(tmp_path):
    log = tmp_path / "log.jsonl"
    slow, bad = recorder(log, "slow", 30), recorder(log, "bad", 0.2, code=3)
    later = recorder(log, "later", 0.1)
    started = time.time()
    with pytest.raises(InputError, match=r"Stage test bad failed \(exit status 3\).*rerun the same command"):
        run_steps([slow, bad, later], lanes=2)
    assert time.time() - started < 20  # the slow neighbour was stopped, not waited for
    assert set(records(log)) == {"bad"}


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to give two lanes")
def test_a_step_starts_on_its_early_file_while_the_step_it_waits_for_still_runs(tmp_path):
    log, committed, stale = tmp_path / "log.jsonl", tmp_path / "pool_0.jsonl", tmp_path / "pool_1.jsonl"
    stale.write_text("from an earlier run\n")
    os.utime(stale, (time.time() - 60, time.time() - 60))
    writer = recorder(log, "writer", 0.0, wait_for=tmp_path / "early-started", touch=committed)
    early = recorder(log, "early", 0.0, touch=tmp_path / "early-started")
    early.after, early.early = [writer], committed
    late = recorder(log, "late", 0.0)
    late.after, late.early = [writer], stale  # an older copy does not count: waits for the writer
    run_steps([writer, early, late], lanes=2)
    r = records(log)
    assert r["writer"]["saw"] is True  # `early` started while the writer still ran
    assert r["late"]["start"] >= r["writer"]["end"]
