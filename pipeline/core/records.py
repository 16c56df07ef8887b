"""The vocabulary of the evolution's round records, shared by the stage that writes them
(evolve_local/) and the ones that read them (eval/analysis/, the reports).

    from pipeline.core.records import RULES, NO_INFORMATION_GAIN

An eliminated attempt names the first rule that fired; `RULES` is every name it can hold, in the
order the rules run (see evolve_local/eliminate.py for what each one means).
"""

TOO_LONG_RULE = "too_long"
NO_INFORMATION_GAIN = "no_information_gain"
COPIED_PROMPT_WORDS = "copied_prompt_words"
REFUSAL_SHORT = "refusal_short"
STOPWORDS_ONLY = "stopwords_only"
NEAR_DUPLICATE = "near_duplicate"
CONTAMINATED = "contaminated"
RULES = (
    TOO_LONG_RULE,
    NO_INFORMATION_GAIN,
    COPIED_PROMPT_WORDS,
    REFUSAL_SHORT,
    STOPWORDS_ONLY,
    NEAR_DUPLICATE,
    CONTAMINATED,
)

# The equality verdict of a check, as parsed from the model's text.
EQUAL, DIFFERENT, UNPARSED = "equal", "different", "unparsed"
