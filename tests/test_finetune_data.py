"""Training data for `evol train`: formats, bad-row counts and the assistant-only loss mask.

Fast: only SmolLM2's tokenizer is loaded, never a model.
"""

import json

import pytest
import torch
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from finetune.data import (
    IGNORE,
    BadRows,
    check_bad_rows,
    load_conversations,
    render_instruction,
    resolve_template,
    tokenize_conversations,
)
from pipeline.core.jsonio import InputError
from tests.conftest import write_lines


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def chat(user, answer, **extra):
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}], **extra}


# ---------------------------------------------------------------- reading and counting bad rows


def test_chat_and_alpaca_formats_load_the_same_conversation(tmp_path):
    chat_file = write_lines(tmp_path / "c.jsonl", [chat("Add 2 and 3.", "5", id="a")])
    alpaca_list = tmp_path / "a.json"
    alpaca_list.write_text(json.dumps([{"instruction": "Add 2 and 3.", "input": "", "output": "5"}]))
    alpaca_lines = write_lines(tmp_path / "a.jsonl", [{"instruction": "Add", "input": "2 and 3.", "output": "5"}])

    rows, bad = load_conversations(chat_file)
    assert bad.bad == 0 and rows[0].id == "a"
    assert rows[0].messages[1] == {"role": "assistant", "content": "5"}
    rows_a, _ = load_conversations(alpaca_list)
    assert rows_a[0].messages == rows[0].messages and rows_a[0].id == "line1"
    rows_b, _ = load_conversations(alpaca_lines)
    assert rows_b[0].messages[0]["content"] == "Add\n\n2 and 3."  # the input follows the instruction


def test_bad_rows_are_counted_by_reason_with_line_numbers(tmp_path):
    path = write_lines(
        tmp_path / "d.jsonl",
        [
            chat("ok?", "fine"),  # 1 good
            {"id": "x", "prompt": "no messages here"},  # 2 missing_messages
            chat("say something", "   "),  # 3 empty_assistant_turn
            "{not json",  # 4 invalid_json
            {"messages": [{"role": "user", "content": "only a question"}]},  # 5 no_assistant_turn
            {"messages": "text"},  # 6 malformed_messages
            chat("again?", "yes"),  # 7 good
            {"messages": [{"role": "robot", "content": "beep"}]},  # 8 malformed_messages
        ],
    )
    rows, bad = load_conversations(path)
    assert [r.line for r in rows] == [1, 7]
    assert bad.total == 8 and bad.bad == 6
    assert dict(bad.counts) == {
        "missing_messages": 1,
        "empty_assistant_turn": 1,
        "invalid_json": 1,
        "no_assistant_turn": 1,
        "malformed_messages": 2,
    }
    assert bad.examples["malformed_messages"] == [6, 8]


def test_rows_longer_than_max_length_are_bad_rows_not_truncated(tmp_path, tokenizer):
    path = write_lines(tmp_path / "d.jsonl", [chat("short", "yes"), chat("long " * 200, "no")])
    rows, bad = load_conversations(path)
    examples = tokenize_conversations(rows, tokenizer, "chat", "### Response:", 64, bad)
    assert len(examples) == 1 and len(examples[0]["input_ids"]) <= 64
    assert dict(bad.counts) == {"too_long": 1} and bad.examples["too_long"] == [2]


def test_bad_row_policy_fail_stops_and_skip_reports(tmp_path):
    bad = BadRows(total=5)
    bad.add("too_long", 3)
    bad.add("missing_messages", 4)
    with pytest.raises(InputError, match=r"2 of 5 rows are bad.*missing_messages: 1 \(line 4\).*on_bad_rows=skip"):
        check_bad_rows(tmp_path / "d.jsonl", bad, kept=3, policy="fail")
    note = check_bad_rows(tmp_path / "d.jsonl", bad, kept=3, policy="skip")
    assert "too_long: 1 (line 3)" in note and "training on 3 rows" in note
    assert check_bad_rows(tmp_path / "d.jsonl", BadRows(total=3), kept=3, policy="fail") is None
    with pytest.raises(InputError, match="no usable training rows"):
        check_bad_rows(tmp_path / "d.jsonl", bad, kept=0, policy="skip")


