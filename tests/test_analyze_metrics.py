"""Metric functions of `evol analyze` on hand-made inputs whose answers are known."""

import math

import numpy as np
import pytest

from eval.analysis import metrics
from eval.analysis.analyze import sample


def test_word_count_matches_the_elimination_rules():
    assert metrics.word_count("Write a haiku, don't rhyme!") == 5
    assert metrics.word_count("") == 0


@pytest.mark.parametrize(
    "text, kinds",
    [
        ("Find the best month.\n\n| month | sales |\n|---|---|\n| Jan | 120 |", ["table"]),
        ("Explain this:\n```python\ndef f(x):\n    return x\n```", ["code_block", "code"]),
        ('Given the record {"id": 17, "city": "Lyon"}, find the customers in the same city.', ["json"]),
        ('Summarise <order><item qty="2">pen</item></order> in one line.', ["xml"]),
        ("Optimise SELECT name FROM customers WHERE city = 'Lyon'.", ["sql"]),
        ("Plot these rows:\nyear,sales,cost\n2021,10,4\n2022,12,5\n2023,15,7", ["csv"]),
        ("Print the list of planets and return the biggest one.", []),  # prose words, not code
        ("The model learns to select the best sentences from each report.", []),  # prose, not SQL
        ("Fix this: select name, city from customers where id = 3", ["sql"]),
        ("Write a poem about snow {and ice}.", []),  # braces that are not JSON
    ],
)
def test_attached_data_kinds(text, kinds):
    assert metrics.attached_data_kinds(text) == kinds


def test_constraint_clauses_counts_clauses_not_cue_words():
    assert metrics.constraint_clauses("Write a poem about snow.") == 0
    text = (
        "Write a poem about snow. It must have exactly four lines and must not rhyme. "
        "Do not mention winter; use at most 40 words."
    )
    assert metrics.constraint_clauses(text) == 3  # the second sentence counts once, the two halves of the last twice
    # words inside attached data are data, not demands
    assert metrics.constraint_clauses("Explain:\n```\nif x must: only()\n```") == 0


def test_identical_texts_have_zero_diversity():
    same = np.tile([0.3, -1.2, 0.5], (6, 1))
    assert metrics.mean_pairwise_cosine_distance(same) == 0.0
    labels = metrics.kmeans_labels(same, k=4, seed=0)
    assert metrics.clusters_covered(labels) == 1 and metrics.cluster_entropy(labels) == 0.0


def test_pairwise_distance_known_values():
    assert metrics.mean_pairwise_cosine_distance([[1, 0], [0, 1]]) == pytest.approx(1.0)
    assert metrics.mean_pairwise_cosine_distance([[1, 0], [-1, 0]]) == pytest.approx(2.0)
    # pairs: (a,a) 0, (a,b) 1, (a,b) 1 -> mean 2/3; scale must not matter
    assert metrics.mean_pairwise_cosine_distance([[1, 0], [5, 0], [0, 2]]) == pytest.approx(2 / 3, abs=1e-6)
    assert metrics.mean_pairwise_cosine_distance([[1, 0]]) is None
    vectors = np.random.default_rng(0).normal(size=(40, 8))
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    brute = np.mean([1 - unit[i] @ unit[j] for i in range(40) for j in range(i + 1, 40)])
    assert metrics.mean_pairwise_cosine_distance(vectors) == pytest.approx(brute, abs=1e-5)


def test_two_far_clusters_give_two_clusters():
    rng = np.random.default_rng(1)
    blob_a = np.array([1.0, 0, 0, 0]) + rng.normal(scale=0.02, size=(15, 4))
    blob_b = np.array([0, 0, 1.0, 0]) + rng.normal(scale=0.02, size=(15, 4))
    labels = metrics.kmeans_labels(np.vstack([blob_a, blob_b]), k=2, seed=0)
    assert len(set(labels[:15])) == 1 and len(set(labels[15:])) == 1 and labels[0] != labels[15]
    assert metrics.clusters_covered(labels) == 2
    assert metrics.clusters_covered(labels[:15]) == 1  # one blob alone covers one cluster
    assert metrics.cluster_entropy(labels) == pytest.approx(1.0)  # two equal halves: one bit
    assert metrics.cluster_entropy([0, 0, 0, 1]) == pytest.approx(
        -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25)), abs=1e-4
    )
    assert metrics.cluster_entropy([]) is None


def test_projection_is_two_dimensional_for_small_and_larger_sets():
    rng = np.random.default_rng(2)
    for n, method in ((3, "tsne"), (12, "tsne"), (12, "pca")):
        assert metrics.project(rng.normal(size=(n, 6)), method, seed=0).shape == (n, 2)


def test_summaries():
    s = metrics.score_summary([3, 7, None, 7])
    assert (s["n"], s["rated"], s["unrated"], s["mean"], s["median"]) == (4, 3, 1, round(17 / 3, 3), 7)
    assert s["distribution"]["7"] == 2 and sum(s["distribution"].values()) == 3
    assert metrics.score_summary([])["mean"] is None
    t = metrics.text_summary(["Write two words.", "Use this table:\n| a |\n| b |"])
    assert t["n"] == 2 and t["attached_data_share"] == 0.5 and t["attached_data_kinds"] == {"table": 1}
    records = [
        {"status": "kept"},
        {"status": "eliminated", "elimination_rule": "too_long"},
        {"status": "eliminated", "elimination_rule": "too_long"},
        {"status": "kept"},
    ]
    surv = metrics.survival(records)
    assert (surv["attempted"], surv["kept"], surv["kept_rate"], surv["eliminated"]["too_long"]) == (4, 2, 0.5, 2)
    rows = [{"round": 0}] * 3 + [{"round": 1}]
    assert metrics.stratified_mean(rows, {0: 2.0, 1: 6.0}) == 3.0  # weighted by rows, not by sample size
    assert metrics.stratified_mean(rows, {0: None, 1: 6.0}) == 6.0


def test_sample_is_seeded_and_order_independent():
    items = [{"id": f"x{i}"} for i in range(50)]
    a = sample(items, 10, seed=1, purpose="p")
    assert len(a) == 10 and a == sample(list(reversed(items)), 10, seed=1, purpose="p")[::-1]
    assert a != sample(items, 10, seed=2, purpose="p")
    assert sample(items, 0, 1, "p") == items
