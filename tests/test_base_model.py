"""The paper's recipe: a base model (no chat template) fine-tuned in its training layout and prompted
in that layout everywhere; the conversing roles refuse a base model in one sentence, before any model
loads; a GGUF without a chat template is prepared as a base model.

The rendering tests use SmolLM2's real tokenizer (and a copy of it that adds a BOS token, as LLaMA's
does); the run test fine-tunes the template-less SmolLM2 in full on CPU through every stage."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from finetune.data import ChatEncoder, training_chat_template
from pipeline.cli import main
from pipeline.core.models import CHAT_ROLES, chat_template_of
from pipeline.engine.vllm_backend import render_prompt

ROOT = Path(__file__).resolve().parent.parent
CONVERSATIONS = [
    [{"role": "user", "content": "Name a colour."}],
    [{"role": "system", "content": "  Answer briefly. "}, {"role": "user", "content": "Why is the sky blue?"}],
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a fact about otters."},
    ],
]


@pytest.fixture(scope="module")
def tokenizers(tiny_model, tmp_path_factory):
    """SmolLM2's tokenizer with its template, without (a base model), and without plus a BOS token."""
    from tokenizers import processors
    from transformers import AutoTokenizer

    chat = AutoTokenizer.from_pretrained(tiny_model)
    base = AutoTokenizer.from_pretrained(tiny_model)
    base.chat_template = None
    with_bos = AutoTokenizer.from_pretrained(tiny_model)
    with_bos.chat_template = None
    bos = with_bos.bos_token
    with_bos.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, with_bos.bos_token_id)]
    )
    assert with_bos("x")["input_ids"][0] == with_bos.bos_token_id  # it adds a BOS, as LLaMA's does
    return {"chat": chat, "base": base, "with_bos": with_bos}


def saved(tokenizer, template: str, folder: Path):
    """The tokenizer as a fine-tune saves it beside its weights or adapter, loaded back."""
    from transformers import AutoTokenizer

    tokenizer.chat_template = template
    tokenizer.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


@pytest.mark.parametrize("layout, which", [("instruction", "base"), ("instruction", "with_bos"), ("chat", "chat")])
def test_a_fine_tune_is_prompted_exactly_as_it_was_trained(tokenizers, tmp_path, layout, which):
    """The token ids of an answer prompt equal the training-time rendering of the same question, for
    both layouts, answered with merged weights (the template saved with them) and as an adapter on the
    template-less base (the adapter's template passed with the request)."""
    base = tokenizers[which]
    own = base.chat_template
    marker = "### Response:"
    template = training_chat_template(base, layout, marker)
    merged = saved(base, template, tmp_path / "merged")
    adapter_dir = tmp_path / "adapter"
    saved(base, template, adapter_dir)
    base.chat_template = own
    training = ChatEncoder(base, layout, marker)
    for messages in CONVERSATIONS:
        expected = training.ids(messages, generation_prompt=True)
        assert render_prompt(merged, messages) == expected
        assert render_prompt(base, messages, chat_template_of(adapter_dir)) == expected
    # the full conversation, as trained, is the same text too (answer, then EOS)
    whole = [*CONVERSATIONS[2][:2]]
    rendered = merged.apply_chat_template(whole, tokenize=False)
    assert rendered == training.tok.decode(training.ids(whole, generation_prompt=False), skip_special_tokens=False)


def test_a_base_model_cannot_be_prompted_with_a_conversation(tokenizers):
    with pytest.raises(Exception, match="has no chat template, so it cannot be prompted with a conversation"):
        render_prompt(tokenizers["base"], CONVERSATIONS[0])


def base_model_dir(tmp_path) -> Path:
    model = tmp_path / "store" / "my-base"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    return model


@pytest.mark.parametrize("key", sorted(CHAT_ROLES))
def test_every_conversing_role_refuses_a_base_model_in_evol_run(tmp_path, tiny_model, key):
    base = base_model_dir(tmp_path)
    sets = [f"{key}={base}", f"run.runs_dir={tmp_path / 'runs'}", "analysis.difficulty=true"]
    result = CliRunner().invoke(
        main, ["run", "--config", "configs/tiny.yaml", *(a for s in sets for a in ("--set", s))]
    )
    assert result.exit_code == 2, result.output
    assert f"({key}) is {base}, a base model without a chat template" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()  # refused before anything was written


