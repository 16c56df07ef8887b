"""Soak test of `evol run`: kill the whole process group at seeded random moments, rerun until it
finishes, and check that every finished run equals one that was never interrupted.

    nice -n 10 python -m benchmarks.soak --work /tmp/soak --runs 2 --kills-per-run 5 --seed 7 \
        --json /tmp/soak/soak.json --markdown
    python -m benchmarks.soak --work /tmp/soak --json benchmarks/soak_results.json --render-only \
        --markdown                        # compare again and rewrite the soak's rows (the last soak's results)

--markdown copies the results to benchmarks/soak_results.json, the file BENCHMARKS.md's soak rows
come from, and rewrites the page (benchmarks/report.py write_markdown, its one writer).

A script, not a CI test: it takes the better part of an hour on 2 CPU cores. Steps:
  1. one uninterrupted `evol run` of the small soak config (SOAK_SETTINGS below), timing each stage
     from the `=== [n/N] stage label ===` lines of its log;
  2. --runs runs from scratch; each plans --kills-per-run kills, each aimed at a stage (rotating over
     evolve, train, answer, judge, analyze so every stage is hit) at a seeded random moment within
     that stage's step as long as it took in step 1; SIGKILL goes to the whole process group
     (the vLLM engine core and the stage process with it); the same command runs again until it
     exits 0;
  3. each finished run is compared with step 1 file by file: JSON/JSONL records with the volatile
     fields (times, speeds, paths, dates) left out, every other file byte for byte, and every JSONL
     file is checked for duplicated ids.
The stage in progress at a kill is the last stage line of the log at that moment.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from benchmarks.report import SOAK_RESULTS, measured_stamp, write_markdown
from benchmarks.soak_compare import compare, is_result
from pipeline.core.paths import ROOT

STAGES = ("evolve", "train", "answer", "judge", "analyze")

# The tiny config made much smaller so one run takes minutes on 2 shared cores: one round (C0, C1)
# from 2 seeds, 2 test items, C1 judged against C0 only (no reference answers), short generations,
# difficulty ratings off (the analysis stage still embeds and clusters); a batch of 1 and a
# checkpoint per step so a kill in training resumes from a checkpoint.
SOAK_SETTINGS = [
    "run.rounds=[0,1]",
    "run.reference=false",
    "evolve.max_seeds=2",
    "evolve.evolution_max_tokens=40",
    "evolve.answer_max_tokens=40",
    "eval.limit=2",
    "eval.answer_max_tokens=40",
    "eval.judge_max_tokens=16",
    "engine.max_tokens=40",
    "train.effective_batch_size=1",
    "train.per_device_train_batch_size=1",
    "train.save_steps=1",
    "analysis.difficulty=false",
    "analysis.clusters=2",
    "analysis.projection=pca",
]

STAGE_LINE = "=== ["


def command(config: str, runs_dir: Path, name: str) -> list[str]:
    sets = [*SOAK_SETTINGS, f"run.runs_dir={runs_dir}", f"run.name={name}"]
    return [sys.executable, "-m", "pipeline", "run", "--config", config, *(a for s in sets for a in ("--set", s))]


def stage_lines(log: Path) -> list[tuple[str, str]]:
    """(stage, label) of every `=== [n/N] stage label ===` line written so far."""
    out = []
    if log.exists():
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith(STAGE_LINE):
                parts = line.strip("= ").split(" ", 2)
                out.append((parts[1], parts[2] if len(parts) > 2 else ""))
    return out


def attempt(cmd: list[str], log: Path, kill_at: tuple[int, float] | None) -> dict:
    """Run `cmd` once; with kill_at (step index, delay), SIGKILL its process group that long after
    that step's line appears. Returns exit code, wall time, step start times and the kill's stage."""
    started = time.time()
    seen: dict[int, float] = {}
    with log.open("w") as handle:
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    killed_in = None
    while proc.poll() is None:
        lines = stage_lines(log)
        for i in range(len(lines)):
            seen.setdefault(i, time.time() - started)
        if kill_at is not None and kill_at[0] in seen and time.time() - started >= seen[kill_at[0]] + kill_at[1]:
            lines = stage_lines(log)
            killed_in = lines[-1] if lines else ("before the first stage", "")
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            break
        time.sleep(0.2)
    wall = time.time() - started
    text = log.read_text(errors="replace")
    return {
        "code": proc.returncode,
        "wall_s": round(wall, 1),
        "step_starts": [round(seen[i], 1) for i in sorted(seen)],
        "steps": stage_lines(log),
        "killed_in": killed_in,
        "resumed_lines": text.count("resuming from the work already in"),
        "skipped_lines": text.count("up to date (key"),
    }


def run_until_done(cmd: list[str], logs: Path, kills: list[tuple[int, float]], limit: int = 12) -> list[dict]:
    attempts = []
    pending = list(kills)
    while len(attempts) < limit:
        kill_at = pending.pop(0) if pending else None
        result = attempt(cmd, logs / f"attempt{len(attempts)}.log", kill_at)
        result["planned_kill"] = kill_at
        attempts.append(result)
        print(json.dumps({k: result[k] for k in ("code", "wall_s", "killed_in", "planned_kill")}), flush=True)
        if result["killed_in"] is None and result["code"] == 0:
            return attempts
        if result["killed_in"] is None:
            raise SystemExit(f"attempt failed with exit status {result['code']}; see {logs}")
    raise SystemExit(f"no finish after {limit} attempts; see {logs}")


# ---------------------------------------------------------------- the soak


def plan_kills(
    base_attempt: dict,
    runs: int,
    per_run: int,
    rng: random.Random,
    stages: tuple[str, ...] = STAGES,
    delay_scale: float = 1.0,
) -> list[list[tuple[int, float]]]:
    """Kills per run: (step index, delay into that step), aimed at `stages` in rotation; the delay is
    uniform over the step's uninterrupted duration times `delay_scale` (below 1 when a busier
    machine made the uninterrupted run slow, so the kill still lands in the stage)."""
    steps = base_attempt["steps"]
    starts = base_attempt["step_starts"] + [base_attempt["wall_s"]]
    durations = [starts[i + 1] - starts[i] for i in range(len(steps))]
    rotation = [stages[i % len(stages)] for i in range(runs * per_run)]
    out = []
    for r in range(runs):
        targets = sorted(rotation[r * per_run : (r + 1) * per_run], key=STAGES.index)
        kills = []
        for stage in targets:
            index = rng.choice([i for i, (s, _) in enumerate(steps) if s == stage])
            kills.append((index, round(rng.uniform(0.0, durations[index] * delay_scale), 1)))
        out.append(kills)
    return out


def reuse_base(base_dir: Path, name: str) -> dict:
    """The uninterrupted run of an earlier soak: its saved result, else its step start times
    rebuilt from when each step's outputs were finished (the manifest written last)."""
    saved = base_dir / "result.json"
    if saved.is_file():
        return json.loads(saved.read_text())
    log, run = base_dir / "logs" / "attempt0.log", base_dir / "runs" / name
    steps = stage_lines(log)
    started = (base_dir / "logs").stat().st_mtime  # the log was created as the run started
    ends = {"evolve": [run / "evolve" / "manifest.json"], "answer": list((run / "answers").glob("*/manifest.json"))}
    ends["judge"] = list((run / "judge").glob("*/manifest.json"))
    train_ends = [run / "sft" / label / "manifest.json" for stage, label in steps if stage == "train"]
    finished, trained = [], iter(train_ends)
    for stage, _ in steps:
        files = [next(trained)] if stage == "train" else ends.get(stage, [run / "analysis" / "manifest.json"])
        finished.append(max(p.stat().st_mtime for p in files) - started)
    base = {
        "code": 0,
        "wall_s": round((run / "report.md").stat().st_mtime - started, 1),
        "step_starts": [0.0] + [round(t, 1) for t in finished[:-1]],
        "steps": steps,
        "killed_in": None,
        "resumed_lines": 0,
        "skipped_lines": 0,
        "rebuilt_from_file_times": True,
    }
    saved.write_text(json.dumps(base, indent=2))
    return base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--work", default="/tmp/soak")
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--kills-per-run", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", default=None, help="Write the results here (default: WORK/soak.json).")
    parser.add_argument("--stages", default=",".join(STAGES), help="Stages to aim kills at, in rotation.")
    parser.add_argument("--delay-scale", type=float, default=1.0, help="Kill delays up to this share of a step.")
    parser.add_argument("--first-run", type=int, default=0, help="Number of the first run (its folder runN).")
    parser.add_argument(
        "--markdown", action="store_true", help=f"Copy the results to {SOAK_RESULTS} and rewrite BENCHMARKS.md."
    )
    parser.add_argument("--render-only", action="store_true", help="Run nothing: render --markdown from --json.")
    parser.add_argument(
        "--reuse-base",
        action="store_true",
        help="Take the uninterrupted run already in WORK/base instead of a new one.",
    )
    args = parser.parse_args()
    work = Path(args.work).resolve()
    rng = random.Random(args.seed)
    name = "soak"
    results = {"settings": SOAK_SETTINGS, "config": args.config, "seed": args.seed, "runs": []}
    results["measured"] = measured_stamp()  # the commit and day BENCHMARKS.md's soak rows name
    results["commands"] = [" ".join(["python -m benchmarks.soak", *sys.argv[1:]])]
    out = Path(args.json or work / "soak.json")
    if args.render_only:  # compare again (the comparison may have changed since), then render
        results = json.loads(out.read_text())
        for number, run in enumerate(results["runs"]):
            run["comparison"] = compare(work / "base" / "runs" / name, work / f"run{number}" / "runs" / name)
        summarize(results)
        out.write_text(json.dumps(results, indent=2))
        write_results(results)
        return

    base_dir = work / "base"
    if args.reuse_base:
        base = reuse_base(base_dir, name)
    else:
        (base_dir / "logs").mkdir(parents=True, exist_ok=True)
        print("uninterrupted run", flush=True)
        base = run_until_done(command(args.config, base_dir / "runs", name), base_dir / "logs", [], limit=1)[0]
        (base_dir / "result.json").write_text(json.dumps(base, indent=2))
    results["uninterrupted"] = base
    stages = tuple(args.stages.split(","))
    plans = plan_kills(base, args.runs, args.kills_per_run, rng, stages, args.delay_scale)
    for r, kills in enumerate(plans, start=args.first_run):
        run_dir = work / f"run{r}"
        (run_dir / "logs").mkdir(parents=True, exist_ok=True)
        print(f"run {r}: kills {kills}", flush=True)
        attempts = run_until_done(command(args.config, run_dir / "runs", name), run_dir / "logs", kills)
        diff = compare(base_dir / "runs" / name, run_dir / "runs" / name)
        results["runs"].append({"kills": kills, "attempts": attempts, "comparison": diff})
        print(
            f"run {r}: {len(diff['identical'])} identical, differs {diff['differs']}, missing {diff['missing']}, "
            f"extra {diff['extra']}, duplicated ids {diff['duplicated_ids']}",
            flush=True,
        )
        out.write_text(json.dumps(results, indent=2))
    summarize(results)
    out.write_text(json.dumps(results, indent=2))
    if args.markdown:
        write_results(results)


