"""Which lm-eval tasks a config names, where their YAMLs and data live, and what the cache key holds.

    manager = task_manager(config.eval.harness_include)        # lm-eval's index (~7 s, no network)
    check_tasks(config.eval.harness_tasks, manager, include)    # one sentence for an unknown name
    with from_include_dir(include): lm_eval.simple_evaluate(...) # relative data_files resolve there

A task is named as lm-eval names it: a built-in one (gsm8k, reads the local datasets cache) or one of
the YAMLs in `eval.harness_include`, lm-eval's include_path, whose relative `data_files` are read from
that directory (tests/fixtures/harness/evol_arith.yaml is an example).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from pipeline.core.jsonio import InputError
from pipeline.core.manifest import file_sha256


def include_dir(configured: str) -> Path | None:
    """eval.harness_include as an absolute directory (None: no local tasks); missing is an error."""
    if not configured:
        return None
    path = Path(configured).expanduser().resolve()
    if not path.is_dir():
        raise InputError(
            f"eval.harness_include {configured!r} is not a directory; give the folder that holds your "
            f"lm-eval task YAMLs, or leave it empty."
        )
    return path


def task_manager(include: Path | None, defaults: bool = True):
    """lm-eval's task index over its built-in tasks (`defaults`) and the include directory."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(include) if include else None, include_defaults=defaults)


def check_tasks(names: list[str], manager, include: Path | None) -> None:
    """Every name is a task, group or tag lm-eval knows; else one sentence naming the unknown ones."""
    if not names:
        raise InputError("No lm-eval task to run: set eval.harness_tasks, e.g. --set eval.harness_tasks=[gsm8k].")
    unknown = [name for name in names if name not in manager.task_index]
    if unknown:
        where = f"lm-eval's built-in tasks or {include}" if include else "lm-eval's built-in tasks"
        raise InputError(
            f"eval.harness_tasks: {', '.join(unknown)} {'is not a task' if len(unknown) == 1 else 'are not tasks'} "
            f"in {where}; check the name "
            f"(`lm-eval ls tasks` lists them), or put its YAML in the folder eval.harness_include names."
        )


def tree_hash(root: Path | None) -> str | None:
    """sha256 over every file under `root` (task YAMLs, their data, helper modules); None for no dir."""
    if root is None or not root.is_dir():
        return None
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + file_sha256(path).encode())
    return digest.hexdigest()[:16]


def task_material(names: list[str], manager, include: Path | None) -> dict:
    """What the results depend on besides the model: each named task's YAML and the include folder."""
    yamls = {}
    for name in names:
        entry = manager.task_index.get(name)
        path = getattr(entry, "yaml_path", None)
        yamls[name] = file_sha256(path)[:16] if path and Path(path).is_file() else None
    return {"tasks": list(names), "yaml": yamls, "include": tree_hash(include)}


@contextlib.contextmanager
def from_include_dir(include: Path | None) -> Iterator[None]:
    """Run lm-eval from the include directory, so a task's relative data_files are read beside its YAML."""
    if include is None:
        yield
        return
    before = Path.cwd()
    os.chdir(include)
    try:
        yield
    finally:
        os.chdir(before)


def use_datasets_cache(configured: str) -> Path | None:
    """Read named tasks' data from this Hugging Face datasets cache (eval.harness_datasets_cache).

    Set both ways: the environment for what imports datasets later, and datasets' own setting, which
    it read once at import (a stage forked from `evol run`'s warm interpreter has imported it)."""
    if not configured:
        return None
    path = Path(configured).expanduser().resolve()
    if not path.is_dir():
        raise InputError(
            f"eval.harness_datasets_cache {configured!r} is not a directory; give a Hugging Face datasets "
            f"cache (such as the one `evol bundle` carries), or leave it empty."
        )
    os.environ["HF_DATASETS_CACHE"] = str(path)
    import datasets.config

    datasets.config.HF_DATASETS_CACHE = path
    return path


def dataset_paths(names: list[str], manager) -> list[str]:
    """The Hugging Face dataset paths (openai/gsm8k) the named tasks read, through groups and tags;
    packaged loaders of local files (json, csv, ...) are left out: their files travel with the YAMLs."""
    index, seen, found = manager.task_index, set(), []

    def visit(name: str) -> None:
        if name in seen or name not in index:
            return
        seen.add(name)
        entry = index[name]
        cfg = entry.cfg or {}
        path = cfg.get("dataset_path")
        if isinstance(path, str) and path not in LOCAL_LOADERS and path not in found:
            found.append(path)
        children = cfg.get("task") if isinstance(cfg.get("task"), list) else []
        if entry.kind.name == "TAG":  # a tag names the tasks that carry it
            children += [other for other, e in index.items() if name in (e.tags or ()) and other != name]
        for child in children:
            visit(child if isinstance(child, str) else (child or {}).get("task", ""))

    for name in names:
        visit(name)
    return found


LOCAL_LOADERS = ("json", "csv", "parquet", "text", "arrow", "pandas")


def cached_datasets(names: list[str], manager, cache: Path) -> tuple[list[Path], list[str]]:
    """(cache folders of the datasets the tasks read, dataset paths with no folder in `cache`)."""
    folders, missing = [], []
    for path in dataset_paths(names, manager):
        folder = cache / path.replace("/", "___")
        (folders.append(folder) if folder.is_dir() else missing.append(path))
    return folders, missing