@pytest.mark.parametrize(
    "command, key",
    [
        (["evolve", "--out", "OUT"], "models.evolver"),
        (["optimize", "--out", "OUT"], "models.evolver"),
        (["judge", "--answers", "A", "--baseline", "B", "--out", "OUT"], "models.judge"),
        (["generate", "--in", "IN", "--out", "OUT/a.jsonl"], "models.evolver"),
        (["serve", "--print"], "models.evolver"),
        (["bundle", "--out", "OUT", "--no-wheels"], "models.evolver"),
    ],
)
def test_every_command_that_would_load_a_conversing_model_refuses_a_base_model(tmp_path, command, key):
    base = base_model_dir(tmp_path)
    (tmp_path / "IN").write_text('{"id": 1, "prompt": "Hi"}\n')
    for folder in ("A", "B"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "answers.jsonl").write_text("")
    args = [
        str(tmp_path / a) if a in ("OUT", "IN", "A", "B") else a.replace("OUT", str(tmp_path / "OUT")) for a in command
    ]
    sets = [f"models.evolver={base}", f"models.judge={base}"]
    result = CliRunner().invoke(main, [*args, *(a for s in sets for a in ("--set", s))])
    assert result.exit_code == 2, result.output
    assert f"({key}) is {base}, a base model without a chat template" in result.output, result.output


def test_serve_serves_a_base_model_for_its_adapters(tmp_path, tiny_base_model):
    """models.base is served for its fine-tunes' adapters: no chat template is asked of it."""
    result = CliRunner().invoke(
        main, ["serve", "--print", "--role", "models.base", "--set", f"models.base={tiny_base_model}"]
    )
    assert result.exit_code == 0, result.output
    assert str(tiny_base_model) in result.output


@pytest.mark.integration
def test_a_gguf_without_a_chat_template_is_prepared_as_a_base_model(tiny_base_model, tmp_path):
    """The built-in base stand-in went through `prepare --gguf`'s path: a GGUF whose chat template was cut
    out (pipeline.core.models.without_chat_template) is accepted and recorded as a base model."""
    marker = json.loads((tiny_base_model / "evol_model.json").read_text())
    assert marker["kind"] == "base" and marker["source"]["gguf"].endswith(".gguf")
    assert chat_template_of(tiny_base_model) is None
    shutil.copy(marker["source"]["gguf"], tmp_path / "plain.gguf")
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "models", "prepare", "--gguf", str(tmp_path / "plain.gguf"), "--name", "b"]
        + ["--models-dir", str(tmp_path / "store")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "a base model without a chat template" in done.stdout
    listed = subprocess.run(
        [sys.executable, "-m", "pipeline", "models", "list", "--json", "--models-dir", str(tmp_path / "store")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert [(row["name"], row["kind"]) for row in json.loads(listed.stdout)] == [("b", "base")]


@pytest.mark.integration
def test_the_paper_recipe_runs_end_to_end_on_a_base_model(tmp_path, tiny_model, tiny_base_model):
    """The tiny run with a template-less SmolLM2 as models.base, fine-tuned in full (template auto:
    the instruction layout), rounds [0, 1]: every stage completes, and C0 and C1 answer the test set
    and the verified prompt sets and are judged, each prompted in the layout it was trained in."""
    from tests.test_run_e2e import overrides

    sets = [*overrides(tmp_path, tiny_model.parent), "--set", f"models.base={tiny_base_model.name}"]
    sets += ["--set", "train.method=full", "--set", "run.name=paper"]
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "--config", "configs/tiny.yaml", *sets],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    run = tmp_path / "runs" / "paper"
    for k in (0, 1):
        label = f"C{k}"
        manifest = json.loads((run / "sft" / label / "manifest.json").read_text())
        assert (manifest["template"], manifest["method"]) == ("instruction", "full")
        template = chat_template_of(run / "sft" / label / "model")
        assert template and "### Response:" in template  # the layout travels with the weights
        answers = [json.loads(line) for line in (run / "answers" / label / "answers.jsonl").read_text().splitlines()]
        assert len(answers) == 3 and all("answer" in a for a in answers)
        for prompts in ("ifeval", "ifbench"):
            assert (run / "verify" / prompts / label / "verify.json").is_file(), (prompts, label)
        assert (run / "judge" / f"{label}__vs__reference" / "judgments.jsonl").is_file()
    assert (run / "judge" / "C1__vs__C0" / "scores.json").is_file()
    assert (run / "report.json").is_file()
