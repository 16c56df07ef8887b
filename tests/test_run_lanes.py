"""`evol run` lanes: the two-lane plan of the tiny run on CPU, and the scheduler that runs it
(real processes: short Python commands that log their start and end, in the order they happen, and
the cores and thread counts they ran with)."""

import json
import os
import sys
import time
from pathlib import Path

import pytest

from pipeline.config import load_config, semantic_dict
from pipeline.core.jsonio import InputError
from pipeline.plan import Step, lanes_for, plan
from pipeline.run import lane_cores, run_steps

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
        return sorted(by_title[title].after)

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

    run = Run(None, None, None, RUN / "evolve", RUN / "data", None, None, None)
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


def test_a_run_without_comparisons_has_no_judge_step():
    steps = plan(tiny("run.rounds=[0]", "run.reference=false"), RUN, CFG, gpu=False, lanes=2)
    assert titles(steps) == ["evolve evolve", "train C0", "answer C0", "analyze analysis"]


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


def recorder(log: Path, name: str, code: int = 0, wait_for: Path | None = None, touch: Path | None = None) -> Step:
    """A step whose process appends a start event and, as it exits, an end event with its cores and
    thread counts to `log`: the lines are in the order the events happened. With `touch` it creates
    that file after its start event; with `wait_for` it ends only once that file exists (at most
    120 s: a guard against a hang, which the scheduler under test never needs)."""
    lines = [
        "import json, os, pathlib, sys, time",
        "def event(kind, **more):",
        f"    open({str(log)!r}, 'a').write(json.dumps(dict(name={name!r}, event=kind, **more)) + '\\n')",
        "event('start')",
    ]
    if touch:
        lines.append(f"pathlib.Path({str(touch)!r}).touch()")
    if wait_for:
        lines += [
            f"w, t = pathlib.Path({str(wait_for)!r}), time.time()",
            "while not w.exists() and time.time() - t < 120:",
            "    time.sleep(0.05)",
        ]
    lines += [
        "threads = {v: os.environ.get(v) for v in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'OPENBLAS_NUM_THREADS')}",
        "event('end', cores=sorted(os.sched_getaffinity(0)), threads=threads)",
        f"sys.exit({code})",
    ]
    return Step("test", name, [], launcher=[sys.executable, "-c", "\n".join(lines)])


def events(log: Path) -> list[str]:
    """The log as "name start" / "name end", in the order they happened."""
    return [f"{e['name']} {e['event']}" for e in map(json.loads, log.read_text().splitlines())] if log.exists() else []


def ends(log: Path) -> dict:
    """Each step's end event (its cores and thread counts), by name."""
    return {e["name"]: e for e in map(json.loads, log.read_text().splitlines()) if e["event"] == "end"}


def before(order: list[str], first: str, then: str) -> bool:
    return order.index(first) < order.index(then)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to give two lanes")
def test_the_scheduler_runs_ready_steps_side_by_side_on_their_own_cores(tmp_path):
    log, marker = tmp_path / "log.jsonl", tmp_path / "d-started"
    a = recorder(log, "a", wait_for=marker)  # ends only once d has started
    b, c = recorder(log, "b"), recorder(log, "c")
    c.after = [b.title]
    d = recorder(log, "d", touch=marker)
    d.after = [c.title]  # b, c and d run one after the other in the lane a leaves free
    x = recorder(log, "x")
    x.after, x.exclusive = [a.title], True  # waits for an empty machine
    e = recorder(log, "e")
    e.after = [x.title]
    run_steps([a, b, c, x, d, e], lanes=2)
    order, r = events(log), ends(log)
    assert before(order, "d start", "a end")  # d ran while a still ran
    assert before(order, "b end", "c start") and before(order, "c end", "d start")
    assert all(
        before(order, f"{n} end", "x start") or before(order, "x end", f"{n} start") for n in "abcde"
    )  # x alone
    assert before(order, "x end", "e start")
    assert r["a"]["cores"] != r["b"]["cores"] and len(r["a"]["cores"]) == len(r["b"]["cores"])
    # every OpenMP and BLAS pool of a fresh step is sized to its lane's cores
    assert set(r["a"]["threads"].values()) == {str(len(r["a"]["cores"]))}
    assert r["x"]["cores"] == sorted(os.sched_getaffinity(0))
    assert r["x"]["threads"]["OMP_NUM_THREADS"] == os.environ.get("OMP_NUM_THREADS")  # not bound: as evol run's


def test_one_lane_runs_the_plan_in_order(tmp_path):
    log = tmp_path / "log.jsonl"
    a, b, c = (recorder(log, n) for n in "abc")
    c.after = [a.title]  # ready as soon as a is done, like b: the list order decides
    run_steps([a, b, c], lanes=1)
    assert events(log) == ["a start", "a end", "b start", "b end", "c start", "c end"]


def test_a_step_may_wait_only_for_a_step_before_it(tmp_path):
    a, b = recorder(tmp_path / "log.jsonl", "a"), recorder(tmp_path / "log.jsonl", "b")
    a.after = [b.title]
    with pytest.raises(ValueError, match="'test a' waits for \\['test b'\\], which do not come before it"):
        run_steps([a, b], lanes=2)
    with pytest.raises(ValueError, match="Two steps are titled 'test a'"):
        run_steps([recorder(tmp_path / "log.jsonl", "a"), recorder(tmp_path / "log.jsonl", "a")])
    assert events(tmp_path / "log.jsonl") == []  # refused before anything ran


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to give two lanes")
def test_a_failed_step_stops_its_neighbours_and_nothing_after_it_starts(tmp_path):
    log = tmp_path / "log.jsonl"
    slow = recorder(log, "slow", wait_for=tmp_path / "never")  # ends on its own only after 120 s
    bad, later = recorder(log, "bad", code=3), recorder(log, "later")
    with pytest.raises(InputError, match=r"Stage test bad failed \(exit status 3\).*rerun the same command"):
        run_steps([slow, bad, later], lanes=2)
    order = events(log)
    assert "bad end" in order and "slow end" not in order  # the slow neighbour was stopped, not waited for
    assert "later start" not in order


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to give two lanes")
def test_a_step_starts_on_its_early_file_while_the_step_it_waits_for_still_runs(tmp_path):
    log, committed, stale = tmp_path / "log.jsonl", tmp_path / "pool_0.jsonl", tmp_path / "pool_1.jsonl"
    stale.write_text("from an earlier run\n")
    os.utime(stale, (time.time() - 60, time.time() - 60))
    writer = recorder(log, "writer", wait_for=tmp_path / "early-started", touch=committed)
    early = recorder(log, "early", touch=tmp_path / "early-started")
    early.after, early.early = [writer.title], committed
    late = recorder(log, "late")
    late.after, late.early = [writer.title], stale  # an older copy does not count: waits for the writer
    run_steps([writer, early, late], lanes=2)
    order = events(log)
    assert before(order, "early start", "writer end")  # `early` started while the writer still ran
    assert before(order, "writer end", "late start")
