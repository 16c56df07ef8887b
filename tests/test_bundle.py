"""The air-gapped bundle round trip at a small scale: models + data, checksums, offline install check."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline.bundle import make_bundle, verify_checksums
from pipeline.config import load_config, model_roles
from pipeline.core.jsonio import InputError
from pipeline.core.models import resolve_model

ROOT = Path(__file__).resolve().parent.parent


def small_store(tmp_path):
    model = tmp_path / "store" / "tiny-llama"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (model / "model.safetensors").write_bytes(os.urandom(4096))
    return model


def bundle_config(tmp_path, model):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text('{"instruction": "Name a colour."}\n')
    test = tmp_path / "test.jsonl"
    test.write_text('{"idx": 1, "Skill": "x", "Difficulty": 1, "Instruction": "Say hi."}\n')
    return load_config(
        None,
        [
            f"models.evolver={model}",
            f"models.base={model}",
            f"models.judge={model}",
            f"evolve.seeds={seeds}",
            f"eval.testset={test}",
        ],
    )


def test_bundle_round_trip_and_damage_is_named(tmp_path):
    model = small_store(tmp_path)
    out = tmp_path / "bundle"
    summary = make_bundle(bundle_config(tmp_path, model), out, wheels=False)
    assert summary["models"] == ["tiny-llama"]
    assert verify_checksums(out) == summary["files"]
    # the bundled config finds its models by name inside the bundle, as run_all.sh --bundle does
    bundled = load_config(out / "config.yaml")
    assert resolve_model(bundled.models.base, out / "models") == (out / "models" / "tiny-llama").resolve()
    assert (out / "data" / "seeds.jsonl").read_text() == '{"instruction": "Name a colour."}\n'

    (out / "models" / "tiny-llama" / "model.safetensors").write_bytes(b"tampered")
    with pytest.raises(InputError, match=r"models/tiny-llama/model\.safetensors does not match its checksum"):
        verify_checksums(out)
    # the shell side (run_all.sh --bundle) refuses it before installing anything, naming the file
    check = subprocess.run(
        ["bash", str(ROOT / "scripts" / "bootstrap.sh")],
        capture_output=True,
        text=True,
        env={**os.environ, "EVOL_BUNDLE": str(out)},
    )
    assert check.returncode == 2
    assert "models/tiny-llama/model.safetensors" in check.stderr and "damaged" in check.stderr


def test_bundle_carries_every_model_the_config_loads(tmp_path):
    """A separate equality model and difficulty judge are copied too, and the bundled config finds
    every model of model_roles inside the bundle (they were left out when the bundle listed models by hand)."""
    model = small_store(tmp_path)
    roles = {"evolve.equality_model": "equality-model", "analysis.judge_model": "rating-judge"}
    others = {}
    for key, name in roles.items():
        others[key] = tmp_path / "store" / name
        shutil.copytree(model, others[key])
    config = bundle_config(tmp_path, model)
    config.evolve.equality_model, config.analysis.judge_model = map(str, others.values())
    out = tmp_path / "bundle"
    summary = make_bundle(config, out, wheels=False)
    assert summary["models"] == ["equality-model", "rating-judge", "tiny-llama"]
    bundled = load_config(out / "config.yaml")
    assert bundled.evolve.equality_model == "equality-model" and bundled.analysis.judge_model == "rating-judge"
    assert bundled.models.responder == ""  # an empty fallback stays a fallback
    for key, name in model_roles(bundled).items():
        expected = others.get(key, model).name
        assert resolve_model(name, out / "models") == (out / "models" / expected).resolve(), key


def test_missing_model_is_refused_before_copying(tmp_path):
    config = bundle_config(tmp_path, tmp_path / "nowhere")
    with pytest.raises(InputError, match="models.evolver"):
        make_bundle(config, tmp_path / "bundle", wheels=False)
    assert not (tmp_path / "bundle").exists()


def test_wheels_install_with_no_index(tmp_path):
    """The project's own wheel from a bundle installs into a fresh venv with no index."""
    wheels = tmp_path / "wheels"
    subprocess.run(
        [os.sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)], check=True
    )
    subprocess.run([os.sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True)
    target = tmp_path / "site"
    subprocess.run(
        [
            os.sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--find-links",
            str(wheels),
            "--target",
            str(target),
            "evol-local",
        ],
        check=True,
    )
    assert (target / "pipeline" / "cli" / "__init__.py").is_file()
    assert (target / "benchmarks" / "bench.py").is_file() and (target / "pipeline" / "engine" / "types.py").is_file()
    assert (target / "evolve_local" / "data" / "seeds.jsonl").is_file() or not (
        ROOT / "evolve_local" / "data" / "seeds.jsonl"
    ).exists()


def test_bundle_carries_the_ifeval_prompts_file(tmp_path):
    model = small_store(tmp_path)
    config = bundle_config(tmp_path, model)
    prompts = tmp_path / "my_ifeval.jsonl"
    prompts.write_text(
        '{"key": 1, "prompt": "Hi.", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}\n'
    )
    config.eval.ifeval_prompts = str(tmp_path / "missing.jsonl")
    with pytest.raises(InputError, match=r"eval.ifeval_prompts: .*missing.jsonl not found"):
        make_bundle(config, tmp_path / "refused", wheels=False)
    config.eval.ifeval_prompts = str(prompts)
    out = tmp_path / "bundle"
    make_bundle(config, out, wheels=False)
    bundled = load_config(out / "config.yaml")
    assert bundled.eval.ifeval_prompts == "data/ifeval_prompts.jsonl"
    assert (out / bundled.eval.ifeval_prompts).read_text() == prompts.read_text()
    assert "data/ifeval_prompts.jsonl" in (out / "SHA256SUMS").read_text()
