"""The `analysis` section of the config (see pipeline/config/__init__.py for how configs load).

evol analyze runs/tiny --set analysis.difficulty_per_round=20 --set analysis.projection=pca
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config.checks import at_least, one_of
from pipeline.config.fields import throughput

PROJECTIONS = ("tsne", "pca")


@dataclass
class AnalysisConfig:
    # Judge-rated difficulty (1-10) of a sample of each round's kept instructions (round 0: the
    # seeds). Off: no judge model loads, and the difficulty numbers are absent.
    difficulty: bool = True
    difficulty_per_round: int = 50  # instructions rated per round; 0: every kept instruction
    judge_model: str = ""  # empty: models.judge
    difficulty_max_tokens: int = 64  # the score line plus a one-sentence reason
    # Force the output to start with the score alone on its first line (structured outputs);
    # off: free text, read by the tolerant parser in eval/analysis/complexity.py.
    constrained_difficulty: bool = True
    instruction_max_chars: int = 4000  # longer instructions are cut (and marked) in the judge prompt; 0: never
    # Diversity on all-MiniLM-L6-v2 embeddings: at most this many instructions per round and per
    # C<k> (a seeded sample; 0: all), k-means with `clusters` centres fitted once on all of them.
    diversity_per_set: int = 2000
    clusters: int = 10
    projection: str = "tsne"  # the 2-D picture coloured by round: tsne or pca
    embedding_batch_size: int = throughput(64)
    embedding_device: str = throughput("")  # empty: a GPU when there is one, else the CPU
    chunk_size: int = throughput(0)  # judge requests per engine call; 0: engine.chunk_size

    def validate(self) -> None:
        """Values no analysis can run with; each failure names its key."""
        one_of("analysis.projection", self.projection, PROJECTIONS)
        at_least("analysis.clusters", self.clusters, 2, " (k-means needs two centres to compare)")
        for name in ("difficulty_per_round", "diversity_per_set", "instruction_max_chars"):
            at_least(f"analysis.{name}", getattr(self, name), 0, " (0: all / never)")
        if self.difficulty:
            at_least("analysis.difficulty_max_tokens", self.difficulty_max_tokens, 2, " (the score and a line break)")
        at_least("analysis.embedding_batch_size", self.embedding_batch_size, 1)
        at_least("analysis.chunk_size", self.chunk_size, 0, " (0: engine.chunk_size)")
