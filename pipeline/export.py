"""`evol export`: a finished run's data as a Hugging Face dataset folder that `datasets` loads offline
and that you push with your own tools (nothing is uploaded).

    evol export runs/tiny --out exports/tiny                    # Parquet (default)
    evol export runs/tiny --out exports/tiny --format jsonl --force
    python -c "import datasets; print(datasets.load_dataset('exports/tiny', 'C2'))"

The folder holds, for a run evolved to round M:
  C<k>/train.parquet            data/C<k>.jsonl for k = 0..M: the seeds plus the survivors of rounds
                                1..k, one chat per row (`messages`, what TRL's SFTTrainer takes as is)
                                with its lineage (id, round, root_id, parent_id, operation)
  evolution_tree/train.parquet  every attempt of every round (evolve/round_<k>.jsonl), kept or not,
                                with its equality verdict, answer and the rule that eliminated it
  README.md                     the dataset card: the Hub's YAML header (one config per C<k> and the
                                tree, features, sizes; the license left to you) and the run's provenance
  export.json                   the files written with their sha256; `--force` replaces only those
README.md is written last: a folder without it holds an unfinished export.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core.chat import messages_problem
from pipeline.core.jsonio import (
    InputError,
    atomic_open,
    atomic_write_text,
    iter_jsonl,
    read_json,
    read_text_file,
    write_json,
)
from pipeline.core.manifest import file_sha256, now
from pipeline.core.paths import RunDir
from pipeline.core.records import RoundRecord, elimination_match, iter_attempts, round_files
from pipeline.export_card import dataset_card

FORMATS = ("parquet", "jsonl")
TREE = "evolution_tree"
LISTING = "export.json"
CARD = "README.md"
BATCH_ROWS = 10_000  # rows per Parquet row group and per Arrow conversion: memory stays flat at 52K seeds

# The columns of the tree config besides RoundRecord's own (tokens and sampling seeds stay in the run).
TREE_FIELDS = (
    "id",
    "parent_id",
    "root_id",
    "round",
    "operation",
    "instruction",
    "response",
    "status",
    "kept",
    "elimination_rule",
    "elimination_detail",
    "elimination_match",
    "verdict",
    "verdict_text",
    "evolver_model",
    "equality_model",
    "responder_model",
    "answer_finish_reason",
)


def training_features():
    """The declared schema of a C<k> config: RoundRecord.training_row()'s keys."""
    from datasets import Features, List, Value

    return Features(
        {
            "id": Value("string"),
            "messages": List({"role": Value("string"), "content": Value("string")}),
            "round": Value("int64"),
            "root_id": Value("string"),
            "parent_id": Value("string"),
            "operation": Value("string"),
        }
    )


def tree_features():
    from datasets import Features, Value

    types = {"round": Value("int64"), "kept": Value("bool")}
    return Features({name: types.get(name, Value("string")) for name in TREE_FIELDS})


def tree_row(record: RoundRecord) -> dict:
    extra = {"kept": record.kept, "elimination_match": elimination_match(record)}
    return {name: extra[name] if name in extra else getattr(record, name) for name in TREE_FIELDS}


@dataclass
class RunData:
    """What an export reads from a finished run directory."""

    run_dir: Path
    sets: list[Path]  # data/C<k>.jsonl, k = 0..rounds_done
    stats: dict  # evolve/stats.json
    evolve_manifest: dict
    run_manifest: dict = field(default_factory=dict)  # runs/<name>/manifest.json (absent for a bare evolve)
    config_yaml: str = ""  # the run's resolved config
    config_source: str = ""


def read_run(run_dir: str | Path) -> RunData:
    """The run's files, or one sentence saying why this folder cannot be exported."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: no such run directory.")
    run = RunDir(run_dir)
    if not run.data(0).is_file() or not round_files(run_dir):
        raise InputError(
            f"{run_dir} is not a run directory: it has no data/C<k>.jsonl and evolve/round_<k>.jsonl; "
            f"give the folder `evol run` or `evol evolve --out` wrote (runs/<name>)."
        )
    if not run.evolve_manifest.is_file() or not run.evolve_stats.is_file():
        raise InputError(
            f"{run_dir}: the evolution has not finished (evolve/manifest.json or evolve/stats.json is missing); "
            f"export it once `evol evolve` has ended."
        )
    stats, manifest = read_json(run.evolve_stats), read_json(run.evolve_manifest)
    last = stats.get("rounds_done")
    if not isinstance(last, int) or last < 0 or len(round_files(run_dir, last)) != last + 1:
        raise InputError(
            f"{run.evolve_stats}: rounds_done is {last!r} but evolve/round_0.jsonl..round_{last}.jsonl are not "
            f"all there; not a finished `evol evolve` run."
        )
    sets = [run.data(k) for k in range(last + 1)]
    expected = manifest.get("rows") or {}
    for k, path in enumerate(sets):
        if not path.is_file():
            raise InputError(
                f"{path} is missing: the evolution wrote it; restore the run's own file before exporting."
            )
        lines = _count_lines(path)
        if f"C{k}" in expected and expected[f"C{k}"] != lines:
            raise InputError(
                f"{path} has {lines} rows but evolve/manifest.json says {expected[f'C{k}']}: it was changed after "
                f"the evolution wrote it; restore the run's own file before exporting."
            )
    data = RunData(run_dir, sets, stats, manifest)
    if run.manifest.is_file():
        data.run_manifest = read_json(run.manifest)
    if run.config.is_file():
        data.config_yaml, data.config_source = read_text_file(run.config), "config.yaml"
    else:
        import yaml

        data.config_yaml = yaml.safe_dump(manifest.get("config") or {}, sort_keys=False, allow_unicode=True)
        data.config_source = "evolve/manifest.json"
    return data


def _count_lines(path: Path) -> int:
    with path.open("rb") as handle:
        return sum(1 for line in handle if line.strip())


def training_rows(path: Path) -> Iterator[dict]:
    """data/C<k>.jsonl as the C<k> config's rows; a row that is not a chat names its file and line."""
    names = list(training_features())
    for lineno, row in iter_jsonl(path):
        problem = messages_problem(row.get("messages"))
        if problem or not isinstance(row.get("id"), str):
            raise InputError(f"{path}:{lineno}: {problem or 'no string id'}; not a C<k> training row.")
        yield {name: row.get(name) for name in names}


