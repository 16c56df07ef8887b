"""The in-process measurements of `evol bench`, each run as its own process by benchmarks/bench.py.

    python -m benchmarks.worker throughput --config configs/bench-tiny.yaml --work runs/bench/throughput \
        --repeats 3 --seeds 8,32 --result runs/bench/throughput/result.json
    python -m benchmarks.worker naive --config configs/bench-tiny.yaml \
        --requests runs/bench/throughput/requests.jsonl --limit 0 --result runs/bench/naive/result.json

throughput: one vLLM engine serves both sides of the comparison. For each pool size, round 0 runs
  once; each repetition runs round 1 of the evolve stage (`run_evolve`) on a copy of it, chained
  and by step, with an engine wrapper that records every request, then replays exactly those
  requests (same token ids, sampling settings, per-request seeds, max_tokens and constrained
  choices) to `vllm.LLM.generate` in ONE call. Output tokens/s of both.
naive: the same requests (the first size's chained round), one Hugging Face `model.generate` per
  prompt, the way many scripts do it; --limit 0 replays all of them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from evolve_local.steps import TimedEngine
from pipeline.config import load_config
from pipeline.core.jsonio import write_json
from pipeline.engine import DEFAULT_WINDOW, ChatRequest


class RecordingEngine(TimedEngine):
    """Passes work to the real engine, timing it (`seconds`) and keeping every request as its block
    comes back (`calls`: the blocks); `close` is a no-op so the engine (and its warm start) survives
    `run_evolve`'s cleanup and serves every repetition. It streams like the engine, so the stage runs
    its steps as chains, as it does for real."""

    def __init__(self, engine):
        super().__init__(engine)
        self.requests: list[ChatRequest] = []
        self.completion_tokens = 0
        self.calls = 0

    def stream(self, requests, follow_up=None, window=DEFAULT_WINDOW):
        for block in super().stream(requests, follow_up, window):
            self.calls += 1
            self.requests.extend(request for request, _ in block)
            self.completion_tokens += sum(result.completion_tokens for _, result in block)
            yield block

    def close(self) -> None:
        pass


def raw_inputs(engine, requests: list[ChatRequest]):
    """Token prompts and SamplingParams built exactly as VLLMEngine.generate builds them, ahead of
    the clock, so the timed part is the engine call alone (too-long requests are skipped, as in the stage)."""
    prompts, params, _, _, _ = engine.build_inputs(requests)
    return prompts, params


MODES = {"chained": True, "by_step": False}  # evolve.overlap_steps


def measure_throughput(
    config_file: str, overrides: list[str], work: Path, repeats: int, seed_counts: list[int]
) -> dict:
    """Round 1 of the evolve stage against its own requests in one raw call, for each pool size and
    both ways of running the steps (chained on one engine, or one step after the other)."""
    from evolve_local.evolve import load_inputs, run_evolve
    from evolve_local.steps import ModelSet
    from pipeline.cli.evolve import vllm_models
    from pipeline.core.models import resolve_model
    from pipeline.engine.vllm_backend import VLLMEngine

    config = load_config(config_file, overrides)
    named = vllm_models(config)
    if len(set(named.hashes.values())) != 1:
        raise SystemExit("bench throughput needs one model for evolver, equality check and responder.")
    started = time.perf_counter()
    engine = VLLMEngine(
        resolve_model(config.models.evolver, config.models.dir),
        config.engine,
        seed=config.run.seed,
        trust_remote_code=config.models.trust_remote_code,
    )
    start_seconds = time.perf_counter() - started
    # Warm-up: the first batches of a fresh engine pay one-off costs that belong to neither side.
    # A constrained request too: the first one compiles the grammar backend.
    hello = [{"role": "user", "content": "Say hello."}]
    engine.generate(
        [
            ChatRequest(id="warm", messages=hello, max_tokens=16),
            ChatRequest(id="warm-choice", messages=hello, max_tokens=4, choice=["EQUAL", "DIFFERENT"]),
        ]
    )

    def models(recorder: RecordingEngine) -> ModelSet:
        return ModelSet(names=named.names, hashes=named.hashes, make=lambda role: recorder)

    sizes = []
    for seeds in seed_counts:

        def sized(*more: str, seeds: int = seeds):
            return load_config(config_file, [*overrides, f"evolve.max_seeds={seeds}", *more])

        # Round 0 (the seed answers) once per size; every measured run continues a copy of it.
        base = work / f"seeds_{seeds}"
        shutil.rmtree(base, ignore_errors=True)
        inputs = load_inputs(sized())
        run_evolve(sized("evolve.rounds=0"), base / "round_0", models(RecordingEngine(engine)), inputs, quiet=True)
        runs = []
        for rep in range(repeats):
            for mode, overlap in MODES.items():  # interleaved, so a burst of load hits both modes alike
                run_dir = base / f"{mode}_{rep}"
                shutil.copytree(base / "round_0", run_dir)
                recorder = RecordingEngine(engine)
                engine.llm.reset_prefix_cache()  # both sides start cold: no prompt is cached from the other
                started = time.perf_counter()
                run_evolve(
                    sized("evolve.rounds=1", f"evolve.overlap_steps={str(overlap).lower()}"),
                    run_dir,
                    models(recorder),
                    inputs,
                    quiet=True,
                )
                stage_seconds = time.perf_counter() - started
                stage = {
                    "seconds": round(stage_seconds, 3),
                    "completion_tokens": recorder.completion_tokens,
                    "requests": len(recorder.requests),
                    "engine_calls": recorder.calls,
                    "generate_seconds": round(recorder.seconds, 3),
                    "tokens_per_second": round(recorder.completion_tokens / stage_seconds, 2),
                }
                if rep == 0 and mode == "chained" and seeds == seed_counts[0]:
                    _write_requests(work / "requests.jsonl", recorder.requests)
                    requests_from = {"seeds": len(inputs.seeds), "mode": mode, "rep": rep}
                prompts, params = raw_inputs(engine, recorder.requests)
                engine.llm.reset_prefix_cache()
                started = time.perf_counter()
                outputs = engine.llm.generate(prompts, sampling_params=params, use_tqdm=False)
                raw_seconds = time.perf_counter() - started
                tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
                raw = {
                    "seconds": round(raw_seconds, 3),
                    "completion_tokens": tokens,
                    "requests": len(prompts),
                    "engine_calls": 1,
                    "tokens_per_second": round(tokens / raw_seconds, 2),
                }
                runs.append({"mode": mode, "rep": rep, "stage": stage, "raw": raw})
                print(
                    f"[bench] {seeds} seeds, {mode}, rep {rep}: stage {stage['tokens_per_second']} tok/s, "
                    f"raw {raw['tokens_per_second']} tok/s, ratio {stage['tokens_per_second'] / raw['tokens_per_second']:.3f}",
                    file=sys.stderr,
                )
        sizes.append({"seeds": len(inputs.seeds), "runs": runs})
    engine.close()
    return {
        "engine_start_seconds": round(start_seconds, 1),
        "round": 1,
        "modes": list(MODES),
        "sizes": sizes,
        "requests_file": {"path": str(work / "requests.jsonl"), **requests_from},
    }


def _write_requests(path: Path, requests: list[ChatRequest]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for r in requests:
            handle.write(
                json.dumps(
                    {
                        "id": r.id,
                        "messages": r.messages,
                        "max_tokens": r.max_tokens,
                        "temperature": r.temperature,
                        "top_p": r.top_p,
                        "seed": r.seed,
                        "choice": r.choice,
                        "regex": r.regex,
                    },
                    ensure_ascii=False,
                )
                + "\n"
            )


def spread_sample(rows: list[dict], limit: int) -> list[dict]:
    """`limit` rows evenly spread over the list, so every step of the round (seed answers,
    evolutions, verdicts, answers) is in the naive subset, not only the first step's prompts."""
    if limit <= 0 or limit >= len(rows):
        return list(rows)
    return [rows[round(i * (len(rows) - 1) / max(limit - 1, 1))] for i in range(limit)]


