"""Judge-rated difficulty of an instruction on a 1-10 scale: the prompt, the request, the parser.

    evol analyze runs/tiny      # rates a sample of each round's kept instructions with this prompt

The judge sees one instruction and is asked how hard it is to answer well, not to answer it. At
temperature 0; with `analysis.constrained_difficulty` the engine forces the output to start with
the score alone on its first line ("7\\n..."), like eval/judge.py forces its score line. Without
constraints a small model wanders, so `parse_difficulty` reads, in order: a bare number on the
first line (or followed by a dash and a reason), a labelled score ("Difficulty: 7", "rating of 7"), then "N/10" or "N out of 10"
anywhere. Anything else, or a number outside 1-10, is a recorded failure, never a crash.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from eval.scoreparse import NUMBER as _NUMBER
from eval.scoreparse import OUT_OF_TEN, scale_error, undecorated
from pipeline.core.seeds import derive_seed
from pipeline.core.text import clip
from pipeline.engine import TOO_LONG, ChatRequest, ChatResult

PROMPT_VERSION = "difficulty-v1"

DIFFICULTY_PROMPT = """\
You are grading how demanding a task is for an AI assistant. Do not carry out the task; only \
judge it.

Score from 1 to 10:
1-2  a single fact, a greeting, or a short reply anyone could give
3-4  an everyday request with one clear step
5-6  several parts to cover, or some domain knowledge needed
7-8  many requirements to satisfy at once, multi-step reasoning, or attached data to work through
9-10 expert knowledge and long careful reasoning under tight, interacting requirements

Write the score alone on the first line, then one short sentence explaining it.

The task:
<<<
{instruction}
>>>"""

# The score alone on line one, then a short reason (the reason gives the small model room to
# stop naturally instead of running on with digits). No upper bound on the reason (the token limit
# is one): {5,300} took xgrammar 2.8 s to compile, in every analysis process.
SCORE_REGEX = r"(10|[1-9])\n[^\n]{5,}"

FIRST_LINE = re.compile(
    rf"^(?:(?:difficulty|score|rating)\s*[:=]?\s*)?{_NUMBER}\s*(?:/\s*10|out of 10)?\s*[.)]?$", re.IGNORECASE
)
# "7 - needs several steps", "7: many parts"; not "7. Write ..." (a numbered list, the task answered).
LEADING = re.compile(rf"^{_NUMBER}\s*(?:/\s*10)?\s*(?:[-:\u2013\u2014]|\()\s*\S")
LABELLED = re.compile(rf"\b(?:difficulty|score|rating|rate it|rated)\b[^0-9\n]{{0,25}}?{_NUMBER}(?!\d)", re.IGNORECASE)
REASON_CHARS = 400
CUT_MARK = "\n[... cut for length ...]"


@dataclass
class ParsedDifficulty:
    score: float | None
    method: str | None  # which rule matched; None: a failure
    error: str | None  # why parsing failed; None: it worked
    reason: str


def parse_difficulty(text: str) -> ParsedDifficulty:
    if not text or not text.strip():
        return ParsedDifficulty(None, None, "empty judge output", "")
    clean = undecorated(text).strip()
    lines = [line.strip() for line in clean.splitlines() if line.strip()]
    first = FIRST_LINE.match(lines[0])
    candidates = (
        ("first_line", first.group(1) if first else None, "\n".join(lines[1:])),
        ("leading", (m := LEADING.match(lines[0])) and m.group(1), "\n".join(lines)),
        ("labelled", (m := LABELLED.search(clean)) and m.group(1), clean),
        ("out_of_ten", (m := OUT_OF_TEN.search(clean)) and m.group(1), clean),
    )
    for method, number, reason in candidates:
        if number is None:
            continue
        score = float(number)
        error = scale_error(score, method)
        if error:
            return ParsedDifficulty(None, None, error, clean[:REASON_CHARS])
        return ParsedDifficulty(score, method, None, reason.strip()[:REASON_CHARS])
    return ParsedDifficulty(None, None, "no score found", clean[:REASON_CHARS])


def difficulty_request(item_id: str, instruction: str, settings, seed: int) -> tuple[ChatRequest, bool]:
    """The judge request for one instruction; also says whether the instruction had to be cut."""
    # An over-long instruction is cut so the prompt fits; the cut is marked and recorded.
    text, cut = clip(instruction, settings.instruction_max_chars, CUT_MARK, trim=True)
    request = ChatRequest(
        id=item_id,
        messages=[{"role": "user", "content": DIFFICULTY_PROMPT.format(instruction=text)}],
        max_tokens=settings.difficulty_max_tokens,
        temperature=0.0,
        top_p=1.0,
        seed=derive_seed(seed, item_id, "difficulty"),
        regex=SCORE_REGEX if settings.constrained_difficulty else None,
    )
    return request, cut


def rating_record(item: dict, result: ChatResult, clipped: bool, rating_key: str) -> dict:
    """One line of analysis/ratings.jsonl: the raw judge text beside the parsed score."""
    parsed = parse_difficulty(result.text)
    error = parsed.error
    if result.finish_reason == TOO_LONG:
        error = "the instruction does not fit the judge's context (lower analysis.instruction_max_chars)"
    return {
        "id": item["id"],
        "round": item["round"],
        "operation": item["operation"],
        "score": parsed.score if error is None else None,
        "method": parsed.method if error is None else None,
        "error": error,
        "raw": result.text,
        "reason": parsed.reason,
        "finish_reason": result.finish_reason,
        "instruction_clipped": clipped,
        "rating_key": rating_key,
    }