# ---------------------------------------------------------------- writing one config


def _batches(rows: Iterable[dict], size: int) -> Iterator[list[dict]]:
    batch = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def write_config(path: Path, rows: Iterable[dict], features, fmt: str, source: str) -> dict:
    """Write one config's rows as Parquet (with the declared schema in its metadata) or JSONL;
    returns its row count, in-memory Arrow bytes (the card's num_bytes) and file size."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = features.arrow_schema
    count = num_bytes = 0
    with ExitStack() as stack:
        # the file appears, synced, only once complete (the Parquet writer closes first: its footer goes in)
        handle = stack.enter_context(atomic_open(path, binary=fmt == "parquet"))
        parquet = stack.enter_context(pq.ParquetWriter(handle, schema)) if fmt == "parquet" else None
        for batch in _batches(rows, BATCH_ROWS):
            try:
                table = pa.Table.from_pylist(batch, schema=schema)
            except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
                raise InputError(f"{source}: a row does not fit the declared column types ({err}).") from None
            count, num_bytes = count + len(batch), num_bytes + table.nbytes
            if parquet:
                parquet.write_table(table, row_group_size=BATCH_ROWS)
            else:
                handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in batch)
    return {"rows": count, "num_bytes": num_bytes, "file_bytes": path.stat().st_size}


# ---------------------------------------------------------------- the folder


def check_out(out: Path, run_dir: Path, force: bool) -> list[str]:
    """Refuse an --out that would mix with other files; returns the files of an earlier export there."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; give a folder for the dataset.")
    if out.resolve() == run_dir.resolve():
        raise InputError(f"--out {out} is the run directory itself; give another folder for the dataset.")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise InputError(
            f"--out {out} is not empty; give a new or empty folder, or add --force to replace an earlier "
            f"export there (only the files an export writes are replaced, nothing else is deleted)."
        )
    listing = out / LISTING
    if force and listing.is_file():
        try:
            return [str(name) for name in read_json(listing).get("files", [])]
        except (InputError, AttributeError):
            return []  # not ours after all: remove nothing
    return []


def export_run(run_dir: str | Path, out: str | Path, fmt: str = "parquet", force: bool = False) -> dict:
    """Write the dataset folder; returns {config: {rows, num_bytes, file_bytes, path}} and the total size."""
    if fmt not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}.")
    run_dir, out = Path(run_dir), Path(out)
    run = read_run(run_dir)
    previous = check_out(out, run_dir, force)
    out.mkdir(parents=True, exist_ok=True)
    (out / CARD).unlink(missing_ok=True)  # the completion marker goes first and comes back last

    # ---- the C<k> configs, then the tree
    configs: dict[str, dict] = {}
    for k, path in enumerate(run.sets):
        target = out / f"C{k}" / f"train.{fmt}"
        features = training_features()
        configs[f"C{k}"] = write_config(target, training_rows(path), features, fmt, str(path))
        configs[f"C{k}"].update(path=target.relative_to(out).as_posix(), features=features, tree=False)
    target, features = out / TREE / f"train.{fmt}", tree_features()
    rows = (tree_row(record) for record in iter_attempts(run_dir, len(run.sets) - 1))
    configs[TREE] = write_config(target, rows, features, fmt, f"{run_dir}/evolve/round_<k>.jsonl")
    configs[TREE].update(path=target.relative_to(out).as_posix(), features=features, tree=True)

    # ---- files of an earlier export that this one did not rewrite (another format, more rounds)
    written = {c["path"] for c in configs.values()} | {CARD, LISTING}
    for name in sorted(set(previous) - written):
        stale = out / name
        if stale.is_file() and stale.resolve().is_relative_to(out.resolve()):
            stale.unlink()
            if stale.parent != out and not any(stale.parent.iterdir()):
                shutil.rmtree(stale.parent)

    # ---- the listing, then the card last
    write_json(
        out / LISTING,
        {
            "run_dir": str(run_dir.resolve()),
            "exported": now(),
            "format": fmt,
            "configs": {name: {k: c[k] for k in ("path", "rows", "file_bytes")} for name, c in configs.items()},
            "files": sorted(written),
            "sha256": {c["path"]: file_sha256(out / c["path"]) for c in configs.values()},
        },
    )
    atomic_write_text(out / CARD, dataset_card(run, configs, fmt))
    total = sum((out / name).stat().st_size for name in written)
    return {"configs": configs, "bytes": total, "out": str(out)}
