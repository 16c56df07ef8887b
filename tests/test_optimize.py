"""evol optimize (Auto Evol-Instruct) and evolve.method with scripted fake engines: the method file and its
one-sentence errors, the selection by failure rate with its tie rule, every candidate saved with its
lineage, determinism, a killed optimisation resuming without asking anything twice, and an evolution
with an optimised method keyed and recorded by the method's hash."""

import json
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from evolve_local.eliminate import copied_method_words, method_phrases
from evolve_local.evolve import run_evolve
from evolve_local.inputs import key_material, load_inputs
from evolve_local.method import GENERAL_METHOD, Method, load_method
from evolve_local.optimize import candidate_text, parse_problems, run_optimize, split_seeds
from evolve_local.steps import ModelSet
from pipeline.cli import main
from pipeline.config import stable_hash
from pipeline.core.jsonio import InputError, read_json, read_jsonl
from pipeline.engine.fake import BlockFakeEngine
from tests.conftest import VOCAB, Factory, make_config, parent_of, scripted

ROOT = Path(__file__).resolve().parent.parent

# Three rewrites the scripted optimizer writes, by request id: one that makes every evolution repeat its
# parent (all eliminated), one that lost the placeholder (repaired), one as good as the second.
REWRITES = {
    "rewrite-1": "SAMEALWAYS: copy the task.\n#Original Task#\n{instruction}\n\n#Rewritten Task#\n",
    "rewrite-2": "<<<\nBETTER: make it harder.\n>>>",
    "rewrite-3": "BETTER too: make it harder, one step.\n#Original Task#\n{instruction}\n\n#Rewritten Task#\n",
}


def optimizer_scripted(request):
    """The optimizer's two prompts first (both quote the method, whose labels look like an evolution)."""
    text = request.prompt_text
    if text.rstrip().endswith("Improved method:"):
        return REWRITES[request.id]
    if text.rstrip().endswith("Problems:"):
        return "- The rewrite repeats its parent.\n- 2. Some answers refuse.\nok\n"
    if "SAMEALWAYS" in text and "#Original Task#" in text:
        return parent_of(text)  # no_information_gain, every time
    if "BETTER" in text and "#Original Task#" in text and "EQUAL or DIFFERENT" not in text:
        rng = random.Random(request.seed)
        return parent_of(text).replace("EMPTYME", "").replace("SAMEME", "") + " Then " + rng.choice(VOCAB) + "."
    return scripted(request)


class OptFactory(Factory):
    def __init__(self, **options):
        super().__init__(respond=optimizer_scripted, **options)
        names = {"evolver": "fake", "equality": "fake", "responder": "fake", "optimizer": "fake"}
        self.models = ModelSet(names, {role: "h" for role in names}, self.make)


def opt_config(tmp_path, *overrides):
    return make_config(
        tmp_path,
        "optimize.steps=2",
        "optimize.candidates=3",
        "optimize.dev_size=5",
        "optimize.minibatch=3",
        "optimize.trajectory_rounds=2",
        "optimize.dev_rounds=1",
        *overrides,
    )


def optimise(tmp_path, out="opt", factory=None, *overrides):
    config = opt_config(tmp_path, *overrides)
    factory = factory or OptFactory()
    summary = run_optimize(config, tmp_path / out, factory.models, load_inputs(config), quiet=True)
    return summary, factory


# ---------------------------------------------------------------- the method file


