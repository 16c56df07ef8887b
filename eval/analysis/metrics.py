"""Pure metric functions of the data analysis: text complexity cues and embedding diversity.

    evol analyze runs/tiny        # eval/analysis/analyze.py applies these per round and per C<k>

Text cues (no model): word count, the number of constraint-like clauses (a clause that demands,
limits, forbids or fixes a format), and whether the instruction carries attached input data (a
code block, a table, JSON, XML, SQL, code lines or CSV rows) and of which kinds.
Diversity (on sentence embeddings, one row per instruction): mean pairwise cosine distance,
k-means labels fitted once over every analysed instruction, the number of distinct clusters a
set covers and the entropy of its cluster sizes in bits, and a 2-D projection (t-SNE or PCA).
Survival: kept rate and eliminations per rule of a group of attempts. Every function here takes
plain values and returns plain values, so each can be checked on hand-made inputs.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from statistics import mean, median

import numpy as np

from pipeline.core.records import KEPT, RULES
from pipeline.core.text import words

# ---------------------------------------------------------------- word counts


def word_count(text: str) -> int:
    """Words as the elimination rules count them (pipeline.core.text.words), so the two stages agree."""
    return len(words(text or ""))


# ---------------------------------------------------------------- attached input data

FENCE = re.compile(r"```.*?(?:```|\Z)", re.DOTALL)
TABLE_ROW = re.compile(r"^\s*\|.*\|\s*$", re.MULTILINE)
XML_ELEMENT = re.compile(r"<([A-Za-z][\w:-]*)(?:\s[^<>]*)?>.*?</\1\s*>", re.DOTALL)
# Upper-case SELECT ... FROM, or lower-case with a column list ("select name, city from t"); prose
# such as "select the best sentences from each report" is not SQL.
SQL = re.compile(
    r"\bSELECT\s[^;]{1,400}?\sFROM\s+\w+|\bselect\s+(?:\*|[\w.]+(?:\s*,\s*[\w.]+)*)\s+from\s+\w+|"
    r"\b(?i:insert\s+into\s+\w+|create\s+table\s+\w+|update\s+\w+\s+set\s)"
)
CODE_LINE = re.compile(
    r"^\s*(def \w+\(|class \w+[(:]|import \w+|from \w+ import|#include\s*<|function \w*\s*\(|"
    r"(const|let|var) \w+\s*=|public (static )?\w+|for \(|while \(|print\(|console\.log\(|return [^.]*;?$)",
    re.MULTILINE,
)
JSON_START = re.compile(r"[\[{]")
INPUT_LABEL = re.compile(r"^\s*(input|data|text|passage|code|table)\s*:\s*\S", re.IGNORECASE | re.MULTILINE)
DATA_KINDS = ("code_block", "table", "json", "xml", "sql", "code", "csv", "labelled_input")


def _has_json(text: str) -> bool:
    """A JSON object or array of at least two characters of content that actually parses."""
    decoder = json.JSONDecoder()
    for match in JSON_START.finditer(text):
        try:
            value, end = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(value, (dict, list)) and value and end - match.start() >= 8:
            return True
    return False


def _has_csv(text: str) -> bool:
    """Three or more consecutive lines with the same number (>= 1) of commas and no sentence end."""
    run, previous = 0, None
    for line in text.splitlines():
        commas = line.count(",")
        shaped = commas >= 1 and not line.rstrip().endswith((".", "?", "!", ":"))
        if shaped and commas == previous:
            run += 1
            if run >= 3:
                return True
        else:
            run = 1 if shaped else 0
        previous = commas if shaped else None
    return False


def attached_data_kinds(text: str) -> list[str]:
    """Which kinds of input data the instruction carries (empty: none), in DATA_KINDS order."""
    text = text or ""
    found = set()
    if "```" in text:
        found.add("code_block")
    if len(TABLE_ROW.findall(text)) >= 2:
        found.add("table")
    if _has_json(text):
        found.add("json")
    if XML_ELEMENT.search(text):
        found.add("xml")
    if SQL.search(text):
        found.add("sql")
    if len(CODE_LINE.findall(text)) >= 2:  # one code-like line can be prose ("print the list")
        found.add("code")
    if _has_csv(text):
        found.add("csv")
    if INPUT_LABEL.search(text) and "\n" in text.strip():
        found.add("labelled_input")
    return [kind for kind in DATA_KINDS if kind in found]


# ---------------------------------------------------------------- constraint-like clauses

# A clause is a stretch between sentence ends, semicolons, colons, line breaks and list bullets.
CLAUSE_SPLIT = re.compile(r"(?<=[.!?;:])\s+|\n+|\s+-\s+|\s*\u2022\s*")
# What makes a clause a constraint: it demands, bounds, forbids, or fixes the form of the answer.
CONSTRAINT_CUES = re.compile(
    r"\b(must|should|shall|needs? to|has to|have to|required?|requirements?|ensure|make sure|"
    r"at (?:least|most)|no (?:more|fewer|less|longer|shorter) than|(?:more|fewer|less) than|exactly|only|"
    r"maximum|minimum|limit(?:ed)?|within|under \d+|up to \d+|not exceed|exceed|"
    r"do not|don't|never|without|avoid|except|exclud\w*|"
    r"in (?:the form of|\w+ format)|formatted|as a (?:table|list|json|bullet\w*|numbered list)|bullet points?|"
    r"step[- ]by[- ]step|in \w+ (?:words|sentences|paragraphs|steps|lines|bullets?|points|items)|"
    r"\d+ (?:words|sentences|paragraphs|steps|lines|items|examples|points))\b",
    re.IGNORECASE,
)


def strip_attached_data(text: str) -> str:
    """The instruction without code blocks, tables and XML, whose words are data, not demands."""
    text = FENCE.sub(" ", text or "")
    text = TABLE_ROW.sub(" ", text)
    return XML_ELEMENT.sub(" ", text)


def clauses(text: str) -> list[str]:
    parts = []
    for sentence in CLAUSE_SPLIT.split(strip_attached_data(text)):
        # Long sentences join demands with ", and" / ", while" / ", but": count each separately.
        parts += [p for p in re.split(r",\s+(?:and|but|while|whereas|then)\s+|;\s*", sentence) if p.strip()]
    return parts


def constraint_clauses(text: str) -> int:
    """How many clauses carry at least one constraint cue (a clause counts once, however many)."""
    return sum(1 for clause in clauses(text) if CONSTRAINT_CUES.search(clause))


# ---------------------------------------------------------------- summaries


def text_summary(texts: Sequence[str]) -> dict:
    """Word count, constraint clauses and attached-data share of a set of instructions."""
    if not texts:
        return {
            "n": 0,
            "mean_words": None,
            "median_words": None,
            "mean_constraint_clauses": None,
            "attached_data_share": None,
            "attached_data_kinds": {},
        }
    counts = [word_count(t) for t in texts]
    kinds = [attached_data_kinds(t) for t in texts]
    return {
        "n": len(texts),
        "mean_words": round(float(mean(counts)), 2),
        "median_words": median(counts),
        "mean_constraint_clauses": round(float(mean(constraint_clauses(t) for t in texts)), 3),
        "attached_data_share": round(sum(1 for k in kinds if k) / len(texts), 4),
        "attached_data_kinds": dict(sorted(Counter(kind for k in kinds for kind in k).items())),
    }


def score_summary(scores: Iterable[int | float | None]) -> dict:
    """Mean, median and the 1-10 histogram of judge ratings; None entries count as unrated."""
    scores = list(scores)
    rated = [s for s in scores if s is not None]
    return {
        "n": len(scores),
        "rated": len(rated),
        "unrated": len(scores) - len(rated),
        "mean": round(float(mean(rated)), 3) if rated else None,
        "median": median(rated) if rated else None,
        "distribution": {str(k): sum(1 for s in rated if round(s) == k) for k in range(1, 11)},
    }


# ---------------------------------------------------------------- diversity


def _unit_rows(embeddings) -> np.ndarray:
    matrix = np.asarray(embeddings, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array (one row per text), got shape {matrix.shape}")
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms == 0, 1.0, norms)


def mean_pairwise_cosine_distance(embeddings) -> float | None:
    """Mean of 1 - cos(a, b) over all unordered pairs; None below two rows.

    Computed from the sum of the unit vectors (|sum|^2 = n + 2 * sum of pair cosines), so memory
    stays O(n) however many instructions a round has.
    """
    unit = _unit_rows(embeddings)
    n = len(unit)
    if n < 2:
        return None
    total = unit.sum(axis=0)
    pair_cosine_sum = (float(total @ total) - float((unit * unit).sum())) / 2
    distance = 1.0 - pair_cosine_sum / (n * (n - 1) / 2)
    return max(0.0, round(distance, 6))  # identical rows give -1e-16, not a negative diversity


def kmeans_labels(embeddings, k: int, seed: int) -> np.ndarray:
    """K-means on unit vectors (so Euclidean distance follows cosine), k capped at the distinct rows."""
    from sklearn.cluster import KMeans

    unit = _unit_rows(embeddings)
    distinct = len(np.unique(unit.round(6), axis=0))
    k = max(1, min(k, distinct))
    if k == 1:
        return np.zeros(len(unit), dtype=int)
    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(unit)


def clusters_covered(labels: Sequence[int]) -> int:
    return len(set(int(label) for label in labels))


def cluster_entropy(labels: Sequence[int]) -> float | None:
    """Shannon entropy in bits of how a set's items spread over clusters (0: all in one)."""
    counts = Counter(int(label) for label in labels)
    n = sum(counts.values())
    if not n:
        return None
    entropy = -sum(c / n * math.log2(c / n) for c in counts.values())
    return round(abs(entropy), 4)  # abs: a single cluster gives -0.0


