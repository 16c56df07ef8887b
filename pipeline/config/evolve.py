"""The `evolve` section of the config (see pipeline/config/__init__.py for how configs load).

evol evolve --config configs/tiny.yaml --set evolve.rounds=2 --out runs/tiny
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.config.checks import ConfigError, at_least, between, not_empty, optional_at_least
from pipeline.config.fields import throughput

OPERATIONS = ("add_constraints", "deepen", "concretize", "increase_reasoning", "complicate_input", "in_breadth")


@dataclass
class EvolveConfig:
    seeds: str = ""  # empty: the seed set shipped in evolve_local/data/
    rounds: int = 4
    # Evolve only the first N seeds of the file (0: all): a small CPU run or a quick trial.
    max_seeds: int = 0
    # How instructions are evolved: "ops" (the six hand-written operations of evolve_local/prompts.py)
    # or the path of an evolving-method file written by `evol optimize` (evolve_local/method.py), used
    # for every attempt instead. The stage key holds the method's hash, not the path.
    method: str = "ops"
    # Relative weights of the six operations (evolve.method=ops); a missing operation gets weight 0.
    # Uniform by default.
    operation_weights: dict[str, float] = field(default_factory=lambda: {op: 1.0 for op in OPERATIONS})
    # Seeds that carry an answer keep it unless this is on (the WizardLM paper regenerated them).
    regenerate_seed_answers: bool = False
    # Model for the equality (information-gain) verdict; empty: the evolver.
    equality_model: str = ""
    # Output budgets per step; null: engine.max_tokens. An evolved instruction needs far less
    # room than an answer, and the verdict is one or two words.
    evolution_max_tokens: int | None = None
    answer_max_tokens: int | None = None
    verdict_max_tokens: int = 8
    # Constrain the verdict to exactly EQUAL or DIFFERENT with the engine's structured outputs, so
    # a small evolver cannot answer off-format. Off: free text, read by the tolerant parser.
    constrained_verdict: bool = True
    # With one model in every role, run evolve, check and answer as chains on one engine (an item's
    # next request is sent when its last one ends) instead of one step after the other over the
    # pool. Same requests, same seeds; only the engine's batches differ.
    overlap_steps: bool = throughput(True)
    # refusal_short: an answer saying "sorry" in fewer words than this is taken as a refusal.
    refusal_max_words: int = 80
    # Near-duplicate removal over the whole training set (MinHash over character shingles).
    dedup: bool = True
    dedup_threshold: float = 0.85
    dedup_shingle_chars: int = 5
    minhash_permutations: int = 128
    # Decontamination against the test set of config `eval.testset`: an item is dropped when it
    # shares a run of `decontam_ngram` words with a test instruction (or contains a whole shorter
    # one of at least 5 words), or when its MinHash similarity to one reaches `decontam_threshold`.
    # Off, a missing test set is no error and the count is 0.
    decontaminate: bool = True
    decontam_ngram: int = 8
    decontam_threshold: float = 0.7

    def validate(self) -> None:
        """Values no evolution can run with; each failure names its key (see pipeline/config/checks.py)."""
        at_least("evolve.rounds", self.rounds, 0, " (0: the seeds alone)")
        at_least("evolve.max_seeds", self.max_seeds, 0, " (0: every seed)")
        not_empty("evolve.method", self.method, "ops, or the path of a method file written by evol optimize")
        unknown = sorted(set(self.operation_weights) - set(OPERATIONS))
        if unknown:
            raise ConfigError(
                f"evolve.operation_weights names unknown operations {unknown}; known: {', '.join(OPERATIONS)}."
            )
        for op, weight in self.operation_weights.items():
            at_least(f"evolve.operation_weights.{op}", weight, 0)
        if sum(self.operation_weights.values()) <= 0:
            raise ConfigError(
                f"evolve.operation_weights must give the operations weights of 0 or more with at least one "
                f"above 0, not {self.operation_weights}."
            )
        for name in ("evolution_max_tokens", "answer_max_tokens"):
            optional_at_least(f"evolve.{name}", getattr(self, name), 1)
        for name in ("verdict_max_tokens", "refusal_max_words", "dedup_shingle_chars", "minhash_permutations"):
            at_least(f"evolve.{name}", getattr(self, name), 1)
        at_least("evolve.decontam_ngram", self.decontam_ngram, 1)
        for name in ("dedup_threshold", "decontam_threshold"):
            between(f"evolve.{name}", getattr(self, name), 0, 1, low_open=True)
