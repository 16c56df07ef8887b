"""The Ray backend against the local one: generation speed and start-up on a real model, and the
evolve stage's own cost at paper scale with a scripted engine (no model).

    python -m benchmarks.ray_bench overhead --seeds 2000,8000,52000 --rounds 4 --work runs/ray-bench
    python -m benchmarks.ray_bench round --seeds 16 --work runs/ray-bench --config configs/tiny.yaml

    python -m benchmarks.ray_bench kill --seeds 48 --work runs/ray-bench --config configs/tiny.yaml

`overhead` runs each (seeds, backend) in a fresh process with a zero-cost scripted engine: the local
backend's chained path (a StreamingFakeEngine); the Ray backend's driver path (a BlockFakeEngine:
one chain job per round, requests and finished chains through the JSON trip to a replica, blocks
saved as they come); and the whole Ray path, `ray-job`: the real job (`ray_job.py`) on a local Ray
whose one replica actor runs the scripted engine, so Ray's own traffic is in the number. Each prints
wall seconds, the driver's peak RSS and run-directory size. `round` runs one evolution round on
SmolLM2 with each backend and compares output tokens per second and the time before the first
result. `kill` runs one round on two replicas on a two-node local cluster, once uninterrupted and
once with one replica's process killed a third of the way through, and counts the chains generated
twice. Results go to BENCHMARKS.md ("Ray backend") by hand; a 2-core box cannot show a multi-node
speed-up.
"""

from __future__ import annotations

import json
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import click

from pipeline.engine.schedule import ContinuousBatching

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


def run_scripted(seeds: int, rounds: int, backend: str, work: Path, overrides: tuple = ()) -> dict:
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
            *overrides,
        ],
    )

    def make(role):
        if backend == "ray-job":  # the real Ray job; its one replica actor answers with `scripted`
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
@click.option("--backends", default="local,ray,ray-job")
@click.option("--set", "overrides", multiple=True, help="A config override for every run (key=value).")
@click.option("--one", default="", help="Internal: run one 'backend:seeds' in this process.")
def overhead(seeds, rounds, work, backends, overrides, one) -> None:
    """The evolve stage's own cost (no model), both backends, each in a fresh process."""
    work = Path(work)
    if one:
        backend, count = one.split(":")
        print(json.dumps({**run_scripted(int(count), rounds, backend, work, overrides), "set": list(overrides)}))
        return
    for count in [int(x) for x in seeds.split(",")]:
        for backend in backends.split(","):
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.ray_bench", "overhead", "--rounds", str(rounds)]
                + ["--work", str(work), "--one", f"{backend}:{count}"]
                + [arg for override in overrides for arg in ("--set", override)],
                capture_output=True,
                text=True,
            )
            line = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-2000:]
            print(line, flush=True)


class LeanFake(ContinuousBatching):
    """A replica's scripted streaming engine that keeps nothing but what is in flight (the test fakes
    record every poll, which a job of 200K chains would fill a replica's memory with)."""

    def __init__(self, per_poll: int = 64):
        self.in_flight: list = []
        self.per_poll = per_poll

    @property
    def pending(self) -> int:
        return len(self.in_flight)

    def submit(self, requests) -> None:
        self.in_flight += requests

    def poll(self):
        done, self.in_flight = self.in_flight[: self.per_poll], self.in_flight[self.per_poll :]
        return [(r, self.result(r)) for r in done]

    def generate(self, requests):
        return [self.result(r) for r in requests]

    @staticmethod
    def result(request):
        from pipeline.engine.types import ChatResult

        return ChatResult(request.id, scripted(request), 300, 20, "stop")

    def close(self) -> None:
        pass


def three_steps(request, result):
    """evolve -> check -> answer, as an evolution round's chains (the follow-up a replica runs)."""
    from dataclasses import replace

    after = {"evolve": "check", "check": "answer"}.get(request.purpose)
    return replace(request, purpose=after) if after else None


