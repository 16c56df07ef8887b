"""Near-duplicate removal and test-set decontamination."""

import json

import pytest

from evolve_local.dedup import NearDuplicates, TestSetFilter, load_test_instructions
from pipeline.core.jsonio import InputError


def index(threshold=0.85):
    return NearDuplicates(threshold, shingle_chars=5, permutations=128)


def test_near_duplicates_are_caught_and_distinct_texts_admitted():
    near = index()
    poem = "Write a short poem about the first snowfall of winter, seen from a kitchen window in a small village."
    assert near.check_and_add("a", poem) is None
    assert "the same text as a" in near.check_and_add("b", poem.upper().replace(",", "!"))
    assert "near-duplicate of a" in near.check_and_add("c", poem.replace("village", "villages"))
    # a real evolution of the poem adds enough to stay apart
    assert near.check_and_add("c2", poem + " Use exactly four rhyming lines and mention the smell of bread.") is None
    assert near.check_and_add("d", "Explain how a refrigerator keeps food cold.") is None
    assert near.check_and_add("e", "Write a limerick about a forgetful robot who loses keys.") is None


def test_dedup_switched_off_admits_everything():
    near = NearDuplicates(0.85, 5, 64, enabled=False)
    assert near.check_and_add("a", "same text") is None
    assert near.check_and_add("b", "same text") is None


TESTS = [
    ("1", "If a car travels 120 miles in 2 hours, what is its average speed in miles per hour?"),
    ("2", "Name the largest ocean on Earth today."),
    ("3", "Hi there."),
]


def filt():
    return TestSetFilter(TESTS, ngram=8, threshold=0.7, shingle_chars=5, permutations=128)


def test_a_long_shared_run_of_words_is_contamination():
    hit = filt().overlap("Solve this: if a car travels 120 miles in 2 hours, what is its speed? Show steps.")
    assert hit and "test item 1" in hit


def test_a_whole_short_test_instruction_inside_is_contamination():
    hit = filt().overlap("Quiz time. Name the largest ocean on Earth today, and its depth.")
    assert hit and "test item 2" in hit


def test_a_very_short_test_instruction_is_not_matched_as_a_phrase():
    assert filt().overlap("Say hi there to your neighbour in three languages.") is None


def test_similar_wording_is_contamination_by_minhash():
    hit = filt().overlap("If a car travels 120 miles in 2 hours, what's its average speed in miles per hour")
    assert hit


def test_unrelated_instruction_is_clean():
    assert filt().overlap("Write a haiku about autumn leaves falling in a quiet park.") is None


def test_test_set_loading(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"idx": 7, "Instruction": "Do X."}) + "\n")
    assert load_test_instructions(path) == [("7", "Do X.")]
    with pytest.raises(InputError, match="evolve.decontaminate=false"):
        load_test_instructions(tmp_path / "missing.jsonl")
    path.write_text(json.dumps({"idx": 7, "Skill": "Math"}) + "\n")
    with pytest.raises(InputError, match=r"t\.jsonl:1: .*\"Instruction\""):
        load_test_instructions(path)


def test_the_shared_permutations_give_the_sketch_datasketch_would_give():
    # minhash draws the seeded permutations once, not per sketch: the signature must not change
    from datasketch import MinHash

    from evolve_local.dedup import MINHASH_SEED, minhash, shingles

    for text in ("Explain how tides work.", "Explain how the tides work, step by step.", "x"):
        plain = MinHash(num_perm=64, seed=MINHASH_SEED)
        plain.update_batch(sorted(shingles(text, 5)))
        assert (minhash(text, 5, 64).hashvalues == plain.hashvalues).all()
    assert minhash("a b c d e f", 5, 64) is minhash("a b c d e f", 5, 64)  # the last sketch is reused
    assert minhash("a b c d e f", 5, 128).hashvalues.shape == (128,)
