"""The `optimize` section of the config: `evol optimize`, the Auto Evol-Instruct loop that improves an
evolving method from the evolution's own failures (evolve_local/optimize.py).

    evol optimize --config configs/tiny.yaml --set optimize.steps=2 --out runs/tiny-opt

Each step evolves a mini-batch of seeds for `trajectory_rounds` rounds with the current method, has the
optimizer model (models.optimizer, default the evolver) name the problems it sees, asks it for
`candidates` rewrites of the method, and scores each by its failure rate under the elimination rules on a
development set of `dev_size` seeds evolved for `dev_rounds` rounds. The lowest failure rate is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config.checks import at_least, not_empty


@dataclass
class OptimizeConfig:
    steps: int = 2  # optimisation steps (trajectory analysis, then method optimisation)
    minibatch: int = 4  # seeds evolved for each step's trajectory analysis
    trajectory_rounds: int = 2  # rounds the mini-batch is evolved for the analysis
    candidates: int = 3  # rewrites of the method sampled per step
    dev_size: int = 8  # seeds of the development set on which every method is scored
    dev_rounds: int = 1  # rounds the development set is evolved for a score
    # The method the first step starts from: "general" (evolve_local/method.py GENERAL_METHOD) or the
    # path of a method file.
    start: str = "general"
    analysis_max_tokens: int = 256  # the optimizer's list of problems
    rewrite_max_tokens: int = 512  # one rewritten method

    def validate(self) -> None:
        at_least("optimize.steps", self.steps, 1)
        for name in ("minibatch", "trajectory_rounds", "candidates", "dev_size", "dev_rounds"):
            at_least(f"optimize.{name}", getattr(self, name), 1)
        for name in ("analysis_max_tokens", "rewrite_max_tokens"):
            at_least(f"optimize.{name}", getattr(self, name), 1)
        not_empty("optimize.start", self.start, "general, or the path of a method file")
