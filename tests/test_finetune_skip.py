"""A finished fine-tune is recognised from its data file's hash, before any row is read or tokenized;
changed data is read and tokenized again. No training runs here: the finished stage is written by hand."""

import json

import pytest

from finetune import train as train_module
from finetune.data import resolve_template
from finetune.train import run_train, train_key_material
from pipeline.config import load_config
from pipeline.core.manifest import begin_stage, file_sha256, finish_stage
from pipeline.core.models import content_hash

ROW = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}


@pytest.fixture
def no_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_a_finished_train_stage_is_skipped_without_tokenizing(tiny_model, tmp_path, monkeypatch, no_cuda):
    from transformers import AutoTokenizer

    config = load_config(None, ["train.max_length=64"])
    data = tmp_path / "C0.jsonl"
    data.write_text(json.dumps(ROW) + "\n")
    out = tmp_path / "sft" / "C0"
    template = resolve_template(AutoTokenizer.from_pretrained(tiny_model), config.train.template)
    material = train_key_material(config, "lora", template, file_sha256(data), content_hash(tiny_model))
    finish_stage(begin_stage(out.parent, out.name, material), rows={"train_rows": 1, "bad_rows": 0})

    read = []

    def must_not_read(*args, **kwargs):
        read.append(args)
        raise AssertionError("the data was read or tokenized")

    monkeypatch.setattr(train_module, "load_conversations", must_not_read)
    monkeypatch.setattr(train_module, "tokenize_conversations", must_not_read)
    monkeypatch.setattr(train_module, "load_model", must_not_read)
    manifest = run_train(config, data, out, base=str(tiny_model))
    assert manifest["rows"] == {"train_rows": 1, "bad_rows": 0} and not read

    data.write_text(json.dumps(ROW) + "\n" + json.dumps(ROW) + "\n")  # new data: no longer finished
    with pytest.raises(AssertionError, match="read or tokenized"):
        run_train(config, data, out, base=str(tiny_model))
    assert read


def test_missing_training_data_is_named_before_anything_else(tiny_model, tmp_path, no_cuda):
    from pipeline.core.jsonio import InputError

    with pytest.raises(InputError, match="Training data .*missing.jsonl not found"):
        run_train(load_config(), tmp_path / "missing.jsonl", tmp_path / "sft" / "C0", base=str(tiny_model))
    assert not (tmp_path / "sft").exists()
