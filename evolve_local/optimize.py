"""Auto Evol-Instruct, offline: improve an evolving method from the evolution's own failures.

    evol optimize --config configs/tiny.yaml --out runs/tiny-opt
    evol run --config configs/tiny.yaml --set evolve.method=runs/tiny-opt/best_method.json

The seeds are split once (seeded) into a development set and the rest; the seeds used are answered
once (round 0), so no evolution below answers them again. Then, from the starting method
(optimize.start, GENERAL_METHOD by default), scored first on the development set, each step s:
  1. trajectory analysis: a mini-batch of the rest is evolved for `trajectory_rounds` rounds with the
     current method; the optimizer model (models.optimizer) reads each seed's successive versions,
     with the rule that rejected each failed one, and names the problems, one per line;
  2. method optimisation: the optimizer writes `candidates` rewrites of the method (one seed each); each
     is scored by evolving the development set for `dev_rounds` rounds: its failure rate is the share of
     attempts eliminated by the elimination rules (eliminate.py, dedup.py), with the count per rule;
  3. the lowest failure rate among the current method and the candidates is the next current method;
     ties go to the current method, then to the earlier candidate.
Every evolution is `run_evolve` on one shared engine holder (chained, resumable, the Ray backend's
chain jobs when engine.backend=ray); the optimizer's replies go through `run_step` as any step does.

Outputs in <out>/optimize/: seeds/ (the split, with answers), step_<s>/ (trajectory/, candidate_<j>/ runs,
analysis.jsonl, rewrites.jsonl), methods/step<s>-c<j>.json (every method file with its lineage,
problems, failure rate, counts per rule and `chosen`), optimize.json (the summary, rewritten after each
step), manifest.json last; <out>/best_method.json is the chosen method with the history per step.
A killed run resumes: finished evolutions are skipped, saved replies are not asked again.
"""

from __future__ import annotations

import dataclasses
import random
import re
import sys
from pathlib import Path

from evolve_local.eliminate import METHOD_RULE_VERSION
from evolve_local.evolve import run_evolve
from evolve_local.inputs import Inputs
from evolve_local.method import GENERAL_METHOD, PLACEHOLDER, TAIL, Method, load_method
from evolve_local.prompts import analysis_prompt, messages, rewrite_prompt
from evolve_local.seeds import Seed
from evolve_local.steps import Engines, ModelSet, load_step, run_step
from pipeline.config import Config, semantic_dict
from pipeline.core.jsonio import InputError, iter_jsonl, read_json, write_json, write_jsonl
from pipeline.core.manifest import begin_stage, file_hash, finish_stage
from pipeline.core.records import RULES
from pipeline.core.seeds import derive_seed
from pipeline.engine import ChatRequest

STAGE = "optimize"
BEST_FILE = "best_method.json"
VERSION_CHARS = 400  # each version of an instruction shown to the optimizer, at most
MAX_PROBLEMS = 8


# ---------------------------------------------------------------- inputs


def start_method(config: Config) -> Method:
    start = config.optimize.start
    return (
        Method(GENERAL_METHOD, name="general", lineage={"step": 0})
        if start == "general"
        else load_method(start, "optimize.start")
    )


def split_seeds(config: Config, seeds: list[Seed]) -> tuple[list[Seed], list[list[Seed]]]:
    """The development set and each step's mini-batch (disjoint from it), drawn with the run seed."""
    o = config.optimize
    if o.dev_size + o.minibatch > len(seeds):
        raise InputError(
            f"optimize.dev_size ({o.dev_size}) plus optimize.minibatch ({o.minibatch}) need {o.dev_size + o.minibatch} "
            f"seeds, but the seed file gives {len(seeds)}; lower them or give more seeds."
        )
    order = list(seeds)
    random.Random(derive_seed(config.run.seed, "optimize", "split")).shuffle(order)
    dev, rest = order[: o.dev_size], order[o.dev_size :]
    batches = [
        random.Random(derive_seed(config.run.seed, "optimize", "minibatch", s)).sample(rest, o.minibatch)
        for s in range(1, o.steps + 1)
    ]
    return dev, batches


def key_material(config: Config, inputs: Inputs, models: ModelSet) -> dict:
    """What an optimisation's results depend on: the evolve stage's own key (evolve_local/inputs.py)
    without its method, the optimize section, the optimizer and the starting method."""
    from evolve_local.inputs import key_material as evolve_key

    material = evolve_key(config, dataclasses.replace(inputs, method=None), models)
    material.pop("method")
    return {
        **material,
        "optimize": {k: v for k, v in semantic_dict(config.optimize).items() if k != "start"},
        "start": start_method(config).hash,
        "optimizer": list(models.identity("optimizer")),
        "method_rule": METHOD_RULE_VERSION,  # every score counts what the rules eliminate
    }