def write_method(tmp_path, data, name="m.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


@pytest.mark.parametrize(
    "data, says",
    [
        ("{not json", "is not JSON"),
        ([1, 2], "must hold a JSON object"),
        ({"text": "Make {instruction} harder."}, "is not an evolving method"),
        ({"format": "evol-method/1", "text": "Make it harder."}, "exactly once (it holds it 0 times)"),
        ({"format": "evol-method/1", "text": "{instruction} and {instruction}"}, "it holds it 2 times"),
        ({"format": "evol-method/1", "text": ""}, "non-empty string"),
        ({"format": "evol-method/1", "text": "{instruction}", "lineage": []}, "'lineage' must be a JSON object"),
        ({"format": "evol-method/1", "text": "{instruction}!", "hash": "0" * 16}, "does not match its text"),
    ],
)
def test_a_file_that_is_not_a_method_is_one_sentence(tmp_path, data, says):
    with pytest.raises(InputError, match="^Method file .*m.json") as err:
        load_method(write_method(tmp_path, data))
    assert says in str(err.value) and "\n" not in str(err.value)


def test_a_bad_method_stops_evol_evolve_before_any_model(tmp_path):
    bad = write_method(tmp_path, {"format": "evol-method/1", "text": "no placeholder"})
    config = make_config(tmp_path)
    result = CliRunner().invoke(
        main,
        ["evolve", "--out", str(tmp_path / "run"), "--set", f"evolve.method={bad}"]
        + [
            arg
            for o in (f"evolve.seeds={config.evolve.seeds}", f"eval.testset={config.eval.testset}")
            for arg in ("--set", o)
        ],
    )
    assert result.exit_code == 2, result.output
    assert "Error: Method file" in result.output and "{instruction}" in result.output
    assert not (tmp_path / "run" / "evolve").exists()  # nothing started


@pytest.mark.parametrize(
    "data, says",
    [
        ({"format": "evol-method/2", "text": "Harder: {instruction}"}, "its 'format' is 'evol-method/2', not"),
        ({"text": "Harder: {instruction}"}, "it has no 'format', 'evol-method/1'"),
        ({"format": "evol-method/1", "text": "Make it harder."}, "exactly once (it holds it 0 times)"),
    ],
)
@pytest.mark.parametrize("command, key", [("run", "evolve.method"), ("optimize", "optimize.start")])
def test_a_bad_method_file_stops_evol_run_and_evol_optimize_before_any_model(
    command, key, data, says, tmp_path, monkeypatch
):
    """The sentence names the setting that gave the file: evol optimize's starting method is optimize.start."""
    import pipeline.run
    from pipeline.engine import vllm_backend

    def refuse(*args, **kwargs):
        raise AssertionError("a stage or an engine was started")

    monkeypatch.setattr(pipeline.run, "_start", refuse)
    monkeypatch.setattr(vllm_backend.VLLMEngine, "__init__", refuse)
    bad = write_method(tmp_path, data)
    config = make_config(tmp_path)
    where = ["--set", f"run.runs_dir={tmp_path / 'runs'}"] if command == "run" else ["--out", str(tmp_path / "opt")]
    args = [command, *where, "--set", f"{key}={bad}", "--set", f"models.dir={ROOT / 'models'}"]
    for override in (f"evolve.seeds={config.evolve.seeds}", f"eval.testset={config.eval.testset}"):
        args += ["--set", override]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"Error: Method file {bad} ({key})") and says in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists() and not (tmp_path / "opt").exists()  # nothing started


def test_a_method_replaces_the_operations_and_its_hash_keys_the_stage(tmp_path):
    method = Method("BETTER: harder.\n#Original Task#\n{instruction}\n\n#Rewritten Task#\n", name="mine")
    path = method.save(tmp_path / "mine.json")
    config = make_config(tmp_path, f"evolve.method={path}", rounds=1)
    inputs = load_inputs(config)
    factory = OptFactory()
    stats = run_evolve(config, tmp_path / "run", factory.models, inputs, quiet=True)
    evolutions = [
        r for r in factory.requests if "#Rewritten Task#" in r.prompt_text and "Second task" not in r.prompt_text
    ]
    assert evolutions and all(r.prompt_text.startswith("BETTER: harder.") for r in evolutions)
    records = read_jsonl(tmp_path / "run" / "evolve" / "round_1.jsonl")
    assert {r["operation"] for r in records} == {"evol_method"}
    assert stats["rounds"][1]["kept"] > 0
    manifest = read_json(tmp_path / "run" / "evolve" / "manifest.json")
    assert manifest["method"] == {"kind": "method", "name": "mine", "hash": method.hash}
    assert load_method(tmp_path / "run" / "evolve" / "method.json").hash == method.hash

    # the key holds the method's hash: another text moves it, the same text elsewhere does not
    ops = make_config(tmp_path, rounds=1)
    models = factory.models
    same = Method(method.text, name="renamed").save(tmp_path / "copy.json")
    other = Method(method.text + " ", name="mine").save(tmp_path / "other.json")

    def key(c):
        return stable_hash(key_material(c, load_inputs(c), models))

    assert key(config) == key(make_config(tmp_path, f"evolve.method={same}", rounds=1))
    assert len({key(config), key(ops), key(make_config(tmp_path, f"evolve.method={other}", rounds=1))}) == 3


# ---------------------------------------------------------------- a method's own words

# A method with an example in it, as SmolLM2 wrote one; the scripted evolver copies the example's answer.
LEAKY = (
    "LEAKY: make it harder. For example: what is fifteen percent of two hundred? The answer is two.\n"
    "Then name a river and it must be clear.\n#Original Task#\n{instruction}\n\n#Rewritten Task#\n"
)


def leaky_scripted(request):
    text = request.prompt_text
    if text.rstrip().endswith("Improved method:") and request.id == "rewrite-1":
        return LEAKY
    if text.startswith("LEAKY") and "EQUAL or DIFFERENT" not in text:
        return parent_of(text) + " The answer is two."
    return optimizer_scripted(request)


