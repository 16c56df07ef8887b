"""Every model answers the verifiable prompt sets through the answer path of the test set, and each
label's answers are checked by code right after.

    sets = verify_sets(config, Path("runs/tiny/verify"))       # eval.verify_sets, eval.verify_limit
    evol answer --model runs/tiny/sft/C1/merged --label C1 --out runs/tiny/answers --verify-out runs/tiny/verify

Writes, per set and label, `<verify-out>/<set>/<label>/`: answers.jsonl (`id` = the prompt's key,
`prompt`, `text` and the generation's fields) and manifest.json, as a stage of its own (a finished
label is skipped, an interrupted one resumes), then checks.jsonl (one line per prompt: followed or
not, per instruction, strict and loose) and verify.json (eval/verify/scores.py). The checks are
rewritten from the answers every time the stage command runs: they take seconds and follow the
checker code installed now.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from eval.answer import AnswerSet, generation_settings
from eval.verify.checkers import Checker, VerifyPrompt
from eval.verify.prompts import load_set
from eval.verify.scores import check_answers, score
from pipeline.config import Config
from pipeline.core.jsonio import read_jsonl, write_json, write_jsonl
from pipeline.core.manifest import file_hash
from pipeline.core.seeds import derive_seed
from pipeline.core.testset import TestItem

CHECKS_FILE = "checks.jsonl"
VERIFY_FILE = "verify.json"


@dataclass
class VerifySet:
    answers: AnswerSet
    prompts: list[VerifyPrompt]
    checker: Checker


def verify_settings(config: Config, name: str) -> dict:
    """What a set's answers depend on besides the model and the prompt file's content (its stage key
    also holds the file's path, hash and prompt count)."""
    generation = {**generation_settings(config), "max_tokens": config.eval.verify_max_tokens}
    return {"set": name, "limit": config.eval.verify_limit, "generation": generation}


def verify_sets(config: Config, out_dir: Path) -> list[VerifySet]:
    """The configured prompt sets, read and checked, each an AnswerSet writing under out_dir/<set>."""
    out = []
    for name in config.eval.verify_sets:
        path, prompts, checker = load_set(name, config.eval)
        items = [TestItem(id=p.key, instruction=p.prompt, category=p.instruction_id_list[0]) for p in prompts]
        key = verify_settings(config, name)
        prompts_key = {
            "set": name,
            "path": str(path),
            "hash": file_hash(path),
            "items": len(items),
            "limit": key["limit"],
        }
        answers = AnswerSet(name, items, out_dir / name, {"prompts": prompts_key}, key["generation"], _record)
        out.append(VerifySet(answers, prompts, checker))
    return out


def _record(item: TestItem, text: str) -> dict:
    return {"id": item.id, "prompt": item.instruction, "text": text}


def write_checks(config: Config, verify: VerifySet) -> dict[str, dict]:
    """checks.jsonl and verify.json for every label of the set whose answers are complete."""
    results = {}
    name = verify.answers.name
    for job in verify.answers.jobs:
        answers = read_jsonl(job.path)
        checks = check_answers(verify.prompts, verify.checker, answers, str(job.path), config.run.seed)
        write_jsonl(job.stage.dir / CHECKS_FILE, [c.to_dict() for c in checks])
        seed = derive_seed(config.run.seed, "verify", name)  # one seed per set: paired draws across labels
        result = {"set": name, "label": job.label, **score(checks, name, config.eval.bootstrap_resamples, seed)}
        write_json(job.stage.dir / VERIFY_FILE, result)
        results[job.label] = result
    return results