def run_job(chains: int, batch_size: int) -> dict:
    """One Ray job of `chains` three-step chains on one scripted replica, the requests made lazily
    (each ~1.5 KB of prompt, as an evolution prompt with its instruction) and every block dropped
    once counted: the driver's own memory for a job, without the evolve stage's (its near-duplicate
    index and the round's records grow with the pool whatever the backend)."""
    from pipeline.config import load_config
    from pipeline.engine.ray_backend import RayEngine
    from pipeline.engine.types import ChatRequest

    config = load_config(None, ["engine.backend=ray", "ray.num_cpus=2", f"ray.batch_size={batch_size}"])
    engine = RayEngine("scripted", config.engine, config.ray, replica=LeanFake)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    filler = " ".join(WORDS[:250])

    def requests():
        for i in range(chains):
            text = f"Rewrite the task below into a harder one.\n{filler}\nTask {i}"
            yield ChatRequest(id=f"s{i}@r1", messages=[{"role": "user", "content": text}], purpose="evolve", seed=i)

    started = time.perf_counter()
    steps = 0
    try:
        for block in engine.stream(requests(), three_steps):
            steps += len(block)
    finally:
        engine.close()
    return {
        "chains": chains,
        "steps": steps,
        "batch_size": batch_size,
        "wall_s": round(time.perf_counter() - started, 1),
        "driver_peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "driver_rss_before_job_gb": round(before / 2**20, 3),
        "blocks": engine.last_job["blocks"],
    }


@main.command("job")
@click.option("--chains", default="8000,52000,208000")
@click.option("--batch-size", default=16, type=int)
@click.option("--one", default=0, type=int, help="Internal: run one job of this many chains in this process.")
def job(chains, batch_size, one) -> None:
    """The driver's peak RSS over one Ray job as the job grows, each size in a fresh process."""
    if one:
        print(json.dumps(run_job(one, batch_size)))
        return
    for count in [int(x) for x in chains.split(",")]:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.ray_bench",
                "job",
                "--batch-size",
                str(batch_size),
                "--one",
                str(count),
            ],
            capture_output=True,
            text=True,
        )
        print(out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-3000:], flush=True)