# ---------------------------------------------------------------- the loop


class Optimisation:
    def __init__(self, config: Config, stage_dir: Path, models: ModelSet, inputs: Inputs, engines: Engines):
        self.config, self.dir, self.models, self.inputs, self.engines = config, stage_dir, models, inputs, engines
        self.scores: dict[str, dict] = {}  # method hash -> score: a rewrite equal to a scored method is not rerun

    def evolution(self, where: Path, seeds_file: Path, method: Method | None, rounds: int) -> dict:
        """One evolution of a seed file (its seeds already answered) on the shared engine; its stats."""
        config = dataclasses.replace(
            self.config,
            evolve=dataclasses.replace(self.config.evolve, rounds=rounds, max_seeds=0, regenerate_seed_answers=False),
        )
        seeds = [Seed(d["id"], d["instruction"], d.get("output")) for _, d in iter_jsonl(seeds_file)]
        inputs = dataclasses.replace(self.inputs, seeds_file=seeds_file, seeds=seeds, method=method)
        return run_evolve(config, where, self.models, inputs, quiet=True, engines=self.engines)

    def answered_seeds(self, dev: list[Seed], batches: list[list[Seed]]) -> tuple[Path, list[Path]]:
        """Round 0 once over every seed used: the development set's and each mini-batch's seed file,
        with the answers, so the evolutions below answer no seed again."""
        folder = self.dir / "seeds"
        used = {s.id: s for s in [*dev, *(s for batch in batches for s in batch)]}
        write_jsonl(folder / "used.jsonl", [vars(s) for s in sorted(used.values(), key=lambda s: s.id)])
        self.evolution(folder / "answers", folder / "used.jsonl", None, 0)
        kept = {}  # a seed eliminated in round 0 (contaminated, too long) is left out of every set
        for _, record in iter_jsonl(folder / "answers" / "evolve" / "round_0.jsonl"):
            if record["status"] == "kept":
                kept[record["id"]] = {
                    "id": record["id"],
                    "instruction": record["instruction"],
                    "output": record["response"],
                }
        files = []
        for name, part in (("dev", dev), *((f"minibatch_{s}", b) for s, b in enumerate(batches, 1))):
            path = folder / f"{name}.jsonl"
            write_jsonl(path, [kept[s.id] for s in part if s.id in kept])
            files.append(path)
        return files[0], files[1:]

    def score(self, method: Method, where: Path, dev_file: Path) -> dict:
        """The method's failure rate on the development set, with the counts per rule."""
        if method.hash in self.scores:
            return {**self.scores[method.hash], "same_as_scored": True}
        stats = self.evolution(where, dev_file, method, self.config.optimize.dev_rounds)
        totals = stats["evolution_totals"]
        attempted = totals["attempted"]
        eliminated = attempted - totals["kept"]
        score = {
            "failure_rate": round(eliminated / attempted, 4) if attempted else 1.0,
            "attempted": attempted,
            "eliminated_total": eliminated,
            "eliminated": {rule: totals["eliminated"].get(rule, 0) for rule in RULES},
            "kept_per_round": [r["kept"] for r in stats["rounds"][1:]],
            "attempted_per_round": [r["attempted"] for r in stats["rounds"][1:]],
        }
        self.scores[method.hash] = score
        return score

    def ask(self, step_dir: Path, name: str, requests: list[ChatRequest]) -> dict[str, dict]:
        """The optimizer's replies, saved in step_dir/<name>.jsonl; a rerun asks only what is missing."""
        out = step_dir / f"{name}.jsonl"
        done = load_step(out)
        todo = [r for r in requests if r.id not in done]
        run_step(
            self.engines,
            "optimizer",
            name,
            f"optimize {step_dir.name} {name}",
            out,
            step_dir / "timing.jsonl",
            todo,
            len(todo),
            self.config.engine.chunk_size,
            passes=lambda record: True,
        )
        return load_step(out)

    def analyse(self, s: int, step_dir: Path, method: Method, batch_file: Path) -> tuple[list[str], str, dict]:
        """Trajectory analysis: evolve the mini-batch, then the optimizer names the problems."""
        o = self.config.optimize
        stats = self.evolution(step_dir / "trajectory", batch_file, method, o.trajectory_rounds)
        text, rules = trajectories(step_dir / "trajectory" / "evolve", o.trajectory_rounds)
        request = ChatRequest(
            id="analysis",
            purpose="analysis",
            max_tokens=o.analysis_max_tokens,
            messages=messages(analysis_prompt(method.text, text, rules)),
            seed=derive_seed(self.config.run.seed, "optimize", s, "analysis"),
        )
        reply = self.ask(step_dir, "analysis", [request])["analysis"]
        totals = stats["evolution_totals"]
        trajectory = {"attempted": totals["attempted"], "kept": totals["kept"], "eliminated": totals["eliminated"]}
        return parse_problems(reply["text"]), reply["text"], trajectory

    def rewrites(self, s: int, step_dir: Path, method: Method, problems: list[str]) -> list[tuple[str, str | None]]:
        """Method optimisation: `candidates` rewrites, each (method text, what was repaired or None)."""
        o = self.config.optimize
        requests = [
            ChatRequest(
                id=f"rewrite-{j}",
                purpose="rewrite",
                max_tokens=o.rewrite_max_tokens,
                messages=messages(rewrite_prompt(method.text, problems)),
                seed=derive_seed(self.config.run.seed, "optimize", s, "rewrite", j),
            )
            for j in range(1, o.candidates + 1)
        ]
        replies = self.ask(step_dir, "rewrites", requests)
        return [candidate_text(replies[r.id]["text"]) for r in requests]


