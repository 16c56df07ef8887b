"""`evol bench`: measured speed, cost and scale, side by side in one run -> BENCHMARKS.md + JSON.

    evol bench --config configs/bench-tiny.yaml --work runs/bench \
        --results benchmarks/results.json --markdown BENCHMARKS.md

Every measurement runs in its own process (an `evol` stage command, or benchmarks/worker.py),
watched by a sampler that sums the resident memory of the whole process tree (vLLM's engine core
is a child process), so each figure carries its own wall time and peak memory:
  1. throughput  an evolve round vs the same requests in one raw vllm.LLM.generate call, per pool
                 size, steps chained and by step (repeated)
  2. naive       one Hugging Face generate per prompt on those requests (all, or an evenly spread subset)
  3. resume      a second run of a finished evolve; a run killed halfway, then resumed
  4. ablation    generations of the 0..M ablation of `evol run`'s plan vs one M-round evolution
  5. training    LoRA vs full, packing on vs off, a few optimizer steps on the evolved data
  6. judge       judgments per second, both orders counted
  7. scaling     1x, 2x, 4x seeds, one round
The load average is recorded at the start of each measurement: the machine may be shared.
The same command runs unchanged on a GPU machine with a GPU config.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import click

from benchmarks.report import config_sizes, machine_info, measured_stamp, measurement_summaries, write_markdown
from pipeline.cli.common import config_options, friendly_errors
from pipeline.config import load_config
from pipeline.core.jsonio import InputError, read_json, read_jsonl_tolerant, write_json

MEASUREMENTS = ("throughput", "naive", "resume", "ablation", "training", "judge", "scaling")


# ---------------------------------------------------------------- one watched process


def tree_rss(root) -> int:
    import psutil

    total = 0
    try:
        for proc in [root, *root.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                continue
    except psutil.Error:
        pass
    return total


def watched(command: list[str], log: Path, kill_when=None, poll: float = 0.25) -> dict:
    """Run `command` to the end (or until `kill_when()` is true: then SIGKILL its process group,
    the way a crash or an OOM kill would stop it); wall seconds, peak tree RSS, exit status."""
    import psutil

    log.parent.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    started = time.perf_counter()
    with log.open("w", encoding="utf-8") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
        root = psutil.Process(process.pid)
        peak, killed = 0, False
        while process.poll() is None:
            peak = max(peak, tree_rss(root))
            if kill_when is not None and not killed and kill_when():
                os.killpg(process.pid, signal.SIGKILL)
                killed = True
            time.sleep(poll)
        code = process.wait()
    seconds = time.perf_counter() - started
    if code != 0 and not killed:
        tail = log.read_text(encoding="utf-8", errors="replace")[-1500:]
        raise InputError(f"Bench step failed (exit {code}): {' '.join(command)}; log {log}:\n{tail}")
    return {
        "command": " ".join(command),
        "seconds": round(seconds, 2),
        "peak_rss_mb": round(peak / 2**20, 1),
        "load_average_at_start": [round(x, 2) for x in load],
        "killed": killed,
        "log": str(log),
    }


def evol(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", *map(str, args)]


def sets(config_file: Path, overrides) -> list[str]:
    out = ["--config", str(config_file)]
    for item in overrides:
        out += ["--set", item]
    return out


# ---------------------------------------------------------------- the measurements


def bench_throughput(ctx: dict) -> dict:
    work = ctx["work"] / "throughput"
    result = work / "result.json"
    proc = watched(
        [
            sys.executable,
            "-m",
            "benchmarks.worker",
            "throughput",
            *ctx["args"],
            "--work",
            str(work),
            "--repeats",
            str(ctx["repeats"]),
            "--seeds",
            ",".join(map(str, ctx["throughput_seeds"])),
            "--result",
            str(result),
        ],
        work / "log.txt",
    )
    return {"process": proc, **read_json(result)}


def bench_naive(ctx: dict) -> dict:
    throughput = ctx["work"] / "throughput" / "result.json"
    requests = ctx["work"] / "throughput" / "requests.jsonl"
    if not (requests.is_file() and throughput.is_file()):
        raise InputError(
            f"{requests} is missing: the naive baseline replays the throughput requests; "
            f"run with --only throughput,naive."
        )
    source = read_json(throughput).get("requests_file", {})
    work = ctx["work"] / "naive"
    result = work / "result.json"
    proc = watched(
        [
            sys.executable,
            "-m",
            "benchmarks.worker",
            "naive",
            *ctx["args"],
            "--requests",
            str(requests),
            "--limit",
            str(ctx["naive_prompts"]),
            "--dtype",
            ctx["naive_dtype"],
            "--result",
            str(result),
        ],
        work / "log.txt",
    )
    return {"process": proc, **read_json(result), "stage_seeds": source.get("seeds"), "stage_mode": source.get("mode")}


def timing_rows(run_dir: Path) -> list[dict]:
    return [
        row
        for path in sorted((run_dir / "evolve" / "work").glob("round_*.timing.jsonl"))
        for row in read_jsonl_tolerant(path)
    ]


def generation_summary(run_dir: Path) -> dict:
    rows = timing_rows(run_dir)
    return {
        "chunks": len(rows),
        "requests": sum(r["requests"] for r in rows),
        "seconds": round(sum(r["seconds"] for r in rows), 2),
        "completion_tokens": sum(r["completion_tokens"] for r in rows),
    }


def bench_resume(ctx: dict) -> dict:
    work, rounds = ctx["work"] / "resume", ctx["rounds"]
    chunk = ["--set", f"engine.chunk_size={ctx['resume_chunk']}"]
    full, broken = work / "full", work / "killed"
    for d in (full, broken):
        shutil.rmtree(d, ignore_errors=True)
    first = watched(evol("evolve", *ctx["args"], *chunk, "--rounds", rounds, "--out", full), work / "first.log")
    second = watched(evol("evolve", *ctx["args"], *chunk, "--rounds", rounds, "--out", full), work / "second.log")
    total_requests = generation_summary(full)["requests"]

    def halfway() -> bool:  # persisted requests, counted from the chunk timing log
        return generation_summary(broken)["requests"] >= total_requests // 2

    killed = watched(
        evol("evolve", *ctx["args"], *chunk, "--rounds", rounds, "--out", broken),
        work / "killed.log",
        kill_when=halfway,
    )
    after_kill = generation_summary(broken)
    resumed = watched(evol("evolve", *ctx["args"], *chunk, "--rounds", rounds, "--out", broken), work / "resumed.log")
    return {
        "rounds": rounds,
        "chunk_size": ctx["resume_chunk"],
        "first": first,
        "second": second,
        "killed": killed,
        "resumed": resumed,
        "uninterrupted_generation": generation_summary(full),
        "generation_before_kill": after_kill,
        "interrupted_generation": generation_summary(broken),
        "same_training_sets": _same_files(full / "data", broken / "data"),
    }


def _same_files(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.glob("*.jsonl"))
    return names == sorted(p.name for p in b.glob("*.jsonl")) and all(
        (a / n).read_bytes() == (b / n).read_bytes() for n in names
    )


def bench_ablation(ctx: dict) -> dict:
    """Count generations in the finished M-round evolution of the resume measurement, per round and
    step, from evolve/work/round_<k>.timing.jsonl (one row per persisted chunk), and compare the
    evolve commands in `evol run`'s plan for rounds 0..M."""
    from pipeline.plan import plan

    full = ctx["work"] / "resume" / "full"
    if not (full / "evolve" / "manifest.json").is_file():
        raise InputError(
            f"{full} holds no finished evolution: the ablation count reads the resume measurement's "
            f"run; run with --only resume,ablation."
        )
    rounds = ctx["rounds"]
    per_round = {}
    for path in sorted((full / "evolve" / "work").glob("round_*.timing.jsonl")):
        k = int(path.name.split(".")[0].split("_")[1])
        steps: dict[str, int] = {}
        for row in read_jsonl_tolerant(path):
            steps[row["step"]] = steps.get(row["step"], 0) + row["requests"]
        per_round[k] = steps
    single = sum(sum(s.values()) for s in per_round.values())
    config = load_config(ctx["config_file"], [*ctx["overrides"], f"run.rounds={list(range(rounds + 1))}"])
    steps = plan(config, Path("runs/ablation"), ctx["config_file"])
    evolves = [s for s in steps if s.stage == "evolve"]
    # Each plan evolve step is one `evol evolve --rounds R` into the run directory: R rounds cost
    # the requests of rounds 0..R of the single evolution (the prefix is identical by seeding).
    planned = sum(
        sum(sum(per_round.get(k, {}).values()) for k in range(int(s.args[s.args.index("--rounds") + 1]) + 1))
        for s in evolves
    )
    separate = sum(sum(sum(per_round.get(k, {}).values()) for k in range(r + 1)) for r in range(rounds + 1))
    return {
        "rounds": rounds,
        "requests_per_round": per_round,
        "single_evolution_requests": single,
        "plan_evolve_steps": [" ".join(s.args) for s in evolves],
        "ablation_requests": planned,
        "separate_evolutions_requests": separate,
    }