def test_an_evolution_that_copies_its_methods_words_is_eliminated():
    said = copied_method_words("Add 3 and 4. The answer is two.", "Add 3 and 4.", LEAKY)
    assert said == "the instruction repeats the method's words 'the answer is two'"
    assert (
        copied_method_words("Add 3 and 4. The answer is two, why?", "Add 3 and 4. The answer is two.", LEAKY) is None
    )
    assert copied_method_words("Add 3 and 4. The answer is two.", "Add 3 and 4.", None) is None  # the operations
    assert copied_method_words("Add 3 and 4, then name a river.", "Add 3 and 4.", LEAKY)  # any run of the method
    assert copied_method_words("Add 3 and 4 and it must be clear.", "Add 3 and 4.", LEAKY) is None  # stop words
    phrases = method_phrases(LEAKY)
    assert ("and", "it", "must", "be") not in phrases  # stop words alone: said without copying anything
    assert not any("original" in run or "instruction" in run for run in phrases)  # the labels: the phrase list


def test_a_leaking_method_scores_worse_and_its_evolutions_are_keyed_by_the_rule(tmp_path):
    path = Method(LEAKY, name="leaky").save(tmp_path / "leaky.json")
    config = make_config(tmp_path, f"evolve.method={path}", rounds=1)
    factory = OptFactory()
    factory.respond = leaky_scripted
    stats = run_evolve(config, tmp_path / "run", factory.models, load_inputs(config), quiet=True)
    records = read_jsonl(tmp_path / "run" / "evolve" / "round_1.jsonl")
    copied = [r for r in records if r["elimination_rule"] == "copied_prompt_words"]
    assert copied and all("the method's words 'the answer is two'" in r["elimination_detail"] for r in copied)
    assert stats["rounds"][1]["kept"] == 0
    models = factory.models
    assert key_material(config, load_inputs(config), models)["method"].endswith("+copied-method-words-4")
    ops = make_config(tmp_path, rounds=1)
    assert key_material(ops, load_inputs(ops), models)["method"] == "ops"  # the operations' key did not move

    # in an optimisation the leaking rewrite (candidate 1) would keep every evolution without the rule
    summary, _ = optimise(tmp_path, "opt", factory)
    first = summary["steps"][0]["candidates"][0]
    assert first["failure_rate"] == 1.0 and first["eliminated"]["copied_prompt_words"] == first["attempted"]
    assert not first["chosen"]


# ---------------------------------------------------------------- the optimisation


def test_each_step_keeps_the_lowest_failure_rate_and_saves_every_candidate(tmp_path):
    summary, _ = optimise(tmp_path)
    folder = tmp_path / "opt" / "optimize"
    assert [s["step"] for s in summary["steps"]] == [1, 2]
    start = summary["start"]
    assert start["name"] == "general" and start["hash"] == Method(GENERAL_METHOD).hash
    for step in summary["steps"]:
        assert step["problems"] == ["The rewrite repeats its parent.", "Some answers refuse."]
        rates = [c["failure_rate"] for c in step["candidates"]]
        assert len(rates) == 3
        best = min([step["incumbent_failure_rate"], *rates])
        assert step["failure_rate"] == best
        chosen = [c for c in step["candidates"] if c["chosen"]]
        assert len(chosen) == (0 if step["kept_incumbent"] else 1)
        for c in step["candidates"]:
            saved = load_method(folder / c["file"])  # a valid method file, lineage and score inside
            assert saved.hash == c["hash"]
            assert saved.lineage["parent"] == step["parent"] and saved.lineage["step"] == step["step"]
            assert saved.lineage["problems"] == step["problems"] and saved.lineage["chosen"] == c["chosen"]
            assert saved.score["failure_rate"] == c["failure_rate"]
            assert sum(c["eliminated"].values()) == c["eliminated_total"]
    first = summary["steps"][0]["candidates"]
    assert first[0]["failure_rate"] == 1.0 and first[0]["eliminated"]["no_information_gain"] == first[0]["attempted"]
    assert first[1]["repaired"] and not first[2]["repaired"]
    # c2 and c3 evolve alike, so they tie below the start: the earlier candidate wins the tie
    assert first[1]["failure_rate"] == first[2]["failure_rate"] < summary["start"]["failure_rate"]
    assert first[1]["chosen"] and summary["steps"][0]["chosen"] == first[1]["hash"]
    # step 2 starts from it; its own rewrites do no better, so the incumbent is kept (ties go to it)
    assert summary["steps"][1]["parent"] == first[1]["hash"] and summary["steps"][1]["kept_incumbent"]
    history = [h["failure_rate"] for h in summary["history"]]
    assert history == sorted(history, reverse=True) and len(history) == 3
    best = load_method(tmp_path / "opt" / "best_method.json")
    assert best.hash == summary["chosen"] == first[1]["hash"] and len(best.history) == 3
    manifest = read_json(folder / "manifest.json")
    assert manifest["best"] == best.hash and manifest["failure_rate_per_step"] == history


