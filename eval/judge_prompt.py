"""The pairwise judge prompt: one request, two answers, a 1-10 score for each and a short reason.

    messages = judge_messages(instruction, first_answer, second_answer, reference=None)

The protocol follows the spirit of the Vicuna / WizardLM GPT-4 review (score both, first line
holds the two numbers, then an explanation), in our own wording. Any change to the wording must
bump PROMPT_VERSION: it is recorded in every judgment and in scores.json, and it is part of the
judge stage's cache key, so old verdicts are never mixed with new ones.
"""

from __future__ import annotations

PROMPT_VERSION = "pairwise-v1"

SYSTEM = (
    "You review answers written by AI assistants. You are strict, fair and brief, "
    "and you always follow the requested output format."
)

TASK = """A user made the request below, and two assistants replied. Give each reply a score from 1 to 10, where 1 means useless or wrong and 10 means excellent.

Judge whether the reply does what the user asked, whether it is correct, whether it is complete and clear, and whether its level of detail suits the request. Do not let the order of the replies or their length sway you.{reference_note}

[Request]
{instruction}
[End of request]
{reference_block}
[Assistant 1]
{first}
[End of Assistant 1]

[Assistant 2]
{second}
[End of Assistant 2]

Output format: on the first line write only the two scores, the one for Assistant 1 then the one for Assistant 2, separated by a space. From the second line on, explain your scores in two or three sentences."""

REFERENCE_NOTE = (
    " A reference answer is included; use it to check correctness, but a reply may be phrased differently "
    "and still be right."
)

REFERENCE_BLOCK = """
[Reference answer]
{reference}
[End of reference answer]
"""

# After an answer cut to fit the judge's context (eval.judge_answer_max_chars), so the judge knows.
CUT_MARK = "\n[... the rest of this reply was cut for length ...]"


def judge_messages(instruction: str, first: str, second: str, reference: str | None = None) -> list[dict]:
    # An empty reply is shown as such: an empty block reads like a formatting glitch to the judge.
    first = first if first.strip() else "(no reply)"
    second = second if second.strip() else "(no reply)"
    user = TASK.format(
        instruction=instruction.strip(),
        first=first.strip(),
        second=second.strip(),
        reference_note=REFERENCE_NOTE if reference else "",
        reference_block=REFERENCE_BLOCK.format(reference=reference.strip()) if reference else "",
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