def bench_training(ctx: dict) -> dict:
    data = ctx["work"] / "resume" / "full" / "data" / f"C{ctx['rounds']}.jsonl"
    if not data.is_file():
        raise InputError(
            f"{data} is missing: training reads the resume measurement's evolved data; "
            f"run with --only resume,training."
        )
    runs = []
    # Repetitions outermost, so a burst of load from other work on a shared machine spreads over
    # the variants instead of landing on one of them.
    variants = [(method, packing) for method in ("lora", "full") for packing in (False, True)]
    for rep in range(ctx["train_repeats"]):
        for method, packing in variants:
            suffix = "" if rep == 0 else f"_r{rep}"  # rep 0 keeps the name the judge measurement reads
            out = ctx["work"] / "training" / f"{method}_{'packed' if packing else 'padded'}{suffix}"
            shutil.rmtree(out, ignore_errors=True)
            proc = watched(
                evol(
                    "train",
                    *ctx["args"],
                    "--data",
                    data,
                    "--out",
                    out,
                    "--method",
                    method,
                    "--set",
                    f"train.packing={str(packing).lower()}",
                    "--set",
                    f"train.max_steps={ctx['train_steps']}",
                ),
                out.with_suffix(".log"),
            )
            manifest = read_json(out / "manifest.json")
            runs.append(
                {
                    "method": method,
                    "packing": packing,
                    "rep": rep,
                    "process": proc,
                    "performance": manifest.get("performance"),
                    "data": manifest.get("data"),
                }
            )
    return {"data": str(data), "max_steps": ctx["train_steps"], "repeats": ctx["train_repeats"], "runs": runs}


