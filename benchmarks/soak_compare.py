"""Compare two finished `evol run` directories, for the soak test (benchmarks/soak.py).

    python -c "from benchmarks.soak_compare import compare; print(compare(Path('a/runs/x'), Path('b/runs/x')))"

JSON and JSONL files are compared as data with the fields that record when, how fast or where left
out and the run directory's path masked; other text files with paths and ISO times masked; binary
files byte for byte with the path masked. Every JSONL file is checked for duplicated records.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections import Counter
from pathlib import Path

# Fields that record when or how fast, or where: they differ between two equal runs.
VOLATILE = {
    "started",
    "finished",
    "created",
    "date",
    "time",
    "timestamp",
    "seconds",
    "elapsed",
    "wall_s",
    "wall_seconds",
    "duration",
    "duration_s",
    "tokens_per_second",
    "requests_per_second",
    "generation_seconds",
    "engine_seconds",
    "performance",
    "timing",
    "git",
    "versions",
    "hostname",
    "pid",
    "train_runtime",
    "train_samples_per_second",
    "train_steps_per_second",
    "train_tokens_per_second",
    "runtime",
    "resumed_from",
    "resumed",
    "elapsed_s",
    "updated",
    "generated",
    "throughput",
    "key",  # a stage key hashes its inputs' paths, which differ between two run directories
}
# What a run produces, as opposed to its manifests, logs and cards (times, speeds, hashes of paths).
RESULT_FILES = (
    "data/*.jsonl",
    "evolve/round_*.jsonl",
    "sft/*/adapter/adapter_model.safetensors",
    "answers/*/answers.jsonl",
    "judge/*/judgments.jsonl",
    "judge/*/orders.jsonl",
    "judge/*/scores.json",
    "analysis/analysis.json",
    "analysis/projection.jsonl",
    "report.json",
    "report.md",
)


def is_result(rel: str) -> bool:
    return any(fnmatch.fnmatch(rel, pattern) for pattern in RESULT_FILES)


def _clean(value, root: str):
    if isinstance(value, dict):
        cleaned = {k: _clean(v, root) for k, v in value.items() if k not in VOLATILE}
        if isinstance(cleaned.get("target_modules"), list):  # PEFT writes a set, in hash order
            cleaned["target_modules"] = sorted(map(str, cleaned["target_modules"]))
        return cleaned
    if isinstance(value, list):
        return [_clean(v, root) for v in value]
    if isinstance(value, str):
        return value.replace(root, "<RUN>").replace(str(Path(root).parent), "<RUNS>")
    return value


def _load(path: Path, root: str):
    if path.suffix == ".jsonl":
        return [_clean(json.loads(line), root) for line in path.read_text().splitlines() if line.strip()]
    return _clean(json.loads(path.read_text()), root)


def _files(run: Path) -> dict[str, Path]:
    return {
        str(p.relative_to(run)): p
        for p in sorted(run.rglob("*"))
        if p.is_file() and not p.name.endswith((".lock", ".tmp", ".stage-key"))  # pids, temp files, path hashes
    }


def compare(base: Path, other: Path) -> dict:
    """Per file: identical (after cleaning), differs, missing or extra; and duplicated ids."""
    a, b = _files(base), _files(other)
    result = {"identical": [], "differs": [], "missing": sorted(set(a) - set(b)), "extra": sorted(set(b) - set(a))}
    for rel in sorted(set(a) & set(b)):
        pa, pb = a[rel], b[rel]
        if pa.suffix in (".json", ".jsonl"):
            try:
                same = _load(pa, str(base)) == _load(pb, str(other))
            except ValueError:
                same = False
        elif pa.suffix in (".md", ".html", ".yaml", ".txt", ".log", ".key"):
            same = _mask(pa.read_text(errors="replace"), base) == _mask(pb.read_text(errors="replace"), other)
        else:  # binary: training_args.bin holds the output path
            same = _mask_bytes(pa.read_bytes(), base) == _mask_bytes(pb.read_bytes(), other)
        result["identical" if same else "differs"].append(rel)
    result["duplicated_ids"] = _duplicates(other)
    return result


def _mask_bytes(data: bytes, run: Path) -> bytes:
    return data.replace(str(run).encode(), b"<RUN>").replace(str(run.parent).encode(), b"<RUNS>")


def _mask(text: str, run: Path) -> str:
    text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+\-]\d\d:\d\d", "<TIME>", text)  # "Generated ..." of a report
    return text.replace(str(run), "<RUN>").replace(str(run.parent), "<RUNS>")


def _duplicates(run: Path) -> dict[str, int]:
    found = {}
    for rel, path in _files(run).items():
        if path.suffix != ".jsonl" or "timing" in path.name:
            continue
        rows = map(json.loads, filter(str.strip, path.read_text().splitlines()))
        # A record is one id, or one id in one judge order / round / label.
        ids = [(r["id"], r.get("order"), r.get("round"), r.get("label")) for r in rows if r.get("id") is not None]
        dup = sum(n - 1 for n in Counter(map(str, ids)).values() if n > 1)
        if dup:
            found[rel] = dup
    return found
