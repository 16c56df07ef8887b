"""The Ray backend against the local one: generation speed and start-up on a real model, and the
evolve stage's own cost at paper scale with a scripted engine (no model).

    python -m benchmarks.ray_bench overhead --seeds 2000,8000,52000 --rounds 4 --work runs/ray-bench
    python -m benchmarks.ray_bench round --seeds 16 --work runs/ray-bench --config configs/tiny.yaml

`overhead` runs each (seeds, backend) in a fresh process with a zero-cost scripted engine: the local
backend's chained path (a StreamingFakeEngine) against the Ray backend's driver path (a
BlockFakeEngine: one job per step, blocks saved as they come). It adds what Ray Data itself costs
per row: the same rows through a Ray Data actor pool that echoes them, on a local Ray. Each prints
wall seconds, peak RSS and run-directory size. `round` runs one evolution round on SmolLM2 with each
backend and compares output tokens per second and the time before the first result.
Results go to BENCHMARKS.md ("Ray backend") by hand; a 2-core box cannot show a multi-node speed-up.
"""

from __future__ import annotations

import json
import random
import re
import resource
import subprocess
import sys
import time
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
            f"engine.backend={backend}",
        ],
    )
    engine_class = BlockFakeEngine if backend == "ray" else StreamingFakeEngine
    options = {"block_size": config.ray.batch_size} if backend == "ray" else {"finish_per_poll": 64}

    def make(role):
        return engine_class(scripted, **options)

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


class Echo:
    """A Ray Data actor standing for an engine replica: returns each row's id with a fixed text."""

    def __call__(self, batch):
        return {"id": batch["id"], "text": ["x" * 200] * len(batch["id"])}


def ray_data_cost(rows: int, batch_size: int) -> dict:
    """What a Ray Data job costs per row with an engine that costs nothing (local Ray)."""
    import ray

    from pipeline.config.ray import RayConfig
    from pipeline.engine.ray_backend import connect

    connect(RayConfig(num_cpus=2))
    started = time.perf_counter()
    items = [{"id": f"r{i}", "tokenized_prompt": list(range(300))} for i in range(rows)]
    dataset = ray.data.from_items(items, override_num_blocks=max(1, rows // batch_size))
    dataset = dataset.map_batches(Echo, batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=1))
    seen = sum(len(b["id"]) for b in dataset.iter_batches(batch_size=None))
    wall = time.perf_counter() - started
    ray.shutdown()
    assert seen == rows
    return {"rows": rows, "wall_s": round(wall, 1), "ms_per_row": round(1000 * wall / rows, 3)}


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
        if backend == "raydata":
            print(json.dumps(ray_data_cost(int(count), 16)))
        else:
            print(json.dumps(run_scripted(int(count), rounds, backend, work)))
        return
    for count in [int(x) for x in seeds.split(",")]:
        for backend in ("local", "ray", "raydata"):
            rows = count * 3 if backend == "raydata" else count  # one round's three steps
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.ray_bench", "overhead", "--rounds", str(rounds)]
                + ["--work", str(work), "--one", f"{backend}:{rows}"],
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
            + ["--set", f"engine.backend={backend}", "--set", "ray.num_cpus=4", "--set", "ray.batch_size=1"],
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
        # each Ray job's start-up: "[ray] job of N rows: first block after X s, all after Y s"
        jobs = [
            (float(m.group(1)), float(m.group(2)))
            for m in re.finditer(r"first block after ([0-9.]+) s, all after ([0-9.]+) s", out.stderr)
        ]
        startup = sum(first for first, _ in jobs)
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
            # generation time less each job's time to its first block: what the engines took once running
            "tok_per_s_after_startup": round(tokens / (seconds - startup), 1) if seconds > startup else None,
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
                "ray_startup_per_job_s": round(ray["ray_startup_s"] / max(1, ray["ray_jobs"]), 1),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
