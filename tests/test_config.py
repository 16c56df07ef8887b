from pathlib import Path

import pytest

from pipeline.config import Config, ConfigError, load_config, semantic_dict, stable_hash, to_dict

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


def test_defaults_without_file_are_fresh_for_each_load():
    first = load_config()
    assert first.run.rounds == [0, 1, 2, 3, 4] and first.evolve.operation_weights["in_breadth"] > 0
    first.run.rounds.append(9)  # a caller that edits its config must not change the next one's defaults
    first.evolve.operation_weights["in_breadth"] = 0
    second = load_config()
    assert second.run.rounds == [0, 1, 2, 3, 4] and second.evolve.operation_weights["in_breadth"] > 0


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads_and_opens_with_its_command(path):
    config = load_config(path)
    assert isinstance(config, Config)
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
