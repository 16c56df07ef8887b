"""The Ray backend against the local one: generation speed and start-up on a real model, and the
evolve stage's own cost at paper scale with a scripted engine (no model).

    python -m benchmarks.ray_bench overhead --seeds 2000,8000,52000 --rounds 4 --work runs/ray-bench
    python -m benchmarks.ray_bench round --seeds 16 --work runs/ray-bench --config configs/tiny.yaml

`overhead` runs each (seeds, backend) in a fresh process with a zero-cost scripted engine: the local
backend's chained path (a StreamingFakeEngine); the Ray backend's driver path (a BlockFakeEngine:
one chain job per round, requests and finished chains through the JSON trip to a replica, blocks
saved as they come); and the whole Ray path, `ray-data`: a real Ray Data chain job on a local Ray
whose one replica runs the scripted engine, so Ray's own row traffic is in the number. Each prints
wall seconds, peak RSS and run-directory size. `round` runs one evolution round on SmolLM2 with each
backend and compares output tokens per second and the time before the first result.
Results go to BENCHMARKS.md ("Ray backend") by hand; a 2-core box cannot show a multi-node speed-up.
"""

from __future__ import annotations

import json
import os
import random
import re
import resource
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import click

WORDS = [f"w{i}" for i in range(5000)]


def scripted(request) -> str:
    """Evolutions that add seeded words (so they pass the rules and rarely collide), a DIFFERENT
    verdict, and a short answer."""
    if request.purpose == "check" or request.choice:
        return "DIFFERENT"
    rng = random.Random(request.seed)
    words = " ".join(rng.choice(WORDS) for _ in range(12))
    if request.purpose == "evolve":
        parent = request.prompt_text.rsplit("\n", 3)[-1][:200]
        return f"{parent} Also consider {words}."
    return f"Here is an answer: {words}."


def write_seeds(path: Path, count: int) -> None:
    rng = random.Random(7)
    with path.open("w") as handle:
        for i in range(count):
            text = f"Task {i}: " + " ".join(rng.choice(WORDS) for _ in range(10))
            handle.write(json.dumps({"id": f"s{i}", "instruction": text, "output": "A seed answer."}) + "\n")


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run_scripted(seeds: int, rounds: int, backend: str, work: Path) -> dict:
    """One evolution with the scripted engine in this process (called in a fresh process)."""
    from evolve_local.evolve import run_evolve
    from evolve_local.steps import ModelSet
    from pipeline.config import load_config
    from pipeline.engine.fake import BlockFakeEngine, StreamingFakeEngine

    work.mkdir(parents=True, exist_ok=True)
    seeds_file = work / f"seeds_{seeds}.jsonl"
    write_seeds(seeds_file, seeds)
    testset = work / "testset.jsonl"
    testset.write_text(json.dumps({"idx": 1, "Instruction": "Name three rivers in Europe."}) + "\n")
    config = load_config(
        None,
        [
            f"evolve.seeds={seeds_file}",
            f"eval.testset={testset}",
            f"evolve.rounds={rounds}",
            f"engine.backend={'local' if backend == 'local' else 'ray'}",
            "ray.num_cpus=2",
        ],
    )

    def make(role):
        if backend == "ray-data":  # a real Ray Data chain job; its one replica answers with `scripted`
            from pipeline.engine.ray_backend import RayEngine

            replica = partial(StreamingFakeEngine, scripted, finish_per_poll=64)
            return RayEngine("scripted", config.engine, config.ray, replica=replica)
        if backend == "ray":
            return BlockFakeEngine(scripted, block_size=config.ray.batch_size)
        return StreamingFakeEngine(scripted, finish_per_poll=64)

    names = {role: "scripted" for role in ("evolver", "equality", "responder")}
    run_dir = work / f"{backend}_{seeds}"
    started = time.perf_counter()
    stats = run_evolve(config, run_dir, ModelSet(names, {r: "h" for r in names}, make), quiet=True)
    wall = time.perf_counter() - started
    return {
        "backend": backend,
        "seeds": seeds,
        "rounds": rounds,
        "items": sum(r["attempted"] for r in stats["rounds"]),
        "wall_s": round(wall, 1),
        "ms_per_seed": round(1000 * wall / seeds, 2),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "run_dir_gb": round(dir_bytes(run_dir) / 2**30, 3),
    }


@click.group()
def main() -> None:
    """The Ray backend's benchmarks."""