def test_missing_and_malformed_files_are_named(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_conversations(tmp_path / "nope.jsonl")
    broken = tmp_path / "b.json"
    broken.write_text("[{")
    with pytest.raises(InputError, match=r"b\.json:1: not valid JSON"):
        load_conversations(broken)
    scalar = tmp_path / "s.json"
    scalar.write_text('{"messages": []}')
    with pytest.raises(InputError, match="must hold a list"):
        load_conversations(scalar)


# ---------------------------------------------------------------- the loss mask, checked on collated batches


def labelled_text(tokenizer, batch, row):
    ids, labels = batch["input_ids"][row], batch["labels"][row]
    return tokenizer.decode(ids[labels != IGNORE])


def test_collated_labels_cover_only_the_assistant_turn(tmp_path, tokenizer):
    path = write_lines(
        tmp_path / "d.jsonl",
        [
            chat("What is the capital of France?", "Paris is the capital."),
            chat("Hi", "Hello there, how can I help you today?"),
        ],
    )
    rows, bad = load_conversations(path)
    examples = tokenize_conversations(rows, tokenizer, "chat", "### Response:", 256, bad)
    collator = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)
    batch = collator([{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples])

    assert batch["input_ids"].shape == batch["labels"].shape
    # exactly the answer and the end-of-turn that stops generation; nothing of the prompt
    assert labelled_text(tokenizer, batch, 0) == "Paris is the capital.<|im_end|>\n"
    assert labelled_text(tokenizer, batch, 1) == "Hello there, how can I help you today?<|im_end|>\n"
    prompt = tokenizer.apply_chat_template(rows[0].messages[:1], tokenize=False, add_generation_prompt=True)
    prompt_len = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert (batch["labels"][0, :prompt_len] == IGNORE).all()
    assert (batch["labels"][0, prompt_len : len(examples[0]["input_ids"])] != IGNORE).all()
    # the shorter row is padded, and padding is never a target
    short = 0 if len(examples[0]["input_ids"]) < len(examples[1]["input_ids"]) else 1
    n = len(examples[short]["input_ids"])
    assert (batch["attention_mask"][short, n:] == 0).all() and (batch["labels"][short, n:] == IGNORE).all()


def test_every_assistant_turn_of_a_multi_turn_row_is_trained(tokenizer):
    from finetune.data import Conversation

    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "One?"},
        {"role": "assistant", "content": "1"},
        {"role": "user", "content": "Two?"},
        {"role": "assistant", "content": "2"},
    ]
    examples = tokenize_conversations(
        [Conversation("m", 1, messages)], tokenizer, "chat", "### Response:", 256, BadRows()
    )
    ids, labels = torch.tensor(examples[0]["input_ids"]), torch.tensor(examples[0]["labels"])
    kept = tokenizer.decode(ids[labels != IGNORE])
    assert kept == "1<|im_end|>\n2<|im_end|>\n"
    assert "Be brief" not in kept and "Two?" not in kept


def test_instruction_template_masks_up_to_the_response_marker(tokenizer):
    from finetune.data import Conversation

    messages = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]
    text = render_instruction(messages, "### Response:", tokenizer.eos_token)
    assert text == f"Name a colour.\n\n### Response:\nBlue.{tokenizer.eos_token}"
    examples = tokenize_conversations(
        [Conversation("i", 1, messages)], tokenizer, "instruction", "### Response:", 64, BadRows()
    )
    ids, labels = torch.tensor(examples[0]["input_ids"]), torch.tensor(examples[0]["labels"])
    assert tokenizer.decode(ids[labels != IGNORE]) == f"Blue.{tokenizer.eos_token}"
    assert "### Response:" in tokenizer.decode(ids[labels == IGNORE])


def test_template_choice(tokenizer):
    assert resolve_template(tokenizer, "auto") == "chat"
    assert resolve_template(tokenizer, "instruction") == "instruction"

    class Plain:
        chat_template = None

    assert resolve_template(Plain(), "auto") == "instruction"
    with pytest.raises(InputError, match="no chat template"):
        resolve_template(Plain(), "chat")
