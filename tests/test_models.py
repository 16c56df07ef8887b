import json

import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.core.jsonio import InputError
from pipeline.core.models import content_hash, list_models, prepare_alias, resolve_model


def fake_model_dir(path, arch="LlamaForCausalLM"):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"architectures": [arch]}))
    (path / "model.safetensors").write_bytes(b"\0" * 2**20)
    return path


def test_local_directory_is_accepted_as_is(tmp_path):
    model = fake_model_dir(tmp_path / "some-model")
    assert resolve_model(str(model), tmp_path / "store") == model.resolve()


def test_unknown_name_says_how_to_prepare(tmp_path):
    with pytest.raises(InputError, match=r"evol models prepare smollm2-135m"):
        resolve_model("smollm2-135m", tmp_path / "store")
    with pytest.raises(InputError, match=r"--gguf FILE --name llama-7b"):
        resolve_model("llama-7b", tmp_path / "store")


def test_half_prepared_directory_is_not_used(tmp_path):
    fake_model_dir(tmp_path / "store" / "m")  # no evol_model.json: preparation never finished
    with pytest.raises(InputError, match="neither a local model directory nor a prepared model"):
        resolve_model("m", tmp_path / "store")


def test_list_shows_architecture_and_size(tmp_path):
    fake_model_dir(tmp_path / "store" / "a", arch="MistralForCausalLM")
    rows = list_models(tmp_path / "store")
    assert rows[0]["name"] == "a" and rows[0]["architecture"] == "MistralForCausalLM"
    assert rows[0]["size_mb"] > 0


def test_content_hash_follows_content(tmp_path):
    model = fake_model_dir(tmp_path / "m")
    first = content_hash(model, cache_dir=tmp_path)
    assert content_hash(model, cache_dir=tmp_path) == first
    (model / "model.safetensors").write_bytes(b"\1" * 1024)
    assert content_hash(model, cache_dir=tmp_path) != first


def test_cli_errors_are_one_sentence(tmp_path):
    runner = CliRunner()
    result = runner.invoke(
        main,
        ["models", "prepare", "--gguf", str(tmp_path / "nope.gguf"), "--name", "x", "--models-dir", str(tmp_path)],
    )
    assert result.exit_code == 2 and "nope.gguf not found" in result.output
    result = runner.invoke(main, ["models", "prepare", "llama-70b", "--models-dir", str(tmp_path)])
    assert result.exit_code == 2 and "Unknown model alias" in result.output
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": 1, "prompt": "hi"}\n{"id": 1, "prompt": "again"}\n')
    result = runner.invoke(
        main, ["generate", "--model", "smollm2-135m", "--in", str(prompts), "--out", str(tmp_path / "o.jsonl")]
    )
    assert result.exit_code == 2 and "duplicate id" in result.output
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.integration
def test_prepared_smollm2_is_a_plain_hf_directory(tiny_model):
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (tiny_model / name).is_file()
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(tiny_model).chat_template
    again = prepare_alias("smollm2-135m", tiny_model.parent)
    assert again.reused and again.path == tiny_model
