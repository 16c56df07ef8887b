"""The server backend against the in-process engine: one evolution round, output tokens per second.

    python -m benchmarks.server_bench --seeds 32 --in-flight 4,8,16,32,64 --work runs/server-bench

Every run is `evol evolve --rounds 1` in its own process on the same seeds, which carry answers so
round 0 generates nothing and the measured work is the evolution round itself (evolutions, equality
verdicts, answers, chained). The speed is the round's completion tokens over its generation seconds,
the time the stage spent in the engine: the in-process engine's start is not in it, and neither is
the server's, started once before the server runs (`evol serve`'s command, the config's engine
settings) and stopped after them. The ratio is against the mean of the two in-process runs. The in-process engine runs first and last, so drift of the machine
over the benchmark shows as the difference between those two. Results: printed as JSON lines and
written to <work>/results.json; BENCHMARKS.md ("Server backend") by hand.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import click


def round_speed(run_dir: Path) -> dict:
    stats = json.loads((run_dir / "evolve" / "stats.json").read_text())
    generation = stats["rounds"][1]["generation"]
    tokens = sum(step["completion_tokens"] for step in generation.values())
    seconds = sum(step["seconds"] for step in generation.values())
    return {
        "attempted": stats["rounds"][1]["attempted"],
        "completion_tokens": tokens,
        "generation_s": round(seconds, 1),
        "tok_per_s": round(tokens / seconds, 1),
    }


def evolve(config_path: str, seeds: Path, run_dir: Path, sets: list[str]) -> dict:
    command = [sys.executable, "-m", "pipeline", "evolve", "--config", config_path, "--rounds", "1"]
    command += ["--seeds", str(seeds), "--out", str(run_dir)]
    for item in sets:
        command += ["--set", item]
    started = time.perf_counter()
    out = subprocess.run(command, stderr=subprocess.PIPE, text=True)
    if out.returncode:
        raise SystemExit(f"`{' '.join(command)}` failed:\n{out.stderr[-3000:]}")
    return {"wall_s": round(time.perf_counter() - started, 1), **round_speed(run_dir)}


@click.command()
@click.option("--seeds", default=32, type=int, show_default=True, help="Shipped seeds evolved in the round.")
@click.option("--in-flight", default="4,8,16,32,64", show_default=True, help="engine.max_in_flight values.")
@click.option("--work", default="runs/server-bench", type=click.Path(file_okay=False), show_default=True)
@click.option("--config", "config_path", default="configs/tiny.yaml", show_default=True)
def main(seeds, in_flight, work, config_path) -> None:
    """One evolution round in-process, then through vLLM's server at each engine.max_in_flight."""
    from pipeline.config import load_config
    from pipeline.core.models import resolve_model
    from pipeline.core.paths import SHIPPED_SEEDS
    from pipeline.engine.vllm_server import free_port, start_vllm_server, stop, wait_until_ready

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in SHIPPED_SEEDS.read_text().splitlines()[:seeds]]
    seeds_file = work / "seeds.jsonl"
    seeds_file.write_text(
        "".join(json.dumps({**r, "output": f"An answer to task {i}."}) + "\n" for i, r in enumerate(rows))
    )
    config = load_config(config_path, [f"evolve.max_seeds={seeds}"])
    common = [f"evolve.max_seeds={seeds}"]
    results = []

    def record(label: str, sets: list[str], **extra) -> None:
        run_dir = work / label
        if run_dir.exists():
            subprocess.run(["rm", "-rf", str(run_dir)], check=True)
        row = {"run": label, **extra, **evolve(config_path, seeds_file, run_dir, common + sets)}
        row["load_1min"] = round(os.getloadavg()[0], 2)
        results.append(row)
        print(json.dumps(row), flush=True)

    record("in-process-1", ["engine.backend=local"], backend="local")
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    name = config.models.evolver
    started = time.perf_counter()
    server = start_vllm_server(
        config.engine,
        resolve_model(name, config.models.dir),
        port,
        work / "server.log",
        seed=config.run.seed,
        served_name=name,
    )
    try:
        wait_until_ready(url, server)
        print(json.dumps({"server_start_s": round(time.perf_counter() - started, 1)}), flush=True)
        for k in [int(x) for x in in_flight.split(",")]:
            sets = ["engine.backend=server", f"engine.url={url}", f"engine.max_in_flight={k}"]
            record(f"server-{k}", sets, backend="server", max_in_flight=k)
    finally:
        stop(server)
    record("in-process-2", ["engine.backend=local"], backend="local")
    local = [r["tok_per_s"] for r in results if r["backend"] == "local"]
    for row in results:
        row["over_in_process"] = round(row["tok_per_s"] / (sum(local) / len(local)), 3)
    (work / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    best = max((r for r in results if r["backend"] == "server"), key=lambda r: r["tok_per_s"])
    print(json.dumps({"best_server": best["run"], "over_in_process": best["over_in_process"]}))


if __name__ == "__main__":
    main()