def run_optimize(config: Config, out_dir: str | Path, models: ModelSet, inputs: Inputs, quiet: bool = False) -> dict:
    """Run config.optimize.steps steps into out_dir; returns optimize.json's summary."""
    out_dir = Path(out_dir)
    dev, batches = split_seeds(config, inputs.seeds)
    stage = begin_stage(out_dir, STAGE, key_material(config, inputs, models), quiet=quiet)
    if stage.done:
        return read_json(stage.dir / "optimize.json")
    engines = Engines(models)
    opt = Optimisation(config, stage.dir, models, inputs, engines)
    try:
        summary = _steps(opt, config, stage.dir, dev, batches)
    finally:
        engines.close()
    best = summary["chosen"]
    finish_stage(
        stage,
        config=semantic_dict(config),
        rows={"steps": config.optimize.steps, "methods": sum(len(s["candidates"]) for s in summary["steps"]) + 1},
        models={role: models.names[role] for role in ("evolver", "equality", "responder", "optimizer")},
        seeds={"run_seed": config.run.seed},
        extra={"best": best, "failure_rate_per_step": [h["failure_rate"] for h in summary["history"]]},
        outputs=[out_dir / BEST_FILE],
    )
    return summary


def _steps(opt: Optimisation, config: Config, folder: Path, dev: list[Seed], batches: list[list[Seed]]) -> dict:
    dev_file, batch_files = opt.answered_seeds(dev, batches)
    methods_dir = folder / "methods"
    methods_dir.mkdir(exist_ok=True)
    current = start_method(config)
    current_score = opt.score(current, folder / "step_0" / "start", dev_file)
    current = dataclasses.replace(current, score=current_score)
    history = [{"step": 0, "name": current.name, "hash": current.hash, **_brief(current_score)}]
    summary = {
        "seeds_file": str(opt.inputs.seeds_file),
        "dev": {"file": str(dev_file.relative_to(folder)), "hash": file_hash(dev_file), "seeds": len(dev)},
        "start": {"name": current.name, "hash": current.hash, **current_score},
        "steps": [],
        "history": history,
        "chosen": current.hash,
    }
    current.save(methods_dir / "step0-start.json")
    for s, batch_file in enumerate(batch_files, 1):
        step_dir = folder / f"step_{s}"
        problems, analysis_text, trajectory = opt.analyse(s, step_dir, current, batch_file)
        entries = [("incumbent", current, current_score, None)]
        for j, (text, repaired) in enumerate(opt.rewrites(s, step_dir, current, problems), 1):
            lineage = {"parent": current.hash, "step": s, "candidate": j, "problems": problems, "repaired": repaired}
            candidate = Method(text, name=f"step{s}-c{j}", lineage=lineage)
            score = opt.score(candidate, step_dir / f"candidate_{j}", dev_file)
            entries.append((f"candidate_{j}", dataclasses.replace(candidate, score=score), score, repaired))
        # lowest failure rate; ties: the incumbent (listed first), then the earlier candidate
        winner = min(range(len(entries)), key=lambda i: (entries[i][2]["failure_rate"], i))
        candidates = _save_candidates(entries, winner, methods_dir, folder)
        current, current_score = entries[winner][1], entries[winner][2]
        history.append({"step": s, "name": current.name, "hash": current.hash, **_brief(current_score)})
        summary["steps"].append(
            {
                "step": s,
                "parent": entries[0][1].hash,
                "minibatch": [d["id"] for _, d in iter_jsonl(batch_file)],
                "trajectory": trajectory,
                "problems": problems,
                "analysis_text": analysis_text,
                "incumbent_failure_rate": entries[0][2]["failure_rate"],
                "candidates": candidates,
                "kept_incumbent": winner == 0,
                "chosen": current.hash,
                "failure_rate": current_score["failure_rate"],
            }
        )
        summary["chosen"] = current.hash
        write_json(folder / "optimize.json", summary)
        rates = ", ".join(f"{c['failure_rate']:.1%}" for c in candidates)
        kept = "the current method" if winner == 0 else current.name
        print(
            f"[optimize] step {s}: failure rate {entries[0][2]['failure_rate']:.1%}, candidates {rates}; kept {kept}",
            file=sys.stderr,
        )
    best = dataclasses.replace(current, history=history)
    best.save(folder.parent / BEST_FILE)
    write_json(folder / "optimize.json", summary)
    return summary


