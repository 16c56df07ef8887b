"""`evol train` options, hardware checks, resume helpers and the shipped accelerate configs (no model)."""

import json
from pathlib import Path

import pytest
import yaml

from finetune import train as train_module
from finetune.card import trim_metrics
from finetune.train import check_hardware, check_options, last_checkpoint, run_train
from pipeline.config import load_config
from pipeline.core.jsonio import InputError

ROOT = Path(__file__).resolve().parent.parent
ACCELERATE = sorted((ROOT / "configs" / "accelerate").glob("*.yaml"))


@pytest.fixture
def no_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_impossible_option_combinations_name_the_options():
    config = load_config()
    with pytest.raises(InputError, match="--merge.*--method full"):
        check_options(config, "full", merge=True)
    with pytest.raises(InputError, match="method.*'dpo'"):
        check_options(config, "dpo", merge=False)
    with pytest.raises(InputError, match="train.on_bad_rows"):
        check_options(load_config(None, ["train.on_bad_rows=ignore"]), "lora", merge=False)
    with pytest.raises(InputError, match="effective_batch_size \\(8\\).*per_device_train_batch_size \\(3\\)"):
        check_options(load_config(None, ["train.per_device_train_batch_size=3"]), "lora", merge=False)
    check_options(config, "lora", merge=True)


def test_cpu_trains_in_fp32_and_refuses_qlora_and_half_precision(no_cuda):
    assert check_hardware("lora", "auto") == "fp32"
    assert check_hardware("full", "fp32") == "fp32"
    with pytest.raises(InputError, match="qlora needs a CUDA GPU"):
        check_hardware("qlora", "auto")
    with pytest.raises(InputError, match="precision=fp16 needs a CUDA GPU"):
        check_hardware("lora", "fp16")
    with pytest.raises(InputError, match="precision=bf16 needs a CUDA GPU"):
        check_hardware("full", "bf16")


def test_qlora_fails_before_any_model_or_data_is_touched(no_cuda, monkeypatch, tmp_path):
    def must_not_load(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(train_module, "load_model", must_not_load)
    with pytest.raises(InputError, match="qlora"):
        run_train(load_config(), tmp_path / "missing.jsonl", tmp_path / "sft" / "C0", method="qlora")
    assert not (tmp_path / "sft").exists()


def test_bad_rows_with_policy_fail_stop_before_the_model_loads(tiny_model, monkeypatch, tmp_path):
    def must_not_load(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(train_module, "load_model", must_not_load)
    data = tmp_path / "d.jsonl"
    good = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    data.write_text(json.dumps(good) + "\n" + json.dumps({"text": "no messages"}) + "\n")
    config = load_config(None, ["train.on_bad_rows=fail", "train.max_length=64"])
    with pytest.raises(InputError, match=r"1 of 2 rows are bad \(missing_messages: 1 \(line 2\)\)"):
        run_train(config, data, tmp_path / "sft" / "C0", base=str(tiny_model))
    assert not (tmp_path / "sft").exists()


def test_missing_base_model_is_named(tmp_path):
    with pytest.raises(InputError, match="no-such-model"):
        run_train(load_config(), tmp_path / "d.jsonl", tmp_path / "out", base="no-such-model")


def test_last_checkpoint_ignores_a_half_written_one(tmp_path):
    assert last_checkpoint(tmp_path / "checkpoints") is None
    for step, complete in ((2, True), (10, True), (12, False)):
        path = tmp_path / "checkpoints" / f"checkpoint-{step}"
        path.mkdir(parents=True)
        if complete:
            (path / "trainer_state.json").write_text("{}")
    assert last_checkpoint(tmp_path / "checkpoints").name == "checkpoint-10"


def test_resume_cuts_the_metrics_back_to_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 6)) + '{"step": 6, "lo')
    trim_metrics(path, 3)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3]


def test_shipped_configs_carry_the_train_recipe():
    paper = load_config(ROOT / "configs" / "paper-7b.yaml").train
    assert (paper.learning_rate, paper.num_train_epochs, paper.max_length) == (2e-5, 3.0, 2048)
    assert paper.effective_batch_size == 64 and paper.lr_scheduler_type == "cosine" and paper.warmup_ratio > 0
    assert paper.effective_batch_size % paper.per_device_train_batch_size == 0
    tiny = load_config(ROOT / "configs" / "tiny.yaml").train
    assert tiny.method == "lora" and tiny.precision == "auto"


def test_accelerate_configs_exist_for_ddp_deepspeed_and_fsdp():
    assert {p.stem for p in ACCELERATE} >= {"ddp", "deepspeed_zero3", "fsdp"}


@pytest.mark.parametrize("path", ACCELERATE, ids=[p.name for p in ACCELERATE])
def test_accelerate_config_parses_and_opens_with_its_command(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# accelerate launch --config_file configs/accelerate/" + path.name)
    assert " train " in first and "--data " in first and "--out " in first
    data = yaml.safe_load(path.read_text())
    assert data["num_machines"] == 1 and data["num_processes"] >= 2 and data["use_cpu"] is False
    assert data["mixed_precision"] == "bf16"
    expected = {"ddp": "MULTI_GPU", "deepspeed_zero3": "DEEPSPEED", "fsdp": "FSDP"}[path.stem]
    assert data["distributed_type"] == expected
    if expected == "DEEPSPEED":
        assert data["deepspeed_config"]["zero_stage"] == 3
        assert data["deepspeed_config"]["zero3_save_16bit_model"] is True  # a loadable model at the end
    if expected == "FSDP":
        assert data["fsdp_config"]["fsdp_state_dict_type"] == "FULL_STATE_DICT"
        assert data["fsdp_config"]["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"


def test_accelerate_configs_are_accepted_by_accelerate(tmp_path):
    """accelerate's own loader reads each file (the same code `accelerate launch` uses)."""
    from accelerate.commands.config.config_args import load_config_from_file

    for path in ACCELERATE:
        loaded = load_config_from_file(str(path))
        assert loaded.num_processes >= 2
        assert str(loaded.distributed_type).endswith(yaml.safe_load(path.read_text())["distributed_type"])


def test_sft_arguments_follow_the_config_and_the_hardware(no_cuda, tmp_path):
    from finetune.train import sft_args

    config = load_config(ROOT / "configs" / "paper-7b.yaml", ["train.per_device_train_batch_size=8"])
    args = sft_args(config.train, "fp32", 7, tmp_path / "checkpoints")
    assert args.gradient_accumulation_steps == 8  # 64 / (8 x 1 process)
    assert args.learning_rate == 2e-5 and args.num_train_epochs == 3.0 and args.max_length == 2048
    assert args.lr_scheduler_type.value == "cosine" and args.warmup_steps == 0.03
    assert args.bf16 is False and args.fp16 is False  # TRL would default to bf16; CPU trains in fp32
    assert args.gradient_checkpointing is True and args.seed == 7 and args.report_to in ([], "none", ["none"])
    assert args.output_dir == str(tmp_path / "checkpoints")
