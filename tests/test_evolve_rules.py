"""Elimination rules (each positive and negative), verdict parsing and the prompt templates."""

import pytest

from evolve_local import eliminate as rules
from evolve_local.prompts import COMPLICATE_INPUT_DEMOS, NEW_LABEL, REWRITTEN_LABEL, equality_prompt, evolution_prompt
from pipeline.config.evolve import OPERATIONS
from pipeline.core.records import DIFFERENT, EQUAL, UNPARSED


def test_too_long_fires_only_on_the_engine_report():
    assert rules.too_long("too_long", "answer")
    assert rules.too_long("length", "answer") is None
    assert rules.too_long("stop", "evolution") is None


@pytest.mark.parametrize("evolved", ["", "   \n", "...", "Name a fruit.", "  name A FRUIT ", "Name a fruit!"])
def test_empty_or_unchanged_evolution_gains_nothing(evolved):
    assert rules.unchanged_evolution("Name a fruit.", evolved)


def test_a_changed_evolution_passes_the_cheap_check():
    assert rules.unchanged_evolution("Name a fruit.", "Name a tropical fruit rich in vitamin C.") is None


@pytest.mark.parametrize(
    "text",
    [
        "#Rewritten Task#: List three rivers.",
        "Rewrite the given prompt so that it is harder.",
        "Here is the created prompt: list rivers",
        "#NEW TASK# Describe a volcano.",
        "The Rewritten Prompt asks you to sort numbers.",
        "#Original Task# name a colour",
        "The original task asked for a list; now sort it.",  # talks about our scaffolding
    ],
)
def test_copied_prompt_words_positive(text):
    assert rules.copied_prompt_words(text)


@pytest.mark.parametrize(
    "text",
    [
        "List three rivers in Africa and give their lengths.",
        "Write a prompt for a story about a given place.",  # 'given' and 'prompt' apart are fine
        "Describe a new task manager app in two sentences.",
    ],
)
def test_copied_prompt_words_negative(text):
    assert rules.copied_prompt_words(text) is None


def test_refusal_short_needs_sorry_and_few_words():
    assert rules.refusal_short("I'm SORRY, but I can't help with that.")
    assert rules.refusal_short("Sorry " + "word " * 78, max_words=80)  # 79 words
    assert rules.refusal_short("Sorry " + "word " * 79, max_words=80) is None  # 80 words: long enough
    assert rules.refusal_short("Paris is the capital of France.") is None
    assert rules.refusal_short("I am sorry to hear that.", max_words=3) is None


def test_stopwords_only_uses_the_maintained_list():
    assert len(rules.stop_words()) > 100  # the stop-words package, not a hand-typed list
    assert rules.stopwords_only("The, and of it... is!")
    assert rules.stopwords_only("")
    assert rules.stopwords_only("?!  --  ...")
    assert rules.stopwords_only("The answer is 42.") is None
    assert rules.stopwords_only("Photosynthesis turns light into sugar.") is None


@pytest.mark.parametrize(
    "text, verdict",
    [
        ("EQUAL", EQUAL),
        ("Equal.", EQUAL),
        ("They are the same.", EQUAL),
        ("DIFFERENT", DIFFERENT),
        ("Not equal", DIFFERENT),
        ("not the same: the second adds a limit", DIFFERENT),
        ("Different, though nearly equal", DIFFERENT),
        ("", UNPARSED),
        ("Bananas are yellow.", UNPARSED),
        ("\nEQUAL", EQUAL),
    ],
)
def test_parse_verdict(text, verdict):
    assert rules.parse_verdict(text) == verdict


def test_only_an_equal_verdict_eliminates():
    assert rules.judged_equal(EQUAL, "EQUAL")
    assert rules.judged_equal(DIFFERENT, "DIFFERENT") is None
    assert rules.judged_equal(UNPARSED, "hmm") is None  # counted apart, never eliminates


def test_every_operation_has_a_prompt_holding_the_instruction():
    texts = {op: evolution_prompt(op, "Name three rivers.") for op in OPERATIONS}
    assert len(set(texts.values())) == len(OPERATIONS)
    for op, text in texts.items():
        assert text.rstrip().endswith(NEW_LABEL if op == "in_breadth" else REWRITTEN_LABEL)
        assert "Name three rivers." in text
    assert "10 to 20 words" in texts["deepen"]  # in-depth prompts limit growth
    for _, demo in COMPLICATE_INPUT_DEMOS:
        assert demo in texts["complicate_input"]
    with pytest.raises(ValueError, match="Unknown operation"):
        evolution_prompt("shorten", "x")


def test_equality_prompt_shows_both_tasks_in_order():
    text = equality_prompt("Parent task here.", "Evolved task here.")
    assert text.index("Parent task here.") < text.index("Evolved task here.")
    assert "EQUAL" in text and "DIFFERENT" in text
