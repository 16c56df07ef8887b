"""Everything the evolution stage checks and reads before a model loads: config values, the seed
file, the test set; and the stage key that says when finished work can be reused.

    evol evolve --config configs/tiny.yaml --seeds my_seeds.json --out runs/mine   # errors here come first
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from evolve_local.dedup import load_test_instructions
from evolve_local.seeds import Seed, load_seeds
from evolve_local.steps import ModelSet
from pipeline.config import Config, semantic_dict
from pipeline.config.evolve import OPERATIONS
from pipeline.core.jsonio import InputError
from pipeline.core.manifest import file_hash
from pipeline.core.paths import seeds_path, testset_path


def check_config(config: Config) -> None:
    e = config.evolve
    if e.rounds < 0:
        raise InputError(f"evolve.rounds is {e.rounds}; give 0 (seeds only) or more rounds.")
    unknown = sorted(set(e.operation_weights) - set(OPERATIONS))
    if unknown:
        raise InputError(
            f"evolve.operation_weights names unknown operations {unknown}; known: {', '.join(OPERATIONS)}."
        )
    if any(w < 0 for w in e.operation_weights.values()) or sum(e.operation_weights.values()) <= 0:
        raise InputError("evolve.operation_weights must be non-negative with at least one above 0.")
    for name in ("dedup_threshold", "decontam_threshold"):
        if not 0 < getattr(e, name) <= 1:
            raise InputError(f"evolve.{name} must lie in (0, 1], got {getattr(e, name)}.")
    for name in (
        "dedup_shingle_chars",
        "minhash_permutations",
        "decontam_ngram",
        "verdict_max_tokens",
        "refusal_max_words",
    ):
        if getattr(e, name) < 1:
            raise InputError(f"evolve.{name} must be at least 1, got {getattr(e, name)}.")
    for name in ("evolution_max_tokens", "answer_max_tokens"):
        if getattr(e, name) is not None and getattr(e, name) < 1:
            raise InputError(f"evolve.{name} must be at least 1 or null, got {getattr(e, name)}.")
    if e.max_seeds < 0:
        raise InputError(f"evolve.max_seeds must be 0 (all seeds) or more, got {e.max_seeds}.")
    if config.engine.chunk_size < 1:
        raise InputError(f"engine.chunk_size must be at least 1, got {config.engine.chunk_size}.")


@dataclass
class Inputs:
    seeds_file: Path
    seeds: list[Seed]
    seed_format: str
    testset_file: Path | None
    tests: list[tuple[str, str]]


def load_inputs(config: Config) -> Inputs:
    """Validate the config and read seeds and test set; every error here comes before a model."""
    check_config(config)
    path = seeds_path(config.evolve.seeds)
    seeds, fmt = load_seeds(path)
    if config.evolve.max_seeds:
        seeds = seeds[: config.evolve.max_seeds]
    testset, tests = None, []
    if config.evolve.decontaminate:
        testset = testset_path(config.eval.testset)
        tests = load_test_instructions(testset)
    return Inputs(path, seeds, fmt, testset, tests)


def key_material(config: Config, inputs: Inputs, models: ModelSet) -> dict:
    """What the results depend on. The round count is left out on purpose: rounds 1..k do not
    depend on M, so asking for more rounds later continues the same evolution."""
    evolve = semantic_dict(config.evolve)
    evolve.pop("rounds")
    evolve.pop("seeds")  # the path does not matter, the content does
    return {
        "evolve": evolve,
        "engine": semantic_dict(config.engine),
        "run_seed": config.run.seed,
        "seeds": file_hash(inputs.seeds_file),
        "testset": file_hash(inputs.testset_file) if inputs.testset_file else None,
        "models": {role: list(models.identity(role)) for role in ("evolver", "equality", "responder")},
    }