def measure_naive(config, requests_path: Path, limit: int, dtype_name: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.core.models import resolve_model

    rows = [json.loads(line) for line in requests_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    subset = spread_sample(rows, limit)
    path = resolve_model(config.models.evolver, config.models.dir)
    dtype = getattr(torch, dtype_name)
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(path)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # the naive way on the same hardware
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
    model.eval()
    load_seconds = time.perf_counter() - started
    e = config.engine
    per_prompt, tokens = [], 0
    started = time.perf_counter()
    for row in subset:
        ids = tokenizer.apply_chat_template(
            row["messages"], add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(device)
        temperature = e.temperature if row["temperature"] is None else row["temperature"]
        torch.manual_seed(row["seed"] or 0)
        sampling = (
            dict(do_sample=True, temperature=temperature, top_p=e.top_p if row["top_p"] is None else row["top_p"])
            if temperature > 0
            else dict(do_sample=False)
        )
        one = time.perf_counter()
        with torch.no_grad():
            out = model.generate(
                **ids,
                max_new_tokens=row["max_tokens"] or e.max_tokens,
                pad_token_id=tokenizer.eos_token_id,
                **sampling,
            )
        new = int(out.shape[1] - ids["input_ids"].shape[1])
        per_prompt.append({"id": row["id"], "seconds": round(time.perf_counter() - one, 3), "completion_tokens": new})
        tokens += new
    seconds = time.perf_counter() - started
    return {
        "dtype": dtype_name,
        "device": device,
        "load_seconds": round(load_seconds, 1),
        "prompts": len(subset),
        "of_requests": len(rows),
        "seconds": round(seconds, 3),
        "completion_tokens": tokens,
        "tokens_per_second": round(tokens / seconds, 2) if seconds else 0.0,
        "seconds_per_prompt": round(seconds / max(len(subset), 1), 3),
        "extrapolated_round_seconds": round(seconds / max(len(subset), 1) * len(rows), 1),
        "torch_threads": torch.get_num_threads(),
        "per_prompt": per_prompt,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("measure", choices=["throughput", "naive"])
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--result", required=True)
    parser.add_argument("--work", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--requests", default=None)
    parser.add_argument("--limit", type=int, default=0, help="requests replayed; 0: all")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--seeds", default="8", help="comma-separated pool sizes of the throughput runs")
    args = parser.parse_args(argv)
    if args.measure == "throughput":
        work = Path(args.work)
        work.mkdir(parents=True, exist_ok=True)
        result = measure_throughput(
            args.config, args.overrides, work, args.repeats, [int(n) for n in args.seeds.split(",")]
        )
    else:
        result = measure_naive(load_config(args.config, args.overrides), Path(args.requests), args.limit, args.dtype)
    write_json(Path(args.result), result)


if __name__ == "__main__":
    main()
