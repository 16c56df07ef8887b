import re
from pathlib import Path

import pytest

from pipeline.config import ConfigError, load_config, semantic_dict, stable_hash, to_dict

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


def test_defaults_without_file_are_fresh_for_each_load():
    first = load_config()
    assert first.run.rounds == [0, 1, 2, 3, 4] and first.evolve.operation_weights["in_breadth"] > 0
    first.run.rounds.append(9)  # a caller that edits its config must not change the next one's defaults
    first.evolve.operation_weights["in_breadth"] = 0
    second = load_config()
    assert second.run.rounds == [0, 1, 2, 3, 4] and second.evolve.operation_weights["in_breadth"] > 0


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads_validates_and_opens_with_its_command(path):
    config = load_config(path)
    config.validate()  # raises on any bad value
    first = path.read_text().splitlines()[0]
    assert first.startswith("# ") and ("run_all.sh" in first or "evol " in first or "accelerate" in first)


def test_yaml_then_set_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("engine:\n  max_tokens: 100\n  temperature: 0.5\nrun:\n  name: x\n")
    config = load_config(path, ["engine.max_tokens=7", "engine.top_p=1", "run.name=abc"])
    assert config.engine.max_tokens == 7
    assert config.engine.temperature == 0.5
    assert config.engine.top_p == 1.0 and isinstance(config.engine.top_p, float)
    assert config.run.name == "abc"


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("engine:\n  max_tokenz: 100\n")
    with pytest.raises(ConfigError, match=r"engine\.max_tokenz"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"'nosection'"):
        load_config(None, ["nosection.x=1"])


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"engine\.max_tokens.*int"):
        load_config(None, ["engine.max_tokens=lots"])
    with pytest.raises(ConfigError, match=r"engine\.enforce_eager"):
        load_config(None, ["engine.enforce_eager=sometimes"])
    with pytest.raises(ConfigError, match=r"'engine'.*section"):
        load_config(None, ["engine=3"])


def test_scientific_notation_floats(tmp_path):
    assert load_config(None, ["engine.temperature=1e-3"]).engine.temperature == 0.001
    path = tmp_path / "c.yaml"
    path.write_text("engine:\n  top_p: 9e-1\n")
    assert load_config(path).engine.top_p == 0.9
    with pytest.raises(ConfigError, match="engine.temperature"):
        load_config(None, ["engine.temperature=warm"])


def test_optional_bool_accepts_null():
    assert load_config(None, ["engine.enforce_eager=null"]).engine.enforce_eager is None
    assert load_config(None, ["engine.enforce_eager=false"]).engine.enforce_eager is False