def bench_judge(ctx: dict) -> dict:
    work = ctx["work"] / "judge"
    shutil.rmtree(work, ignore_errors=True)
    adapter = ctx["work"] / "training" / "lora_padded" / "adapter"
    if not adapter.is_dir():
        raise InputError(
            f"{adapter} is missing: the judge compares the bench's LoRA model with its base; "
            f"run with --only resume,training,judge."
        )
    limit = ["--set", f"eval.limit={ctx['judge_items']}"]
    # One engine answers as the base model and as the adapter, the way `evol run` does.
    answer = watched(
        evol(
            "answer", *ctx["args"], *limit, f"--adapter=tuned={adapter}", "--label", "base", "--out", work / "answers"
        ),
        work / "answer.log",
    )
    judge = watched(
        evol(
            "judge",
            *ctx["args"],
            *limit,
            "--answers",
            work / "answers" / "tuned",
            "--baseline",
            work / "answers" / "base",
            "--out",
            work / "judge",
        ),
        work / "judge.log",
    )
    (judge_dir,) = list((work / "judge").glob("*__vs__*"))
    manifest = read_json(judge_dir / "manifest.json")
    throughput = manifest.get("throughput", {})  # finish_stage puts eval's `extra` at the top level
    return {
        "items": ctx["judge_items"],
        "pair": judge_dir.name,
        "answer_process": answer,
        "judge_process": judge,
        "throughput": throughput,
        "rows": manifest.get("rows"),
    }


def bench_scaling(ctx: dict) -> dict:
    runs = []
    for seeds in ctx["scales"]:
        out = ctx["work"] / "scaling" / f"seeds_{seeds}"
        shutil.rmtree(out, ignore_errors=True)
        proc = watched(
            evol("evolve", *ctx["args"], "--rounds", 1, "--set", f"evolve.max_seeds={seeds}", "--out", out),
            out.with_suffix(".log"),
        )
        runs.append({"seeds": seeds, "process": proc, "generation": generation_summary(out)})
    return {"rounds": 1, "runs": runs}


RUNNERS = {
    "throughput": bench_throughput,
    "naive": bench_naive,
    "resume": bench_resume,
    "ablation": bench_ablation,
    "training": bench_training,
    "judge": bench_judge,
    "scaling": bench_scaling,
}


# ---------------------------------------------------------------- the command


def parse_only(only: str) -> list[str]:
    names = [n.strip() for n in only.split(",") if n.strip()] if only else list(MEASUREMENTS)
    unknown = [n for n in names if n not in MEASUREMENTS]
    if unknown:
        raise InputError(f"--only names unknown measurement(s) {unknown}; choose from {', '.join(MEASUREMENTS)}.")
    return [n for n in MEASUREMENTS if n in names]


def parse_scales(text: str, option: str = "--scales") -> list[int]:
    try:
        scales = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"{option} must be comma-separated seed counts like 4,8,16, got {text!r}.") from None
    if not scales or any(s < 1 for s in scales):
        raise InputError(f"{option} needs at least one positive seed count, got {text!r}.")
    return scales


