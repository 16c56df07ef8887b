"""`evol bundle`: everything a run needs on a machine with no internet, with sha256 checksums.

    evol bundle --config configs/paper-7b.yaml --out /media/usb/evol-bundle     # on a connected machine
    ./run_all.sh --bundle /media/usb/evol-bundle                                # on the air-gapped one

The bundle holds:
  models/<name>/      every model directory the config loads (model_roles: copied, marked as prepared)
  data/seeds.jsonl, data/testset.jsonl, data/ifeval_prompts.jsonl (eval.ifeval_prompts, when set)
  wheels/             the Python wheels of this environment (pip download of `pip freeze`) and of
                      this project, so `pip install --no-index` works offline
  config.yaml         the config with model names and data paths pointing inside the bundle
  SHA256SUMS          one line per file; `./run_all.sh --bundle` checks it before installing
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from pipeline.config import Config, model_roles, to_yaml
from pipeline.core.jsonio import InputError, atomic_write_text, write_json
from pipeline.core.manifest import file_sha256
from pipeline.core.models import MARKER, resolve_model
from pipeline.core.paths import ROOT, seeds_path, testset_path

CHECKSUMS = "SHA256SUMS"
# The project itself is built as a wheel separately, not downloaded.
SKIP_PACKAGES = ("evol-local", "evol_local")


def write_checksums(bundle: Path) -> int:
    files = sorted(p for p in bundle.rglob("*") if p.is_file() and p.name != CHECKSUMS)
    lines = [f"{file_sha256(p)}  {p.relative_to(bundle).as_posix()}" for p in files]
    atomic_write_text(bundle / CHECKSUMS, "\n".join(lines) + "\n")
    return len(lines)


def verify_checksums(bundle: Path) -> int:
    """Every listed file must exist with its checksum; the first mismatch is an error naming it."""
    listing = bundle / CHECKSUMS
    if not listing.is_file():
        raise InputError(f"{bundle} is not a bundle: {CHECKSUMS} is missing.")
    count = 0
    for lineno, line in enumerate(listing.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        expected, _, name = line.partition("  ")
        path = bundle / name
        if not path.is_file():
            raise InputError(f"Bundle file {name} is missing ({CHECKSUMS} line {lineno}).")
        if file_sha256(path) != expected:
            raise InputError(f"Bundle file {name} does not match its checksum: the copy is damaged.")
        count += 1
    return count


def _copy_model(name: str, config: Config, target_root: Path) -> str:
    source = resolve_model(name, config.models.dir)
    target = target_root / source.name
    if not target.exists():
        shutil.copytree(source, target)
        if not (target / MARKER).exists():
            write_json(target / MARKER, {"name": source.name, "source": {"bundled_from": str(source)}})
    return source.name


def _download_wheels(wheels: Path) -> int:
    wheels.mkdir(parents=True, exist_ok=True)
    # --all keeps pip and setuptools: an offline install needs the build backend as a wheel too.
    freeze = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--all", "--exclude-editable"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    requirements = [
        line
        for line in freeze
        if line and not line.startswith("#") and line.split("==")[0].lower() not in SKIP_PACKAGES
    ]
    req_file = wheels / "requirements.txt"
    req_file.write_text("\n".join(requirements) + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels), "-r", str(req_file)],
        check=True,
    )
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)], check=True)
    return len(list(wheels.glob("*.whl")))


def make_bundle(config: Config, out: Path, wheels: bool = True) -> dict:
    """Copy models, data and wheels into `out` and write the checksums last."""
    names = model_roles(config)
    for key, name in names.items():  # every model must exist before anything is copied
        try:
            resolve_model(name, config.models.dir)
        except InputError as err:
            raise InputError(f"{key}: {err}") from None
    seeds, test = seeds_path(config.evolve.seeds), testset_path(config.eval.testset, quiet=True)
    # IFEval's prompts when the config names a file (the shipped sample and IFBench's travel in the wheels)
    ifeval = Path(config.eval.ifeval_prompts).expanduser() if "ifeval" in config.eval.verify_sets else None
    ifeval = ifeval if config.eval.ifeval_prompts and ifeval else None
    for what, path in (("evolve.seeds", seeds), ("eval.testset", test), ("eval.ifeval_prompts", ifeval)):
        if path is not None and not path.is_file():
            raise InputError(f"{what}: {path} not found.")
    out.mkdir(parents=True, exist_ok=True)
    (out / CHECKSUMS).unlink(missing_ok=True)  # an unfinished bundle must not look finished

    bundled = {key: _copy_model(name, config, out / "models") for key, name in names.items()}
    (out / "data").mkdir(exist_ok=True)
    shutil.copyfile(seeds, out / "data" / "seeds.jsonl")
    shutil.copyfile(test, out / "data" / "testset.jsonl")
    if ifeval:
        shutil.copyfile(ifeval, out / "data" / "ifeval_prompts.jsonl")
    harness = _carry_harness(config, out)
    wheel_count = _download_wheels(out / "wheels") if wheels else 0

    # Paths in the bundled config are relative to the bundle; run_all.sh --bundle runs from there.
    for key, name in bundled.items():
        section, _, option = key.partition(".")
        if getattr(getattr(config, section), option):  # an empty fallback stays empty: it means the same model
            setattr(getattr(config, section), option, name)
    config.models.dir = "models"
    config.evolve.seeds = "data/seeds.jsonl"
    config.eval.testset = "data/testset.jsonl"
    if ifeval:
        config.eval.ifeval_prompts = "data/ifeval_prompts.jsonl"
    atomic_write_text(out / "config.yaml", "# ./run_all.sh --bundle <this directory>\n" + to_yaml(config))
    files = write_checksums(out)
    return {"models": sorted(set(bundled.values())), "wheels": wheel_count, "files": files, "harness": harness}


def _carry_harness(config: Config, out: Path) -> dict:
    """The lm-eval tasks of eval.harness_tasks, for the offline machine: the folder of local task YAMLs
    (eval.harness_include, with its data files) as harness/tasks, and the Hugging Face datasets cache
    folders of the named built-in tasks as harness/datasets; the bundled config points at both. A
    dataset not in the cache is named on stderr (fill the cache on this machine, then bundle again)."""
    e = config.eval
    if not e.harness_tasks:
        return {}
    from eval.harness.tasks import cached_datasets, include_dir, task_manager

    include = include_dir(e.harness_include)
    carried: dict = {"tasks": None, "datasets": [], "missing": []}
    if include:
        shutil.copytree(include, out / "harness" / "tasks", dirs_exist_ok=True)
        e.harness_include = carried["tasks"] = "harness/tasks"
    import datasets.config

    cache = Path(e.harness_datasets_cache or datasets.config.HF_DATASETS_CACHE).expanduser()
    folders, carried["missing"] = cached_datasets(e.harness_tasks, task_manager(include), cache)
    for folder in folders:
        shutil.copytree(folder, out / "harness" / "datasets" / folder.name, dirs_exist_ok=True)
        carried["datasets"].append(folder.name)
    if folders:
        e.harness_datasets_cache = "harness/datasets"
    if carried["missing"]:
        print(
            f"[bundle] eval.harness_tasks: no copy of {', '.join(carried['missing'])} in the datasets cache {cache}; "
            f"load it once on this machine (datasets.load_dataset) and bundle again, or the offline run cannot read it.",
            file=sys.stderr,
        )
    return carried