def test_the_same_config_gives_the_same_methods_and_a_finished_one_asks_nothing(tmp_path):
    summary, factory = optimise(tmp_path, "a")
    again, _ = optimise(tmp_path, "b")
    assert json.dumps(summary["steps"]) == json.dumps(again["steps"])
    assert (tmp_path / "a" / "best_method.json").read_text() == (tmp_path / "b" / "best_method.json").read_text()
    _, rerun = optimise(tmp_path, "a")
    assert rerun.requests == [] and rerun.started == []


@pytest.mark.parametrize("kill_at", [3, 11, 25])
def test_a_killed_optimisation_resumes_without_asking_anything_twice(tmp_path, kill_at):
    _, full = optimise(tmp_path, "full")
    calls = [0]

    class Killed(Exception):
        pass

    class Killing(OptFactory):
        def make(self, role):
            engine = super().make(role)
            generate = engine.generate

            def dying(requests):
                if calls[0] == kill_at:
                    raise Killed  # before the batch: what finished before it is all that was saved
                calls[0] += 1
                return generate(requests)

            engine.generate = dying
            return engine

    killing = Killing()
    with pytest.raises(Killed):
        optimise(tmp_path, "run", killing)
    summary, resumed = optimise(tmp_path, "run")
    assert killing.requests and resumed.requests
    assert len(killing.requests) + len(resumed.requests) == len(full.requests)
    assert (tmp_path / "run" / "best_method.json").read_text() == (tmp_path / "full" / "best_method.json").read_text()


def test_too_few_seeds_for_the_development_set_is_one_sentence(tmp_path):
    config = opt_config(tmp_path, "optimize.dev_size=8")
    with pytest.raises(InputError, match=r"optimize.dev_size \(8\) plus optimize.minibatch \(3\) need 11 seeds"):
        split_seeds(config, load_inputs(config).seeds)


def test_the_development_set_and_the_minibatches_are_disjoint_and_seeded(tmp_path):
    config = opt_config(tmp_path)
    seeds = load_inputs(config).seeds
    dev, batches = split_seeds(config, seeds)
    assert len(dev) == 5 and [len(b) for b in batches] == [3, 3]
    assert all(not {s.id for s in dev} & {s.id for s in b} for b in batches)
    assert (dev, batches) == split_seeds(config, seeds)


def test_the_optimizer_text_is_read_tolerantly():
    assert parse_problems("1. Too long.\n* drifts off topic\n\nok\n- Too long.") == ["Too long.", "drifts off topic"]
    assert parse_problems("") == []
    text, repaired = candidate_text("```\nDo better with {instruction}.\n```")
    assert text == "Do better with {instruction}." and repaired is None
    text, repaired = candidate_text("Do better.")
    assert text.count("{instruction}") == 1 and "no {instruction} placeholder" in repaired
    text, repaired = candidate_text("{instruction} {instruction}")
    assert text.count("{instruction}") == 1 and repaired.startswith("2 ")


def test_on_the_ray_backend_the_same_jobs_choose_the_same_method(tmp_path):
    """engine.backend=ray: every evolution of the optimisation is a chain job and the optimizer's
    prompts a streamed job on the block engine the Ray backend is, and they choose what the local
    path chooses, file for file."""
    local, _ = optimise(tmp_path, "local")

    blocks = OptFactory(block_size=2)
    blocks.engine_class = BlockFakeEngine
    ray, _ = optimise(tmp_path, "ray", blocks, "engine.backend=ray")

    assert json.dumps(ray["steps"]) == json.dumps(local["steps"])
    assert (tmp_path / "ray" / "best_method.json").read_text() == (tmp_path / "local" / "best_method.json").read_text()
    chains = [c for _, engine in blocks.started for c in engine.chains]
    streams = [s for _, engine in blocks.started for s in engine.streams]
    # the start's score, and per step a trajectory of 2 rounds and a 1-round evolution of each candidate
    # not scored before (step 2's scripted rewrites are step 1's texts again)
    scored = [sum(not c.get("same_as_scored") for c in step["candidates"]) for step in ray["steps"]]
    assert scored == [3, 0] and len(chains) == 1 + (2 + 3) + (2 + 0)
    optimizer_jobs = [s for s in streams if s[0].prompt_text.rstrip().endswith(("Problems:", "Improved method:"))]
    assert [len(s) for s in optimizer_jobs] == [1, 3, 1, 3]  # per step: the analysis, then 3 rewrites
    for run in (tmp_path / "ray" / "optimize").rglob("evolve/manifest.json"):
        assert read_json(run)["backend"] == "ray"