@click.command("bench")
@click.option(
    "--work",
    "work_dir",
    default="runs/bench",
    type=click.Path(file_okay=False),
    help="Scratch run directories of the measurements (deleted and rewritten).",
)
@click.option("--results", "results_path", default="benchmarks/results.json", type=click.Path(dir_okay=False))
@click.option("--markdown", "markdown_path", default="BENCHMARKS.md", type=click.Path(dir_okay=False))
@click.option("--only", default="", help=f"Comma-separated subset of: {', '.join(MEASUREMENTS)}.")
@click.option("--repeats", type=int, default=3, help="Repetitions of stage-vs-raw throughput.")
@click.option("--rounds", type=int, default=2, help="Evolution rounds M for the resume, ablation and training runs.")
@click.option(
    "--resume-chunk", type=int, default=4, help="engine.chunk_size of the resume runs (chunks to kill between)."
)
@click.option("--throughput-seeds", default="8,32", help="Pool sizes of the stage-vs-raw throughput runs.")
@click.option("--naive-prompts", type=int, default=0, help="Requests replayed one HF generate at a time (0: all).")
@click.option(
    "--naive-dtype", default="float32", help="torch dtype of the naive baseline (float32 is fastest on most CPUs)."
)
@click.option("--train-steps", type=int, default=4, help="Optimizer steps per training variant.")
@click.option("--train-repeats", type=int, default=1, help="Repetitions of the four training variants.")
@click.option("--judge-items", type=int, default=8, help="Test items judged (two orders each).")
@click.option("--scales", default="4,8,16", help="Seed counts of the scaling runs (1x, 2x, 4x).")
@click.option("--render-only", is_flag=True, help="Measure nothing: rewrite the markdown from the results file.")
@config_options
@friendly_errors
def bench_command(
    work_dir,
    results_path,
    markdown_path,
    only,
    repeats,
    rounds,
    resume_chunk,
    throughput_seeds,
    naive_prompts,
    naive_dtype,
    train_steps,
    train_repeats,
    judge_items,
    scales,
    render_only,
    config_path,
    overrides,
) -> None:
    """Measure evolve-stage vs raw-engine throughput, the naive baseline, resume, ablation, training,
    judge and scaling costs; write the JSON results and BENCHMARKS.md."""
    if render_only:
        if not Path(results_path).is_file():
            raise InputError(f"--render-only needs {results_path} from an earlier `evol bench` run.")
        results = read_json(results_path)
        if "config_sizes" not in results and Path(results.get("config_file", "")).is_file():
            results["config_sizes"] = config_sizes(load_config(results["config_file"], results.get("overrides", ())))
        results["summary"] = measurement_summaries(results.get("measurements", {}))
        write_json(results_path, results)
        write_markdown(markdown_path, results)
        click.echo(f"{markdown_path} rewritten from {results_path}")
        return
    names = parse_only(only)
    if config_path is None:
        raise InputError("evol bench needs --config (e.g. configs/bench-tiny.yaml): every figure names its config.")
    for option, value in (
        ("--repeats", repeats),
        ("--rounds", rounds),
        ("--resume-chunk", resume_chunk),
        ("--train-steps", train_steps),
        ("--train-repeats", train_repeats),
        ("--judge-items", judge_items),
    ):
        if value < 1:
            raise InputError(f"{option} must be at least 1, got {value}.")
    if naive_prompts < 0:
        raise InputError(f"--naive-prompts must be 0 (all) or more, got {naive_prompts}.")
    config = load_config(config_path, overrides)  # checked here, before any process starts
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    ctx = {
        "work": work,
        "config_file": Path(config_path),
        "overrides": list(overrides),
        "args": sets(Path(config_path), overrides),
        "repeats": repeats,
        "rounds": rounds,
        "resume_chunk": resume_chunk,
        "naive_prompts": naive_prompts,
        "naive_dtype": naive_dtype,
        "train_steps": train_steps,
        "train_repeats": train_repeats,
        "judge_items": judge_items,
        "scales": parse_scales(scales),
        "throughput_seeds": parse_scales(throughput_seeds, "--throughput-seeds"),
    }
    results_path = Path(results_path)
    results = read_json(results_path) if results_path.is_file() else {}
    results.update(
        machine=machine_info(),
        config_file=str(config_path),
        overrides=list(overrides),
        sizes={k: v for k, v in ctx.items() if k not in ("work", "config_file", "args", "overrides")},
        model=config.models.evolver,
        config_sizes=config_sizes(config),
    )
    measurements = results.setdefault("measurements", {})
    for name in names:
        click.echo(f"[bench] {name} ...", err=True)
        started = time.time()
        load = [round(x, 2) for x in os.getloadavg()]
        measurements[name] = {
            "measured": measured_stamp(),
            "load_average_at_start": load,
            **RUNNERS[name](ctx),
            "wall_seconds": round(time.time() - started, 1),
        }
        results["summary"] = measurement_summaries(measurements)
        write_json(results_path, results)  # after every measurement: a crash keeps what was measured
        click.echo(f"[bench] {name} done in {measurements[name]['wall_seconds']} s", err=True)
    write_markdown(markdown_path, results)
    click.echo(f"{results_path}, {markdown_path}")


if __name__ == "__main__":
    bench_command()