@main.command("round")
@click.option("--seeds", default=16, type=int)
@click.option("--work", default="runs/ray-bench", type=click.Path(file_okay=False))
@click.option("--config", "config_path", default="configs/tiny.yaml")
@click.option("--batch-size", default=16, type=int, help="ray.batch_size: chains per block.")
def one_round(seeds, work, config_path, batch_size) -> None:
    """One evolution round on the configured model, local then Ray (replicas=1)."""
    from pipeline.core.paths import SHIPPED_SEEDS

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    picked = SHIPPED_SEEDS.read_text().splitlines()[:seeds]
    (work / "seeds.jsonl").write_text("\n".join(picked) + "\n")
    results = {}
    for backend in ("local", "ray"):
        run_dir = work / f"round_{backend}_{seeds}"
        shutil.rmtree(run_dir, ignore_errors=True)  # a finished run would be skipped, not measured
        started = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-m", "pipeline", "evolve", "--config", config_path, "--rounds", "1"]
            + ["--seeds", str(work / "seeds.jsonl"), "--out", str(run_dir)]
            + [
                "--set",
                f"engine.backend={backend}",
                "--set",
                "ray.num_cpus=4",
                "--set",
                f"ray.batch_size={batch_size}",
                "--set",
                f"evolve.max_seeds={seeds}",
            ]
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
        # each Ray job: "[ray] job of N chains in B blocks of S on R replica(s): replicas ready after X s,
        # first block after F s, longest replica W s, all after Y s, D chains generated again"
        jobs = [
            (float(m.group(1)), float(m.group(2)))
            for m in re.finditer(r"replicas ready after ([0-9.]+) s, .*?longest replica ([0-9.]+) s", out.stderr)
        ]
        startup, busy = sum(j[0] for j in jobs), sum(j[1] for j in jobs)
        results[backend] = {
            "backend": backend,
            "seeds": seeds,
            "batch_size": batch_size,
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
            # the replicas' own time on their blocks: the engines' speed, without Ray's transport
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


def run_kill(killed: bool, seeds: int, batch_size: int, config_path: str, work: Path) -> dict:
    """One round on two CPU replicas, one per node of a two-node local cluster (one core each); with
    `killed`, the first replica's process is killed once a third of the round's chains are back."""
    import signal
    import threading

    import ray
    from ray.cluster_utils import Cluster

    from evolve_local.evolve import run_evolve
    from evolve_local.steps import ModelSet
    from pipeline.cli.evolve import vllm_models
    from pipeline.config import load_config
    from pipeline.core.paths import SHIPPED_SEEDS

    work.mkdir(parents=True, exist_ok=True)
    seeds_file = work / "seeds_answered.jsonl"
    # with their answers, so round 0 generates nothing and the one job is the round
    picked = [
        {**json.loads(line), "output": f"A short answer, number {i}."}
        for i, line in enumerate(SHIPPED_SEEDS.read_text().splitlines()[:seeds])
    ]
    seeds_file.write_text("".join(json.dumps(row) + "\n" for row in picked))
    config = load_config(
        config_path,
        [
            f"evolve.seeds={seeds_file}",
            f"evolve.max_seeds={seeds}",
            "evolve.rounds=1",
            "engine.backend=ray",
            "engine.replicas=2",
            f"ray.batch_size={batch_size}",
            "ray.cpus_per_worker=1",
        ],
    )
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    engines, kill = [], {}
    done = threading.Event()

    def killer() -> None:  # as the OOM killer or a lost node would, a third of the way through
        while not done.wait(0.2):
            engine = engines[0] if engines else None
            if engine is None or not engine.pool.where:
                continue
            back = sum(p["id"].endswith("@r1") for p in list(engine.placement))
            if back >= seeds // 3:
                kill["pid"] = int(engine.pool.where[0].rsplit(":", 1)[1])
                kill["chains_back"] = back
                os.kill(kill["pid"], signal.SIGKILL)
                return

    try:
        cluster.add_node(num_cpus=1)
        config.ray.address = cluster.address
        models = vllm_models(config)

        def make(role):
            engines.append(models.make(role))
            return engines[-1]

        thread = threading.Thread(target=killer, daemon=True)
        if killed:
            thread.start()
        run_dir = work / ("killed" if killed else "plain")
        started = time.perf_counter()
        run_evolve(config, run_dir, ModelSet(models.names, models.hashes, make), quiet=True)
        wall = time.perf_counter() - started
        done.set()
        job = engines[0].last_job
    finally:
        done.set()
        ray.shutdown()
        cluster.shutdown()
    replicas = {}
    for p in engines[0].placement:
        replicas[p["replica"]] = replicas.get(p["replica"], 0) + 1
    return {
        "mode": "killed" if killed else "uninterrupted",
        "seeds": seeds,
        "batch_size": batch_size,
        "wall_s": round(wall, 1),
        "chains": job["rows"],
        "blocks": job["blocks"],
        "killed_after_chains_back": kill.get("chains_back"),
        "chains_sent_again": job["redone_chains"],
        "chains_per_replica_process": sorted(replicas.values()),
        "startup_s": job["startup_s"],
    }


@main.command("kill")
@click.option("--seeds", default=48, type=int)
@click.option("--work", default="runs/ray-bench", type=click.Path(file_okay=False))
@click.option("--config", "config_path", default="configs/tiny.yaml")
@click.option("--batch-size", default=4, type=int, help="ray.batch_size: chains per block.")
@click.option("--one", default="", help="Internal: 'plain' or 'killed' in this process.")
def kill(seeds, work, config_path, batch_size, one) -> None:
    """One round on two replicas of a two-node local cluster, uninterrupted, then one replica killed."""
    work = Path(work)
    if one:
        print(json.dumps(run_kill(one == "killed", seeds, batch_size, config_path, work)))
        return
    for mode in ("plain", "killed"):
        shutil.rmtree(work / mode, ignore_errors=True)
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.ray_bench", "kill", "--seeds", str(seeds), "--work", str(work)]
            + ["--config", config_path, "--batch-size", str(batch_size), "--one", mode],
            capture_output=True,
            text=True,
        )
        line = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-3000:]
        print(line, flush=True)
    for name in ("evolve/round_1.jsonl", "data/C1.jsonl"):
        a, b = work / "plain" / name, work / "killed" / name
        same = a.exists() and b.exists() and a.read_bytes() == b.read_bytes()
        print(json.dumps({"file": name, "identical_to_uninterrupted": same}), flush=True)


if __name__ == "__main__":
    main()