def test_malformed_override_and_yaml(tmp_path):
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["engine.max_tokens"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("engine: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_throughput_knobs_do_not_change_the_semantic_hash():
    base = stable_hash(semantic_dict(load_config()))
    faster = load_config(None, ["engine.chunk_size=4096", "engine.gpu_memory_utilization=0.9"])
    assert stable_hash(semantic_dict(faster)) == base
    different = load_config(None, ["engine.max_tokens=17"])
    assert stable_hash(semantic_dict(different)) != base
    assert "chunk_size" in to_dict(faster)["engine"]
    assert "chunk_size" not in semantic_dict(faster)["engine"]


# One bad value per line: the override, and the start of the sentence that must name it.
BAD_VALUES = [
    ("run.name=", "run.name must not be empty"),
    ("run.name=a/b", "run.name must be a plain folder name"),
    ("run.rounds=[0,-1]", "run.rounds must be distinct non-negative"),
    ("run.train_processes=0", "run.train_processes must be at least 1, not 0"),
    ("models.base=", "models.base must not be empty"),
    ("models.dir=", "models.dir must not be empty"),
    ("engine.dtype=bf16", "engine.dtype must be one of auto, half, float16, bfloat16, float, float32, not 'bf16'"),
    ("engine.top_p=0", "engine.top_p must lie in (0, 1], not 0.0"),
    ("engine.temperature=-0.5", "engine.temperature must be at least 0, not -0.5"),
    ("engine.gpu_memory_utilization=1.5", "engine.gpu_memory_utilization must lie in (0, 1]"),
    ("engine.kv_cache_gb=0", "engine.kv_cache_gb must be above 0"),
    ("engine.replicas=0", "engine.replicas must be at least 1"),
    ("engine.max_lora_rank=48", "engine.max_lora_rank must be one of 1, 8, 16, 32, 64, 128, 256, 320, 512, not 48"),
    ("evolve.rounds=-1", "evolve.rounds must be at least 0"),
    ("evolve.operation_weights={deepen: -1, in_breadth: 2}", "evolve.operation_weights.deepen must be at least 0"),
    ("evolve.decontam_threshold=0", "evolve.decontam_threshold must lie in (0, 1], not 0.0"),
    ("evolve.answer_max_tokens=0", "evolve.answer_max_tokens must be at least 1, or null"),
    ("train.precision=bf61", "train.precision must be one of auto, fp32, bf16, fp16, not 'bf61'"),
    ("train.lr_scheduler_type=cosin", "train.lr_scheduler_type must be one of linear, cosine"),
    ("train.learning_rate=0", "train.learning_rate must be above 0"),
    ("train.warmup_ratio=1", "train.warmup_ratio must lie in [0, 1), not 1.0"),
    ("train.lora_dropout=-0.1", "train.lora_dropout must lie in [0, 1)"),
    ("train.lora_target_modules=[]", "train.lora_target_modules must name at least one module"),
    ("train.max_length=8", "train.max_length must be at least 16 tokens, not 8"),
    ("train.save_steps=0", "train.save_steps must be at least 1"),
    ("eval.instruction_field=", "eval.instruction_field must not be empty"),
    ("eval.limit=-3", "eval.limit must be at least 0"),
    ("eval.high_difficulty=11", "eval.high_difficulty must lie in [1, 10], not 11"),
    ("eval.answer_top_p=1.2", "eval.answer_top_p must lie in (0, 1]"),
    ("eval.judge_max_tokens=4", "eval.judge_max_tokens must be at least 8"),
    ("analysis.clusters=1", "analysis.clusters must be at least 2"),
    ("analysis.projection=umap", "analysis.projection must be one of tsne, pca, not 'umap'"),
    ("analysis.diversity_per_set=-1", "analysis.diversity_per_set must be at least 0"),
]


@pytest.mark.parametrize("override, message", BAD_VALUES, ids=[o for o, _ in BAD_VALUES])
def test_each_section_names_its_bad_value_in_one_sentence(override, message):
    config = load_config(None, [override])
    section = getattr(config, override.split(".")[0])
    with pytest.raises(ConfigError) as caught:
        section.validate()
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value) and str(caught.value).endswith(".")
    with pytest.raises(ConfigError, match=re.escape(message)):
        config.validate()  # the whole config fails the same way


def test_values_that_only_fail_together_are_checked_across_sections():
    config = load_config(None, ["train.lora_r=128", "engine.max_lora_rank=64"])
    config.train.validate()
    config.engine.validate()  # each section alone is fine
    with pytest.raises(ConfigError, match="train.lora_r is 128 but engine.max_lora_rank is 64"):
        config.validate()
    with pytest.raises(ConfigError, match="train.lora_r"):
        config.validate("engine", "train")
    config.validate("train")  # a lone `evol train` does not start the engine
    load_config(None, ["train.lora_r=128", "engine.max_lora_rank=64", "train.method=full"]).validate()


def test_the_scheduler_list_matches_the_installed_transformers():
    from transformers.trainer_utils import SchedulerType

    from pipeline.config.train import SCHEDULERS

    assert set(SCHEDULERS) <= {s.value for s in SchedulerType}


@pytest.mark.integration
def test_engine_choices_match_the_installed_vllm():
    import typing

    from vllm.config.lora import MaxLoRARanks
    from vllm.config.model import ModelDType

    from pipeline.config import DTYPES, LORA_RANKS

    assert set(DTYPES) == set(typing.get_args(ModelDType))
    assert set(LORA_RANKS) == set(typing.get_args(MaxLoRARanks))


def test_an_empty_config_file_is_an_error_not_the_defaults(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    with pytest.raises(ConfigError, match=r"Config file .*empty.yaml is empty; give it at least one section"):
        load_config(empty)
