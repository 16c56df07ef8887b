"""Everything the evolution stage checks and reads before a model loads: config values, the seed
file, the test set; and the stage key that says when finished work can be reused.

    evol evolve --config configs/tiny.yaml --seeds my_seeds.json --out runs/mine   # errors here come first
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from evolve_local.eliminate import METHOD_RULE_VERSION
from evolve_local.method import Method, describe, resolve_method
from evolve_local.seeds import Seed, load_seeds
from evolve_local.steps import ModelSet
from pipeline.config import Config, semantic_dict, stable_hash
from pipeline.core.jsonio import InputError
from pipeline.core.manifest import file_hash
from pipeline.core.paths import seeds_path, testset_path
from pipeline.core.testset import read_testset


def check_config(config: Config) -> None:
    """The sections an evolution reads (pipeline/config/evolve.py and the engine's)."""
    config.validate("engine", "evolve")


@dataclass
class Inputs:
    seeds_file: Path
    seeds: list[Seed]
    seed_format: str
    testset_file: Path | None
    tests: list[tuple[str, str]]
    method: Method | None = None  # evolve.method read and checked; None: the six operations


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
        tests = decontamination_list(testset, config)
    method = resolve_method(config.evolve.method)
    return Inputs(path, seeds, fmt, testset, tests, method)


def decontamination_list(path: Path, config: Config) -> list[tuple[str, str]]:
    """(id, instruction) of every test item, read as the answer stage reads them (any format and
    field mapping `eval` accepts; a multi-turn question by its first turn), eval.limit not applied."""
    if not path.is_file():
        raise InputError(
            f"Test set {path} not found, so evolved data cannot be decontaminated: point "
            f"eval.testset at the test-set file, or set evolve.decontaminate=false to skip."
        )
    return [(item.id, item.instruction) for item in read_testset(path, config.eval)]


def key_material(config: Config, inputs: Inputs, models: ModelSet) -> dict:
    """What the results depend on. The round count is left out on purpose: rounds 1..k do not
    depend on M, so asking for more rounds later continues the same evolution."""
    evolve = semantic_dict(config.evolve)
    evolve.pop("rounds")
    evolve.pop("seeds")  # the path does not matter, the content does
    evolve.pop("equality_model")  # the models are keyed by content below, not by the name that found them
    evolve.pop("method")  # a path: the method's text is keyed by its hash below
    if inputs.method is not None:
        evolve.pop("operation_weights")  # a method replaces the operations: their weights change nothing
    engine = semantic_dict(config.engine)
    engine.pop("max_lora_rank")  # no adapter is served while evolving
    return {
        "evolve": evolve,
        "engine": engine,
        "run_seed": config.run.seed,
        "seeds": file_hash(inputs.seeds_file),
        # the instructions read, not the file: the field mapping decides which text is checked
        "testset": stable_hash(inputs.tests) if inputs.testset_file else None,
        "models": {role: list(models.identity(role)) for role in ("evolver", "equality", "responder")},
        # a method's evolution is judged by one rule more (eliminate.copied_method_words); "ops" stays as it was
        "method": describe(inputs.method)["hash"] + (f"+{METHOD_RULE_VERSION}" if inputs.method else ""),
    }
