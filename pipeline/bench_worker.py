"""The in-process measurements of `evol bench`, each run as its own process by pipeline/bench.py.

    python -m pipeline.bench_worker throughput --config configs/bench-tiny.yaml --work runs/bench/throughput \
        --repeats 3 --result runs/bench/throughput/result.json
    python -m pipeline.bench_worker naive --config configs/bench-tiny.yaml \
        --requests runs/bench/throughput/requests.jsonl --limit 8 --result runs/bench/naive/result.json

throughput: one vLLM engine serves both sides of the comparison. Each repetition runs the evolve
  stage (`run_evolve`) in a fresh directory with an engine wrapper that records every request,
  then replays exactly those requests (same token ids, sampling settings, per-request seeds,
  max_tokens and constrained choices) to `vllm.LLM.generate` in ONE call. Output tokens/s of both.
naive: the same requests, one Hugging Face `model.generate` per prompt, the way many scripts do it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from pipeline.config import load_config
from pipeline.engine import ChatRequest, ChatResult
from pipeline.jsonio import write_json


class RecordingEngine:
    """Passes batches to the real engine and keeps them; `close` is a no-op so the engine (and its
    warm start) survives `run_evolve`'s cleanup and serves every repetition."""

    def __init__(self, engine):
        self.engine = engine
        self.model_name = engine.model_name
        self.requests: list[ChatRequest] = []
        self.completion_tokens = 0
        self.generate_seconds = 0.0
        self.calls = 0

    def generate(self, requests: list[ChatRequest]) -> list[ChatResult]:
        started = time.perf_counter()
        results = self.engine.generate(requests)
        self.generate_seconds += time.perf_counter() - started
        self.requests.extend(requests)
        self.completion_tokens += sum(r.completion_tokens for r in results)
        self.calls += 1
        return results

    def close(self) -> None:
        pass


def raw_inputs(engine, requests: list[ChatRequest]):
    """Token prompts and SamplingParams built exactly as VLLMEngine.generate builds them, ahead of
    the clock, so the timed part is the engine call alone (too-long requests are skipped, as in the stage)."""
    prompts, params, _, _, _ = engine.build_inputs(requests)
    return prompts, params


def measure_throughput(config, work: Path, repeats: int) -> dict:
    from evolve_local.commands import vllm_models
    from evolve_local.evolve import load_inputs, run_evolve
    from evolve_local.steps import ModelSet
    from pipeline.engine import VLLMEngine
    from pipeline.models import resolve_model

    inputs = load_inputs(config)
    named = vllm_models(config)
    if len(set(named.hashes.values())) != 1:
        raise SystemExit("bench throughput needs one model for evolver, equality check and responder.")
    started = time.perf_counter()
    engine = VLLMEngine(resolve_model(config.models.evolver, config.models.dir), config.engine,
                        seed=config.run.seed, trust_remote_code=config.models.trust_remote_code)
    start_seconds = time.perf_counter() - started
    # Warm-up: the first batches of a fresh engine pay one-off costs that belong to neither side.
    engine.generate([ChatRequest(id="warm", messages=[{"role": "user", "content": "Say hello."}], max_tokens=16)])

    stage_runs, raw_runs = [], []
    for rep in range(repeats):
        run_dir = work / f"rep_{rep}"
        shutil.rmtree(run_dir, ignore_errors=True)
        recorder = RecordingEngine(engine)
        models = ModelSet(names=named.names, hashes=named.hashes, make=lambda role: recorder)
        started = time.perf_counter()
        run_evolve(config, run_dir, models, inputs, quiet=True)
        stage_seconds = time.perf_counter() - started
        stage_runs.append({"seconds": round(stage_seconds, 3), "completion_tokens": recorder.completion_tokens,
                           "requests": len(recorder.requests), "engine_calls": recorder.calls,
                           "generate_seconds": round(recorder.generate_seconds, 3),
                           "tokens_per_second": round(recorder.completion_tokens / stage_seconds, 2)})
        if rep == 0:
            _write_requests(work / "requests.jsonl", recorder.requests)

        prompts, params = raw_inputs(engine, recorder.requests)
        started = time.perf_counter()
        outputs = engine.llm.generate(prompts, sampling_params=params, use_tqdm=False)
        raw_seconds = time.perf_counter() - started
        tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
        raw_runs.append({"seconds": round(raw_seconds, 3), "completion_tokens": tokens, "requests": len(prompts),
                         "engine_calls": 1, "tokens_per_second": round(tokens / raw_seconds, 2)})
        print(f"[bench] rep {rep}: stage {stage_runs[-1]['tokens_per_second']} tok/s, "
              f"raw {raw_runs[-1]['tokens_per_second']} tok/s", file=sys.stderr)
    engine.close()
    return {"engine_start_seconds": round(start_seconds, 1), "stage": stage_runs, "raw": raw_runs,
            "seeds": len(inputs.seeds), "rounds": config.evolve.rounds}


