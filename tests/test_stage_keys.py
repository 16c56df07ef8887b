"""A changed config value reruns exactly the stages it affects; throughput knobs rerun nothing.

Each stage's cache key is built from the parts of the config its results depend on; these tests
change one value at a time and check which keys move."""

import pytest

from eval.answer import generation_settings
from eval.judge import judge_settings
from evolve_local.inputs import Inputs, key_material
from evolve_local.steps import ModelSet
from finetune.train import train_key_material
from pipeline.config import load_config, stable_hash


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
        ("eval.judge_max_tokens=7", {"judge"}),
        ("train.seed=7", {"train"}),
        ("run.seed=7", {"evolve", "train", "answer", "judge"}),  # training's seed is run.seed unless train.seed
    ],
)
def test_one_change_moves_only_the_keys_of_the_stages_it_affects(override, moved, inputs):
    before = keys(load_config(), inputs)
    after = keys(load_config(None, [override]), inputs)
    assert {stage for stage in before if before[stage] != after[stage]} == moved
