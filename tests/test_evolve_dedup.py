"""Near-duplicate removal and test-set decontamination."""

import json
from pathlib import Path

import pytest

from evolve_local.dedup import NearDuplicates, TestSetFilter
from evolve_local.inputs import decontamination_list
from pipeline.config import load_config
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


class InMemoryReference:
    """The index as it was before it moved to a scratch file: datasketch's MinHashLSH and MinHash
    objects in memory. The scratch index must decide exactly as this one does."""

    def __init__(self, threshold, shingle_chars, permutations):
        from datasketch import MinHashLSH

        from evolve_local.dedup import minhash

        self.minhash = lambda text: minhash(text, shingle_chars, permutations)
        self.threshold, self.lsh, self.sketches, self.exact = threshold, MinHashLSH(threshold, permutations), {}, {}

    def check_and_add(self, item_id, instruction):
        from pipeline.core.text import normalise

        key = normalise(instruction)
        if key in self.exact:
            return f"the same text as {self.exact[key]}"
        sketch, best = self.minhash(instruction), None
        for other in sorted(self.lsh.query(sketch)):
            similarity = sketch.jaccard(self.sketches[other])
            if similarity >= self.threshold and (best is None or similarity > best[1]):
                best = (other, similarity)
        if best is not None:
            return f"a near-duplicate of {best[0]} (similarity {best[1]:.2f})"
        self.lsh.insert(item_id, sketch)
        self.sketches[item_id], self.exact[key] = sketch, item_id
        return None


@pytest.mark.parametrize("threshold, permutations", [(0.85, 128), (0.5, 64)])
def test_the_scratch_index_decides_exactly_as_datasketchs_in_memory_lsh(threshold, permutations):
    import random

    rng = random.Random(7)
    words = "river snow bread robot window village poem tide engine garden lamp letter clock winter".split()
    texts = []
    for _ in range(400):
        kind = rng.random()
        if texts and kind < 0.15:
            texts.append(rng.choice(texts).upper())  # the same text once normalised
        elif texts and kind < 0.45:  # a near one: a word changed or added
            base = rng.choice(texts).split()
            base[rng.randrange(len(base))] = rng.choice(words)
            texts.append(" ".join(base + ([rng.choice(words)] if rng.random() < 0.5 else [])))
        else:
            texts.append(" ".join(rng.choice(words) for _ in range(rng.randint(4, 14))))
    reference = InMemoryReference(threshold, 5, permutations)
    scratch = NearDuplicates(threshold, 5, permutations)
    decisions = [(reference.check_and_add(f"i{n}", t), scratch.check_and_add(f"i{n}", t)) for n, t in enumerate(texts)]
    assert all(old == new for old, new in decisions)
    kinds = [d.split()[0] if d else None for d, _ in decisions]
    assert kinds.count("the") > 20 and kinds.count("a") > 10 and kinds.count(None) > 100  # each kind was met
    scratch.close()
    assert not scratch.scratch.path.exists()


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
    config = load_config()
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"idx": 7, "Skill": "Math", "Instruction": "Do X."}) + "\n")
    assert decontamination_list(path, config) == [("7", "Do X.")]
    with pytest.raises(InputError, match="evolve.decontaminate=false"):
        decontamination_list(tmp_path / "missing.jsonl", config)
    path.write_text(json.dumps({"idx": 7, "Skill": "Math"}) + "\n")
    with pytest.raises(InputError, match=r"t\.jsonl:1: missing field \"Instruction\""):
        decontamination_list(path, config)
    # eval.limit cuts what is answered, never what is decontaminated against
    path.write_text("".join(json.dumps({"idx": i, "Skill": "s", "Instruction": f"Q{i}."}) + "\n" for i in range(5)))
    assert len(decontamination_list(path, load_config(None, ["eval.limit=2"]))) == 5


FIXTURES = Path(__file__).parent / "fixtures" / "testsets"


@pytest.mark.parametrize(
    "name, first",
    [
        ("fastchat_mt_bench.jsonl", ("81", "Draft a short notice inviting colleagues to a Friday book swap.")),
        ("fastchat_vicuna.jsonl", None),
        ("arena_hard.jsonl", None),
        ("alpaca_eval.jsonl", None),
    ],
)
def test_decontamination_reads_every_format_the_answer_stage_reads(name, first):
    """The decontamination list is the answer stage's items (first turns of multi-turn questions)."""
    from pipeline.core.testset import load_testset

    config = load_config()
    pairs = decontamination_list(FIXTURES / name, config)
    assert pairs == [(i.id, i.instruction) for i in load_testset(FIXTURES / name, config.eval)]
    if first:
        assert pairs[0] == first
        # the second turn is not asked, so it is not decontaminated against either
        assert not any("letter B" in text for _, text in pairs)


def test_a_field_mapping_decides_what_is_decontaminated(tmp_path):
    path = tmp_path / "custom.jsonl"
    path.write_text(json.dumps({"qid": "a", "prompt": "Name three primary colours.", "Instruction": "other"}) + "\n")
    config = load_config(None, ["eval.id_field=qid", "eval.instruction_field=prompt"])
    assert decontamination_list(path, config) == [("a", "Name three primary colours.")]


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
