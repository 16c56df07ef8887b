"""A changed config value reruns exactly the stages it affects; throughput knobs rerun nothing.

Each stage's cache key is built from the parts of the config its results depend on; these tests
change one value at a time and check which keys move."""

import dataclasses
from pathlib import Path

import pytest

from eval.analysis.analyze import EvolvedRun, stage_material
from eval.answer import generation_settings
from eval.harness import harness_settings
from eval.judge import judge_settings
from eval.verify.answers import verify_settings
from evolve_local.inputs import Inputs, key_material
from evolve_local.steps import ModelSet
from finetune.train import train_key_material
from pipeline.config import Config, load_config, stable_hash


@pytest.fixture
def inputs(tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text('{"instruction": "Name a colour."}\n')
    return Inputs(seeds, [], "plain", None, [])


MODELS = ModelSet(
    {r: "m" for r in ("evolver", "equality", "responder")},
    {r: "h" for r in ("evolver", "equality", "responder")},
    lambda role: None,
)


def keys(config, inputs):
    return {
        "evolve": stable_hash(key_material(config, inputs, MODELS)),
        "train": stable_hash(train_key_material(config, config.train.method, "chat", "data-sha", "base-hash")),
        "answer": stable_hash(generation_settings(config)),
        "judge": stable_hash(judge_settings(config)),
        "analysis": stable_hash(stage_material(config, EvolvedRun(Path("."), [], [], []), "judge", "embedder")),
        "harness": stable_hash(harness_settings(config)),  # besides the model's and the task files' hashes
        "verify": stable_hash(verify_settings(config, "ifeval")),  # besides the prompt file's path and hash
    }


@pytest.mark.parametrize(
    "override, moved",
    [
        ("engine.chunk_size=999", set()),  # throughput knobs never invalidate
        ("engine.gpu_memory_utilization=0.8", set()),
        ("engine.replicas=4", set()),
        ("engine.backend=ray", set()),
        ("train.per_device_train_batch_size=1", set()),
        ("evolve.overlap_steps=false", set()),
        ("engine.core_process=true", set()),
        ("run.rounds=[0,1,2,3]", set()),  # more rounds continue the same evolution
        ("evolve.dedup_threshold=0.5", {"evolve"}),
        ("train.learning_rate=0.001", {"train"}),
        ("eval.answer_max_tokens=7", {"answer"}),
        ("eval.verify_max_tokens=7", {"verify"}),
        ("eval.verify_sets=[ifbench]", set()),  # which sets run; each set's answers keep their key
        ("eval.judge_max_tokens=7", {"judge"}),
        ("train.seed=7", {"train"}),
        ("analysis.clusters=3", {"analysis"}),
        ("eval.harness_limit=4", {"harness"}),
        ("eval.harness_batch_size=1", set()),
        # training's seed: run.seed unless train.seed
        ("run.seed=7", {"evolve", "train", "answer", "judge", "analysis", "harness", "verify"}),
    ],
)
def test_one_change_moves_only_the_keys_of_the_stages_it_affects(override, moved, inputs):
    before = keys(load_config(), inputs)
    after = keys(load_config(None, [override]), inputs)
    assert {stage for stage in before if before[stage] != after[stage]} == moved


# Every config field that moves each stage's key. A new field, or a field that starts or stops moving a
# key, fails the test below until it is listed here: what a stage's results depend on is a choice made
# on purpose. Fields in no list (throughput knobs, names and paths resolved elsewhere, settings that only
# change how results are counted, such as eval.high_difficulty) rerun nothing.
KEY_FIELDS = {
    "evolve": {
        "run.seed",
        *(f"engine.{f}" for f in ("dtype", "max_model_len", "max_tokens", "temperature", "top_p")),
        *(
            f"evolve.{f}"
            for f in (
                "max_seeds",
                "operation_weights",
                "regenerate_seed_answers",
                "evolution_max_tokens",
                "answer_max_tokens",
                "verdict_max_tokens",
                "constrained_verdict",
                "refusal_max_words",
                "dedup",
                "dedup_threshold",
                "dedup_shingle_chars",
                "minhash_permutations",
                "decontaminate",
                "decontam_ngram",
                "decontam_threshold",
            )
        ),
    },
    "train": {
        "run.seed",
        *(
            f"train.{f}"
            for f in (
                "method",
                "template",
                "response_marker",
                "on_bad_rows",
                "learning_rate",
                "num_train_epochs",
                "max_steps",
                "max_length",
                "effective_batch_size",
                "lr_scheduler_type",
                "warmup_ratio",
                "weight_decay",
                "max_grad_norm",
                "packing",
                "seed",
                "precision",
                "lora_r",
                "lora_alpha",
                "lora_dropout",
                "lora_target_modules",
            )
        ),
    },
    "answer": {
        "run.seed",
        "engine.dtype",
        "engine.max_model_len",
        "eval.answer_max_tokens",
        "eval.answer_temperature",
        "eval.system_prompt",
    },
    "judge": {
        "run.seed",
        "engine.dtype",
        "engine.max_model_len",
        "eval.judge_max_tokens",
        "eval.constrained_judge",
        "eval.use_reference",
        "eval.judge_answer_max_chars",
    },
    "analysis": {
        "run.seed",
        "engine.dtype",
        "engine.max_model_len",
        *(
            f"analysis.{f}"
            for f in (
                "difficulty",
                "difficulty_per_round",
                "difficulty_max_tokens",
                "constrained_difficulty",
                "instruction_max_chars",
                "diversity_per_set",
                "clusters",
                "projection",
            )
        ),
    },
    # eval.ifeval_prompts is a location: the answers' key holds the file found there (path and hash), as the
    # test set's does, built in eval/verify/answers.py beside these settings.
    "verify": {
        "run.seed",
        "engine.dtype",
        "engine.max_model_len",
        "eval.answer_temperature",
        "eval.system_prompt",
        "eval.verify_limit",
        "eval.verify_max_tokens",
    },
    # eval.harness_include and eval.harness_datasets_cache are locations: the key holds the hash of the
    # task files found there, not the path.
    "harness": {
        "run.seed",
        "engine.dtype",
        "engine.max_model_len",
        "eval.system_prompt",
        *(f"eval.harness_{f}" for f in ("tasks", "limit", "chat_template")),
    },
}


def other_value(value):
    """A different value of the same kind (the keys are built from values, not validated here)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, list):
        return [*value, "x"]
    if isinstance(value, dict):
        return {**value, next(iter(value), "x"): 2.5}
    return 1  # None: an optional value set


def every_field():
    default = Config()
    for section in dataclasses.fields(default):
        for field in dataclasses.fields(getattr(default, section.name)):
            yield section.name, field.name


def test_each_stage_key_holds_exactly_the_fields_listed(inputs):
    before = keys(load_config(), inputs)
    moved = {stage: set() for stage in before}
    for section, name in every_field():
        config = Config()
        setattr(getattr(config, section), name, other_value(getattr(getattr(config, section), name)))
        after = keys(config, inputs)
        for stage in before:
            if after[stage] != before[stage]:
                moved[stage].add(f"{section}.{name}")
    assert moved == KEY_FIELDS


def test_counting_settings_are_in_no_key(inputs):
    counting = {"eval.high_difficulty", "eval.single_order_fallback", "eval.bootstrap_resamples"}
    assert not counting & set().union(*KEY_FIELDS.values())
    assert {f"{s}.{n}" for s, n in every_field()} >= counting  # the names are real fields
