"""`evol bundle`: everything a run needs on a machine with no internet, with sha256 checksums.

    evol bundle --config configs/paper-7b.yaml --out /media/usb/evol-bundle     # on a connected machine
    ./run_all.sh --bundle /media/usb/evol-bundle                                # on the air-gapped one

The bundle holds:
  models/<name>/      every model directory the config loads (model_roles: copied, marked as prepared)
  data/seeds.jsonl, data/testset.jsonl, data/ifeval_prompts.jsonl (eval.ifeval_prompts, when set)
  wheels/             every wheel the offline install takes (pipeline/bundle_wheels.py): the whole
                      dependency closure of the variant, the build backend, scripts/no-deps.txt
  config.yaml         the config with model names and data paths pointing inside the bundle
  bundle.json         the variant, Python, platform and glibc it is for, its extras and packages,
                      and the settings whose paths are relative to the bundle
  SHA256SUMS          one line per file; `./run_all.sh --bundle` checks it before installing
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from pipeline.bundle_target import FORMAT, INFO, glibc_needed, this_machine
from pipeline.bundle_wheels import download, environment_variant, resolve, sizes
from pipeline.config import Config, get_setting, model_roles, set_setting, to_yaml
from pipeline.core.jsonio import InputError, atomic_write_text, write_json
from pipeline.core.manifest import file_sha256, git_sha, now
from pipeline.core.models import MARKER, check_chat_roles, resolve_model
from pipeline.core.paths import ROOT, seeds_path, testset_path
from pipeline.engine.factory import backend_extras

CHECKSUMS = "SHA256SUMS"


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


def make_bundle(
    config: Config, out: Path, wheels: bool = True, variant: str | None = None, extras: list[str] | None = None
) -> dict:
    """Copy models, data and wheels into `out` and write bundle.json and the checksums last.

    `variant` (cpu / gpu; default this environment's) and `extras` (default what the config's backend
    needs) choose the wheels; they are resolved before anything is copied, so a resolution that fails
    costs seconds."""
    variant = variant or environment_variant()
    extras = sorted(set(backend_extras(config) if extras is None else extras))
    names, seeds, test, ifeval = _checked_inputs(config)
    closure = resolve(variant, extras) if wheels else []
    out.mkdir(parents=True, exist_ok=True)
    (out / CHECKSUMS).unlink(missing_ok=True)  # an unfinished bundle must not look finished

    bundled = {key: _copy_model(name, config, out / "models") for key, name in names.items()}
    (out / "data").mkdir(exist_ok=True)
    shutil.copyfile(seeds, out / "data" / "seeds.jsonl")
    shutil.copyfile(test, out / "data" / "testset.jsonl")
    if ifeval:
        shutil.copyfile(ifeval, out / "data" / "ifeval_prompts.jsonl")
    harness = _carry_harness(config, out)
    wheel_files = download(closure, out / "wheels") if wheels else []

    # Models by name in the bundle's store; paths relative to the bundle, which bundle.json lists so
    # that run_all.sh --bundle can make them absolute wherever the bundle is on the offline machine.
    for key, name in bundled.items():
        if get_setting(config, key):  # an empty fallback stays empty: it means the same model
            set_setting(config, key, name)
    relative = {"models.dir": "models", "evolve.seeds": "data/seeds.jsonl", "eval.testset": "data/testset.jsonl"}
    if ifeval:
        relative["eval.ifeval_prompts"] = "data/ifeval_prompts.jsonl"
    relative.update({f"eval.harness_{what}": where for what, where in harness.get("paths", {}).items()})
    for key, value in relative.items():
        set_setting(config, key, value)
    atomic_write_text(out / "config.yaml", "# ./run_all.sh --bundle <this directory>\n" + to_yaml(config))
    info = {
        "format": FORMAT,
        "variant": variant,
        **{key: this_machine()[key] for key in ("python", "platform")},
        "glibc": glibc_needed(wheel_files),
        "extras": extras,
        "made": now(),
        "commit": git_sha(),
        "pyproject_sha256": file_sha256(ROOT / "pyproject.toml"),
        "paths": relative,
        "packages": [{k: d[k] for k in ("name", "version", "sha256", "no_deps")} for d in closure],
        "wheels": wheel_files,
    }
    write_json(out / INFO, info)
    files = write_checksums(out)
    return {
        "models": sorted(set(bundled.values())),
        "wheels": len(wheel_files),
        "files": files,
        "harness": harness,
        "variant": variant,
        "bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file()),
    }


def _checked_inputs(config: Config) -> tuple[dict[str, str], Path, Path, Path | None]:
    """(models by config key, seed file, test set, IFEval prompts or None): every one the bundle carries,
    checked before anything is copied."""
    names = model_roles(config)
    for key, name in names.items():
        try:
            resolve_model(name, config.models.dir)
        except InputError as err:
            raise InputError(f"{key}: {err}") from None
    check_chat_roles(names, config.models.dir)  # a bundle the offline machine could not run is refused here
    seeds, test = seeds_path(config.evolve.seeds), testset_path(config.eval.testset, quiet=True)
    # IFEval's prompts when the config names a file (the shipped sample and IFBench's travel in the wheels)
    ifeval = Path(config.eval.ifeval_prompts).expanduser() if "ifeval" in config.eval.verify_sets else None
    ifeval = ifeval if config.eval.ifeval_prompts and ifeval else None
    for what, path in (("evolve.seeds", seeds), ("eval.testset", test), ("eval.ifeval_prompts", ifeval)):
        if path is not None and not path.is_file():
            raise InputError(f"{what}: {path} not found.")
    return names, seeds, test, ifeval


def list_wheels(config: Config, variant: str | None, extras: list[str] | None) -> str:
    """The wheels a bundle of this config would carry, one line each with its size, and the total."""
    variant = variant or environment_variant()
    closure = resolve(variant, sorted(set(backend_extras(config) if extras is None else extras)))
    size = sizes(closure)
    lines = [
        f"{d['name']}=={d['version']}  {_gb(size[d['name']])}{'  (no deps)' if d['no_deps'] else ''}" for d in closure
    ]
    known = sum(s for s in size.values() if s)
    unknown = sum(1 for s in size.values() if not s)
    total = f"{len(closure)} distributions for the {variant} variant, {known / 1e9:.2f} GB to download"
    return "\n".join([*lines, total + (f" ({unknown} of unknown size)" if unknown else "")])


def _gb(size: int | None) -> str:
    return "size unknown" if not size else f"{size / 1e6:.1f} MB"


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
    carried: dict = {"tasks": None, "datasets": [], "missing": [], "paths": {}}
    if include:
        shutil.copytree(include, out / "harness" / "tasks", dirs_exist_ok=True)
        carried["tasks"] = carried["paths"]["include"] = "harness/tasks"
    import datasets.config

    cache = Path(e.harness_datasets_cache or datasets.config.HF_DATASETS_CACHE).expanduser()
    folders, carried["missing"] = cached_datasets(e.harness_tasks, task_manager(include), cache)
    for folder in folders:
        shutil.copytree(folder, out / "harness" / "datasets" / folder.name, dirs_exist_ok=True)
        carried["datasets"].append(folder.name)
    if folders:
        carried["paths"]["datasets_cache"] = "harness/datasets"
    if carried["missing"]:
        print(
            f"[bundle] eval.harness_tasks: no copy of {', '.join(carried['missing'])} in the datasets cache {cache}; "
            f"load it once on this machine (datasets.load_dataset) and bundle again, or the offline run cannot read it.",
            file=sys.stderr,
        )
    return carried
