"""Every prompt the evolution stage sends to a model, in one place: the six operations, the
equality (information-gain) check, and for Auto Evol-Instruct (`evol optimize`, optimize.py) the
starting evolving method and the optimizer's two prompts. The wording is this project's own.

    evol evolve --config configs/tiny.yaml --out runs/tiny      # uses these templates

The five in-depth operations share one frame (`IN_DEPTH_FRAME`) and differ by a method paragraph;
`in_breadth` has its own frame. The model's whole reply is taken as the new instruction, so the
frames ask for nothing else; a reply that echoes the frame's own labels is caught afterwards by the
`copied_prompt_words` rule, whose phrase list (`MARKER_PHRASES`) lives here beside the labels.
"""

from __future__ import annotations

from pipeline.config.evolve import OPERATIONS

IN_BREADTH = "in_breadth"

# Labels that frame the instruction inside our prompts. A reply that repeats one of them (or one
# of the phrases other Evol-Instruct prompts use) copied the scaffolding, not just the task.
ORIGINAL_LABEL = "#Original Task#"
REWRITTEN_LABEL = "#Rewritten Task#"
NEW_LABEL = "#New Task#"
MARKER_PHRASES = (
    "given prompt",
    "rewritten prompt",
    "created prompt",
    "original task",
    "rewritten task",
    "new task#",
    "#new task",
)

IN_DEPTH_FRAME = """\
You edit tasks that people give to an AI assistant. Make the task below harder for the assistant \
in one specific way, described under "Method". The edited task must still make sense on its own, \
be something a person could understand and answer, and keep everything the original contains \
(tables, code, numbers, quoted text). Add only about 10 to 20 words; do not make it long-winded. \
Reply with the edited task alone: no title, no explanation, and do not talk about "the task" or \
these directions.

Method: {method}

{original_label}
{instruction}

{rewritten_label}
"""

METHODS = {
    "add_constraints": (
        "Add one more requirement or limit the answer must respect, such as a word budget, a format, "
        "an audience, something to avoid, or a condition that must hold."
    ),
    "deepen": (
        "If the task asks about something in a general way, ask for more depth: the reasons behind "
        "it, the trade-offs, the exceptions, or how it connects to related ideas."
    ),
    "concretize": (
        "Replace a general idea in the task with a precise, concrete one: a named situation, a "
        "specific object, real quantities, or a particular case."
    ),
    "increase_reasoning": (
        "If the task can be solved in one obvious step, change it so the answer needs several "
        "steps of reasoning that build on each other, and ask for them to be shown."
    ),
    "complicate_input": (
        "Attach input data the task must work on, such as a small table, a JSON object, an XML "
        "snippet, a SQL query or a piece of code, and refer to that data in the task. Keep the data "
        "short and realistic. Examples of such edits:\n\n{demos}"
    ),
}

# Few-shot demonstrations for complicate_input: one per kind of data, written for this project.
COMPLICATE_INPUT_DEMOS = (
    (
        "Find the month with the highest sales.",
        "Using the table below, find the month with the highest sales and say by how much it beat "
        "the average month.\n\n| month | sales |\n|-------|-------|\n| Jan | 120 |\n| Feb | 95 |\n"
        "| Mar | 143 |",
    ),
    (
        "Explain what this function does.",
        "Explain what the Python function below does, and name an input for which it fails.\n\n"
        "```python\ndef middle(xs):\n    return sorted(xs)[len(xs) // 2]\n```",
    ),
    (
        "Write a query that lists customers.",
        "Given the JSON record of one customer below, write a SQL query for a `customers` table "
        "that finds every customer living in the same city.\n\n"
        '{"id": 17, "name": "Ada Park", "city": "Lyon", "since": 2019}',
    ),
    (
        "Summarise the order.",
        "Summarise the order described by this XML in one sentence, including the total price.\n\n"
        '<order><item qty="2" price="4.50">notebook</item>'
        '<item qty="1" price="12.00">pen set</item></order>',
    ),
)

IN_BREADTH_FRAME = """\
You write tasks for an AI assistant. Read the task below, then invent a brand-new task from the \
same subject area that is less common and more unusual than it, with roughly the same length and \
difficulty. The new task must make sense on its own and be something a person could answer. Reply \
with the new task alone: no title, no explanation, and do not talk about "the task" or these \
directions.

{original_label}
{instruction}

{new_label}
"""

EQUALITY_FRAME = """\
Compare the two tasks below. Call them EQUAL if they ask for the same thing with the same \
requirements and limits, the same depth and the same breadth of inquiry, even if the wording \
differs. Call them DIFFERENT if the second adds, removes or changes a requirement, goes deeper, or \
asks about something else.

First task:
{first}

Second task:
{second}

Answer with one word, EQUAL or DIFFERENT."""