def _save_candidates(entries: list[tuple], winner: int, methods_dir: Path, folder: Path) -> list[dict]:
    """Each candidate of a step (entries after the incumbent) saved as a method file that says whether
    it was chosen; returns their summaries for optimize.json."""
    candidates = []
    for i, (_, method, score, repaired) in enumerate(entries[1:], 1):
        path = methods_dir / f"{method.name}.json"
        method = dataclasses.replace(method, lineage={**method.lineage, "chosen": i == winner})
        method.save(path)
        candidates.append(
            {
                "name": method.name,
                "hash": method.hash,
                "file": str(path.relative_to(folder)),
                "repaired": repaired,
                "chosen": i == winner,
                **score,
            }
        )
    return candidates


def _brief(score: dict) -> dict:
    return {k: score[k] for k in ("failure_rate", "attempted", "eliminated")}


# ---------------------------------------------------------------- reading and writing the optimizer's text


def trajectories(evolve_dir: Path, rounds: int) -> tuple[str, str]:
    """Each seed's successive versions, with kept or the rule that rejected it, and the count per rule."""
    versions: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    for _, r in iter_jsonl(evolve_dir / "round_0.jsonl"):
        if r["status"] == "kept":
            versions[r["root_id"]] = [f"  v0 (the seed): {_short(r['instruction'])}"]
    for k in range(1, rounds + 1):
        for _, r in iter_jsonl(evolve_dir / f"round_{k}.jsonl"):
            if r["status"] == "kept":
                outcome = "kept"
            else:
                counts[r["elimination_rule"]] = counts.get(r["elimination_rule"], 0) + 1
                outcome = f"rejected, {r['elimination_rule']}: {r['elimination_detail']}"
            versions.setdefault(r["root_id"], []).append(f"  round {k} ({outcome}): {_short(r['instruction'])}")
    text = "\n".join(f"Task {i}:\n" + "\n".join(lines) for i, lines in enumerate(versions.values(), 1))
    rules = ", ".join(f"{rule} {n}" for rule, n in sorted(counts.items())) or "none"
    return text, rules


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= VERSION_CHARS else text[:VERSION_CHARS] + " [...]"


_BULLET = re.compile(r"^\s*(?:(?:[-*•]|\d+[.)])\s*)+")


def parse_problems(text: str) -> list[str]:
    """The problems the optimizer named: its non-empty lines, bullets stripped, at most MAX_PROBLEMS,
    each once. A reply with none gives [] (the rewrite prompt then says none were named)."""
    problems: list[str] = []
    for line in text.splitlines():
        line = _BULLET.sub("", line).strip()
        if len(line.split()) >= 2 and line not in problems:
            problems.append(line[:300])
    return problems[:MAX_PROBLEMS]


def candidate_text(reply: str) -> tuple[str, str | None]:
    """A rewrite as a method: the reply without the <<< >>> fences or code fences the prompt showed; a
    reply that lost the {instruction} placeholder (or repeats it) gets the standard tail back, and
    what was repaired is said."""
    lines = [line for line in reply.strip().splitlines() if line.strip() not in ("<<<", ">>>", "```")]
    text = "\n".join(lines).strip()
    count = text.count(PLACEHOLDER)
    if count == 1:
        return text, None
    repaired = "no {instruction} placeholder" if count == 0 else f"{count} {{instruction}} placeholders"
    return text.replace(PLACEHOLDER, "the task").rstrip() + TAIL, f"{repaired}: the standard tail was added"