def diversity_summary(embeddings, labels: Sequence[int]) -> dict:
    return {
        "n": len(labels),
        "mean_pairwise_cosine_distance": mean_pairwise_cosine_distance(embeddings) if len(labels) else None,
        "clusters_covered": clusters_covered(labels),
        "cluster_entropy_bits": cluster_entropy(labels),
    }


def project(unit: np.ndarray, method: str, seed: int) -> np.ndarray:
    """2-D points; t-SNE needs a perplexity below the number of points, so small sets get PCA."""
    if len(unit) < 2:
        return np.zeros((len(unit), 2))
    if method == "tsne" and len(unit) >= 5:
        from sklearn.manifold import TSNE

        perplexity = float(min(30, max(2, (len(unit) - 1) // 3)))
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(unit)
    from sklearn.decomposition import PCA

    return PCA(n_components=min(2, unit.shape[1]), random_state=seed).fit_transform(unit)


# ---------------------------------------------------------------- survival and cumulative sets


def survival(records: list[dict]) -> dict:
    rules = Counter(r.get("elimination_rule") for r in records if r["status"] != KEPT)
    n, k = len(records), sum(r["status"] == KEPT for r in records)
    return {
        "attempted": n,
        "kept": k,
        "kept_rate": round(k / n, 4) if n else None,
        "eliminated": {rule: rules.get(rule, 0) for rule in RULES},
    }


def stratified_mean(set_rows: list[dict], round_means: dict[int, float | None]) -> float | None:
    """A C<k> mean from per-round sample means, each weighted by that round's rows in C<k>."""
    weights = Counter(row["round"] for row in set_rows)
    rated = {r: w for r, w in weights.items() if round_means.get(r) is not None}
    total = sum(rated.values())
    return round(sum(w * round_means[r] for r, w in rated.items()) / total, 3) if total else None