def _write_requests(path: Path, requests: list[ChatRequest]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for r in requests:
            handle.write(json.dumps({"id": r.id, "messages": r.messages, "max_tokens": r.max_tokens,
                                     "temperature": r.temperature, "top_p": r.top_p, "seed": r.seed,
                                     "choice": r.choice, "regex": r.regex}, ensure_ascii=False) + "\n")


def spread_sample(rows: list[dict], limit: int) -> list[dict]:
    """`limit` rows evenly spread over the list, so every step of the round (seed answers,
    evolutions, verdicts, answers) is in the naive subset, not only the first step's prompts."""
    if limit >= len(rows):
        return list(rows)
    return [rows[round(i * (len(rows) - 1) / max(limit - 1, 1))] for i in range(limit)]


def measure_naive(config, requests_path: Path, limit: int, dtype_name: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.models import resolve_model

    rows = [json.loads(line) for line in requests_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    subset = spread_sample(rows, limit)
    path = resolve_model(config.models.evolver, config.models.dir)
    dtype = getattr(torch, dtype_name)
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model.eval()
    load_seconds = time.perf_counter() - started
    e = config.engine
    per_prompt, tokens = [], 0
    started = time.perf_counter()
    for row in subset:
        ids = tokenizer.apply_chat_template(row["messages"], add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)
        temperature = e.temperature if row["temperature"] is None else row["temperature"]
        torch.manual_seed(row["seed"] or 0)
        sampling = dict(do_sample=True, temperature=temperature, top_p=e.top_p if row["top_p"] is None else row["top_p"]) \
            if temperature > 0 else dict(do_sample=False)
        one = time.perf_counter()
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=row["max_tokens"] or e.max_tokens,
                                 pad_token_id=tokenizer.eos_token_id, **sampling)
        new = int(out.shape[1] - ids["input_ids"].shape[1])
        per_prompt.append({"id": row["id"], "seconds": round(time.perf_counter() - one, 3), "completion_tokens": new})
        tokens += new
    seconds = time.perf_counter() - started
    return {"dtype": dtype_name, "load_seconds": round(load_seconds, 1), "prompts": len(subset),
            "of_requests": len(rows), "seconds": round(seconds, 3), "completion_tokens": tokens,
            "tokens_per_second": round(tokens / seconds, 2) if seconds else 0.0,
            "seconds_per_prompt": round(seconds / max(len(subset), 1), 3),
            "extrapolated_round_seconds": round(seconds / max(len(subset), 1) * len(rows), 1),
            "torch_threads": torch.get_num_threads(), "per_prompt": per_prompt}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("measure", choices=["throughput", "naive"])
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--result", required=True)
    parser.add_argument("--work", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--requests", default=None)
    parser.add_argument("--limit", type=int, default=8)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args(argv)
    config = load_config(args.config, args.overrides)
    if args.measure == "throughput":
        work = Path(args.work)
        work.mkdir(parents=True, exist_ok=True)
        result = measure_throughput(config, work, args.repeats)
    else:
        result = measure_naive(config, Path(args.requests), args.limit, args.dtype)
    write_json(Path(args.result), result)


if __name__ == "__main__":
    main()