def _demos() -> str:
    return "\n\n".join(
        f"{ORIGINAL_LABEL}\n{before}\n{REWRITTEN_LABEL}\n{after}" for before, after in COMPLICATE_INPUT_DEMOS
    )


def evolution_prompt(operation: str, instruction: str) -> str:
    """The user message that asks the evolver to apply `operation` to `instruction`."""
    if operation == IN_BREADTH:
        return IN_BREADTH_FRAME.format(original_label=ORIGINAL_LABEL, instruction=instruction, new_label=NEW_LABEL)
    if operation not in METHODS:
        raise ValueError(f"Unknown operation {operation!r}; known: {', '.join(OPERATIONS)}.")
    method = METHODS[operation]
    if operation == "complicate_input":
        method = method.format(demos=_demos())
    return IN_DEPTH_FRAME.format(
        method=method, original_label=ORIGINAL_LABEL, instruction=instruction, rewritten_label=REWRITTEN_LABEL
    )


def equality_prompt(parent: str, evolved: str) -> str:
    """The user message that asks whether the evolved instruction gained nothing over its parent."""
    return EQUALITY_FRAME.format(first=parent, second=evolved)


def messages(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# ---------------------------------------------------------------- evolving methods (evol optimize)

# Where the instruction goes in an evolving method (evolve_local/method.py), and what follows it: the
# same labels as the operations' frames, so an echo of them is caught by copied_prompt_words. An
# optimizer's rewrite that lost the placeholder gets this tail back (recorded as `repaired`).
METHOD_PLACEHOLDER = "{instruction}"
METHOD_TAIL = f"\n\n{ORIGINAL_LABEL}\n{METHOD_PLACEHOLDER}\n\n{REWRITTEN_LABEL}\n"

# The method an optimisation starts from: list ways to make the task harder, pick some, rewrite,
# check the rewrite, then give only the result (Auto Evol-Instruct's general method, in our words).
GENERAL_METHOD = (
    "You make tasks for an AI assistant harder to answer well, without changing what they are about.\n"
    "Work through these steps silently:\n"
    "1. List a few ways this particular task could be made more demanding: an extra requirement, a "
    "precise case instead of a vague one, reasoning in several steps, input data to work on, or a "
    "less common angle on the same subject.\n"
    "2. Choose one or two of them that fit the task and keep it answerable.\n"
    "3. Rewrite the task with them, adding no more than about 20 words and keeping everything the "
    "task already contains (numbers, code, tables, quoted text).\n"
    "4. Read your rewrite once more: it must be harder than the original, on the same subject, make "
    "sense on its own, and must not mention these steps or the word 'task'.\n"
    "Reply with the final rewritten task only: no list, no plan, no title, no explanation." + METHOD_TAIL
)

# Trajectory analysis: the optimizer reads what the method did to a mini-batch over a few rounds.
ANALYSIS_FRAME = """\
You review a prompt that is meant to turn a task for an AI assistant into a harder version of the \
same task (the "method" below). It was applied several times in a row to a few tasks; each version \
is listed with whether it was kept or rejected, and why.

Name the problems you see in the rewritten versions: for example a version that is no harder than \
the one before, drifts to another subject, cannot be answered, repeats words of the method, is far \
too long, or was rejected for the reason shown. Write one problem per line, each line starting with \
"- ", at most five lines, and nothing else.

Method:
<<<
{method}
>>>

What happened:
{trajectories}

Rejections by reason over these attempts: {rules}

Problems:
"""

# Method optimisation: the optimizer rewrites the method to fix what the analysis named.
REWRITE_FRAME = """\
You improve a prompt (the "method" below) that rewrites tasks for an AI assistant into harder \
versions of the same task. Problems were found when it was used; they are listed after it. Write an \
improved method that fixes them and keeps what works. It must still tell the rewriter to reply with \
the rewritten task alone, and it must keep the line {{instruction}} exactly as it is: that is where \
each task is inserted. Reply with the improved method only.

Current method:
<<<
{method}
>>>

Problems found:
{problems}

Improved method:
"""


def analysis_prompt(method: str, trajectories: str, rules: str) -> str:
    return ANALYSIS_FRAME.format(method=method, trajectories=trajectories, rules=rules)


def rewrite_prompt(method: str, problems: list[str]) -> str:
    listed = "\n".join(f"- {p}" for p in problems) if problems else "- (none were named; make it more reliable)"
    return REWRITE_FRAME.format(method=method, problems=listed)
