"""Training data for SFT: read, validate, and tokenize with the loss on the assistant's tokens only.

    evol train --config configs/tiny.yaml --data runs/tiny/data/C1.jsonl --out runs/tiny/sft/C1

Reads (columns):
  chat JSONL       {"id"?, "messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}
  Alpaca JSON/L    {"instruction": str, "input"?: str, "output": str}
  (either as JSONL or as one JSON array: pipeline.core.jsonio.iter_records)
Writes: a list of {"id", "input_ids", "labels"} where labels are -100 on every token the model
only reads (system prompt, user turns, template scaffolding) and the token id on every token it
must learn to write (each assistant turn, including its end-of-turn token, so it learns to stop).

Masking is done here, not by TRL, because SmolLM2's chat template (like most) carries no
{% generation %} markers for `assistant_only_loss`, and TRL's prompt-completion format trains only
one completion per row. We render the conversation up to each assistant turn with the template
and label exactly the tokens that the assistant turn adds. SFTTrainer keeps a given `labels`
column as is (trl/trainer/sft_trainer.py, "A dataset that already provides a labels column").

Bad rows are counted by reason, never silently dropped: `train.on_bad_rows=skip` reports and
drops them, `fail` stops with the counts before any model loads.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core.chat import messages_problem
from pipeline.core.jsonio import InputError, check_file, iter_records

IGNORE = -100  # the label PyTorch's cross-entropy skips


@dataclass
class BadRows:
    total: int = 0
    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[int]] = field(default_factory=dict)  # reason -> first line numbers

    def add(self, reason: str, line: int) -> None:
        self.counts[reason] += 1
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < 3:
            self.examples[reason].append(line)

    @property
    def bad(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        parts = [
            f"{reason}: {n} (line {', '.join(str(x) for x in self.examples[reason])}"
            f"{', ...' if n > len(self.examples[reason]) else ''})"
            for reason, n in sorted(self.counts.items())
        ]
        return "; ".join(parts)

    def as_dict(self) -> dict:
        return {
            "rows": self.total,
            "bad": self.bad,
            "by_reason": dict(sorted(self.counts.items())),
            "first_lines": self.examples,
        }


@dataclass
class Conversation:
    id: str
    line: int
    messages: list[dict]


# ---------------------------------------------------------------- reading and validating


def _to_messages(record: dict) -> tuple[list | None, str | None]:
    """The record as chat messages, or (None, reason) when it cannot be one."""
    if "messages" in record:
        messages = record["messages"]
        if messages_problem(messages):
            return None, "malformed_messages"
        return [{"role": m["role"], "content": m["content"]} for m in messages], None
    if "instruction" in record or "output" in record:  # Alpaca
        instruction, extra, output = record.get("instruction"), record.get("input") or "", record.get("output")
        if not isinstance(instruction, str) or not isinstance(output, str) or not isinstance(extra, str):
            return None, "malformed_alpaca"
        prompt = instruction.strip() + (f"\n\n{extra.strip()}" if extra.strip() else "")
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}], None
    return None, "missing_messages"


def _problem(messages: list[dict]) -> str | None:
    roles = [m["role"] for m in messages]
    if "assistant" not in roles:
        return "no_assistant_turn"
    if roles[-1] != "assistant":
        return "does_not_end_with_assistant"  # a trailing question would be read but never answered
    if any(m["role"] == "assistant" and not m["content"].strip() for m in messages):
        return "empty_assistant_turn"
    if any(m["role"] == "user" and not m["content"].strip() for m in messages):
        return "empty_user_turn"
    return None


def load_conversations(path: str | Path) -> tuple[list[Conversation], BadRows]:
    """Every row of a chat JSONL or Alpaca JSON/JSONL file, with the bad ones counted by reason."""
    path = Path(path)
    if path.is_dir():
        check_file(path)
    if not path.is_file():
        raise InputError(
            f"Training data {path} not found; pass --data with a chat-messages JSONL "
            f"(runs/<name>/data/C<k>.jsonl) or an Alpaca JSON/JSONL file."
        )
    bad = BadRows()
    rows: list[Conversation] = []

    def unreadable(line: int, reason: str) -> None:  # a line that is not JSON, or not an object
        bad.total += 1
        bad.add(reason, line)

    for line, record in iter_records(path, on_bad=unreadable):
        bad.total += 1
        messages, reason = _to_messages(record)
        reason = reason or _problem(messages)
        if reason:
            bad.add(reason, line)
            continue
        rows.append(Conversation(str(record.get("id", f"line{line}")), line, messages))
    return rows, bad


# ---------------------------------------------------------------- templates and masking


def resolve_template(tokenizer, choice: str) -> str:
    """`chat` or `instruction`; `auto` picks the chat template when the tokenizer ships one."""
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    if choice == "auto":
        return "chat" if has_chat else "instruction"
    if choice == "chat" and not has_chat:
        raise InputError(
            "train.template=chat, but the base model's tokenizer has no chat template; "
            "set train.template=instruction (or auto)."
        )
    return choice


def render_instruction(messages: list[dict], marker: str, eos: str) -> str:
    """The plain instruction/response layout for base models without a chat template.

    Each user turn is followed by the response marker on its own line; each assistant turn ends
    with EOS. Evaluation must prompt such a model with this same layout (the marker is recorded
    in the model card and manifest).
    """
    text = ""
    for message in messages:
        if message["role"] == "system":
            text += message["content"].strip() + "\n\n"
        elif message["role"] == "user":
            text += ("\n\n" if text and not text.endswith("\n\n") else "") + message["content"] + f"\n\n{marker}\n"
        else:
            text += message["content"] + eos
    return text


# render_instruction as a chat template: what a fine-tune in the `instruction` layout writes beside its
# weights, so that every consumer (vLLM in-process or served, lm-eval, evol generate) prompts it in
# the layout it was trained in without knowing about layouts. Jinja strips nothing here (no `-`
# markers), so the text is exactly render_instruction's; a prompt ends with the marker line, which
# is the generation prompt.
_INSTRUCTION_TEMPLATE = (
    "{%- set ns = namespace(text='') -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{%- set ns.text = ns.text + (message['content'] | trim) + '\\n\\n' -%}"
    "{%- elif message['role'] == 'user' -%}"
    "{%- set gap = '\\n\\n' if ns.text and not ns.text.endswith('\\n\\n') else '' -%}"
    "{%- set ns.text = ns.text + gap + message['content'] + '\\n\\n' + MARKER + '\\n' -%}"
    "{%- else -%}"
    "{%- set ns.text = ns.text + message['content'] + EOS -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{{- PREFIX + ns.text + SUFFIX -}}"
)


def training_chat_template(tokenizer, template: str, marker: str) -> str | None:
    """The chat template that renders a conversation exactly as this fine-tune was trained on it:
    the base's own for the `chat` layout; for `instruction`, render_instruction with the special
    tokens the tokenizer adds around a text (a BOS for most base models), since a chat template's
    text is tokenized without adding them."""
    if template == "chat":
        return tokenizer.chat_template
    with_special = tokenizer("x", add_special_tokens=True)["input_ids"]
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    start = with_special.index(plain[0]) if plain and plain[0] in with_special else 0
    prefix = "".join(tokenizer.convert_ids_to_tokens(with_special[:start]))
    suffix = "".join(tokenizer.convert_ids_to_tokens(with_special[start + len(plain) :]))
    values = {"MARKER": marker, "EOS": tokenizer.eos_token, "PREFIX": prefix, "SUFFIX": suffix}
    return "".join(f"{{%- set {name} = {value!r} -%}}" for name, value in values.items()) + _INSTRUCTION_TEMPLATE


class ChatEncoder:
    """Renders (part of) a conversation and tokenizes it the same way for prompts and full turns."""

    def __init__(self, tokenizer, template: str, marker: str):
        self.tok = tokenizer
        self.template = template
        self.marker = marker
        if template == "instruction" and not tokenizer.eos_token:
            raise InputError(
                "The base tokenizer has no EOS token, so the instruction template cannot "
                "mark where an answer ends; use a tokenizer with an EOS token."
            )

    def ids(self, messages: list[dict], generation_prompt: bool) -> list[int]:
        if self.template == "chat":
            text = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
            # The chat template writes BOS and other special tokens itself.
            return self.tok(text, add_special_tokens=False)["input_ids"]
        text = render_instruction(messages, self.marker, self.tok.eos_token)
        return self.tok(text, add_special_tokens=True)["input_ids"]

    def example(self, messages: list[dict]) -> tuple[list[int], list[int]]:
        """input_ids, and labels that keep only the tokens each assistant turn adds."""
        full = self.ids(messages, generation_prompt=False)
        labels = [IGNORE] * len(full)
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = self.ids(messages[:i], generation_prompt=True)
            upto = self.ids(messages[: i + 1], generation_prompt=False)
            # Tokens can merge across the prompt/answer boundary; the answer starts where the
            # rendered prompt stops being a prefix of the full sequence, as in TRL.
            start = _common_prefix(prompt, full)
            end = _common_prefix(upto, full)
            for j in range(start, end):
                labels[j] = full[j]
        return full, labels


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def tokenize_conversations(
    rows: list[Conversation], tokenizer, template: str, marker: str, max_length: int, bad: BadRows
) -> list[dict]:
    """Token ids and masked labels per row; rows longer than max_length become `too_long` bad rows.

    A too-long row is dropped rather than truncated: cutting it would train on an answer with
    its end (and its stop token) missing.
    """
    encoder = ChatEncoder(tokenizer, template, marker)
    examples = []
    for row in rows:
        input_ids, labels = encoder.example(row.messages)
        if len(input_ids) > max_length:
            bad.add("too_long", row.line)
            continue
        if all(label == IGNORE for label in labels):
            bad.add("no_trainable_tokens", row.line)
            continue
        examples.append({"id": row.id, "input_ids": input_ids, "labels": labels})
    return examples


def check_bad_rows(path: str | Path, bad: BadRows, kept: int, policy: str) -> str | None:
    """Stop (policy fail, or nothing left) or return the one-line report of what was dropped."""
    if kept == 0:
        detail = f" ({bad.summary()})" if bad.bad else ""
        raise InputError(
            f"{path}: no usable training rows out of {bad.total}{detail}; fix the file "
            f"or raise train.max_length if rows are too long."
        )
    if not bad.bad:
        return None
    message = f"{path}: {bad.bad} of {bad.total} rows are bad ({bad.summary()})"
    if policy == "fail":
        raise InputError(f"{message}; fix them or set train.on_bad_rows=skip to train on the {kept} good rows.")
    return f"{message}; skipped them (train.on_bad_rows=skip), training on {kept} rows."