@main.command("overhead")
@click.option("--seeds", default="2000,8000,52000")
@click.option("--rounds", default=4, type=int)
@click.option("--work", default="runs/ray-bench", type=click.Path(file_okay=False))
@click.option("--one", default="", help="Internal: run one 'backend:seeds' in this process.")
def overhead(seeds, rounds, work, one) -> None:
    """The evolve stage's own cost (no model), both backends, each in a fresh process."""
    work = Path(work)
    if one:
        backend, count = one.split(":")
        print(json.dumps(run_scripted(int(count), rounds, backend, work)))
        return
    for count in [int(x) for x in seeds.split(",")]:
        for backend in ("local", "ray", "ray-data"):
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.ray_bench", "overhead", "--rounds", str(rounds)]
                + ["--work", str(work), "--one", f"{backend}:{count}"],
                capture_output=True,
                text=True,
            )
            line = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-2000:]
            print(line, flush=True)


@main.command("round")
@click.option("--seeds", default=16, type=int)
@click.option("--work", default="runs/ray-bench", type=click.Path(file_okay=False))
@click.option("--config", "config_path", default="configs/tiny.yaml")
def one_round(seeds, work, config_path) -> None:
    """One evolution round on the configured model, local then Ray (replicas=1)."""
    from pipeline.core.paths import SHIPPED_SEEDS

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    picked = SHIPPED_SEEDS.read_text().splitlines()[:seeds]
    (work / "seeds.jsonl").write_text("\n".join(picked) + "\n")
    results = {}
    for backend in ("local", "ray"):
        run_dir = work / f"round_{backend}_{seeds}"
        started = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-m", "pipeline", "evolve", "--config", config_path, "--rounds", "1"]
            + ["--seeds", str(work / "seeds.jsonl"), "--out", str(run_dir)]
            + ["--set", f"engine.backend={backend}", "--set", "ray.num_cpus=4", "--set", "ray.batch_size=1"]
            # the one replica gets the cores the local engine has
            + ["--set", f"ray.cpus_per_worker={len(os.sched_getaffinity(0))}"],
            stderr=subprocess.PIPE,
            text=True,
        )
        wall = time.perf_counter() - started
        if out.returncode:
            raise SystemExit(f"{backend} round failed:\n{out.stderr[-3000:]}")
        stats = json.loads((run_dir / "evolve" / "stats.json").read_text())
        generation = [s["generation"] for s in stats["rounds"]]
        tokens = sum(step["completion_tokens"] for g in generation for step in g.values())
        seconds = sum(step["seconds"] for g in generation for step in g.values())
        # each Ray job: "[ray] job of N chains on R replica(s): replicas ready after X s, first block after
        # F s, longest shard B s, all after Y s"
        jobs = [
            (float(m.group(1)), float(m.group(2)))
            for m in re.finditer(r"replicas ready after ([0-9.]+) s, .*?longest shard ([0-9.]+) s", out.stderr)
        ]
        startup, busy = sum(j[0] for j in jobs), sum(j[1] for j in jobs)
        results[backend] = {
            "backend": backend,
            "seeds": seeds,
            "wall_s": round(wall, 1),
            "completion_tokens": tokens,
            "generation_s": round(seconds, 1),
            "tok_per_s_generation": round(tokens / seconds, 1) if seconds else None,
            "tok_per_s_wall": round(tokens / wall, 1),
            "steps": sum(len(g) for g in generation),
            "ray_jobs": len(jobs),
            "ray_startup_s": round(startup, 1),
            # generation time less each job's start-up (until its replicas' engines were ready)
            "tok_per_s_after_startup": round(tokens / (seconds - startup), 1) if seconds > startup else None,
            # the replicas' own time on their shards: the engines' speed, without Ray's transport
            "tok_per_s_in_replicas": round(tokens / busy, 1) if busy else None,
        }
        print(json.dumps(results[backend]), flush=True)
    local, ray = results["local"], results["ray"]
    print(
        json.dumps(
            {
                "ray_over_local_tok_per_s": round(ray["tok_per_s_generation"] / local["tok_per_s_generation"], 3),
                "ray_over_local_after_startup": round(
                    ray["tok_per_s_after_startup"] / local["tok_per_s_generation"], 3
                )
                if ray["tok_per_s_after_startup"]
                else None,
                "ray_in_replicas_over_local": round(ray["tok_per_s_in_replicas"] / local["tok_per_s_generation"], 3)
                if ray["tok_per_s_in_replicas"]
                else None,
                "ray_startup_per_job_s": round(ray["ray_startup_s"] / max(1, ray["ray_jobs"]), 1),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