def summarize(results: dict) -> None:
    kills = Counter(a["killed_in"][0] for run in results["runs"] for a in run["attempts"] if a["killed_in"])
    base_wall = results["uninterrupted"]["wall_s"]
    extra = [sum(a["wall_s"] for a in run["attempts"]) - base_wall for run in results["runs"]]
    results["summary"] = {
        "kills_per_stage": dict(kills),
        "kills": sum(kills.values()),
        "runs": len(results["runs"]),
        "runs_resumed": sum(any(a["resumed_lines"] for a in run["attempts"]) for run in results["runs"]),
        "runs_identical": sum(
            not (run["comparison"]["differs"] or run["comparison"]["missing"] or run["comparison"]["duplicated_ids"])
            for run in results["runs"]
        ),
        "runs_results_identical": sum(
            not (
                [f for f in run["comparison"]["differs"] if is_result(f)]
                or run["comparison"]["missing"]
                or run["comparison"]["duplicated_ids"]
            )
            for run in results["runs"]
        ),
        "missing_files": sum(len(run["comparison"]["missing"]) for run in results["runs"]),
        "duplicated_ids": sum(sum(run["comparison"]["duplicated_ids"].values()) for run in results["runs"]),
        "uninterrupted_wall_s": base_wall,
        "extra_wall_s": [round(e, 1) for e in extra],
    }
    print(json.dumps(results["summary"], indent=2), flush=True)


# ---------------------------------------------------------------- BENCHMARKS.md


def write_results(results: dict, path: Path | None = None, markdown: Path | None = None) -> None:
    """The soak's results where BENCHMARKS.md's soak rows come from, then the page rewritten with them
    (its `evol bench` rows from benchmarks/results.json when there is one)."""
    path = path or SOAK_RESULTS
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    bench_results = ROOT / "benchmarks" / "results.json"
    previous = json.loads(bench_results.read_text()) if bench_results.is_file() else None
    write_markdown(markdown or ROOT / "BENCHMARKS.md", previous, soak=path)


if __name__ == "__main__":
    main()
