"""Verified instruction following: prompt files checked whole, answers scored by IFEval's and IFBench's
own checker code (offline), unscorable prompts counted apart, and the sets answered through the answer
path with a FakeEngine (skip and resume)."""

import json

import nltk
import pytest
from click.testing import CliRunner

from eval.answer import answer_all, plan_answers
from eval.verify.answers import verify_sets, write_checks
from eval.verify.checkers import load_checker
from eval.verify.prompts import checker_for, prompt_file, read_prompts
from eval.verify.scores import check_answers, difference, score
from pipeline.cli import main
from pipeline.config import Config
from pipeline.config.eval import EvalConfig
from pipeline.core.jsonio import InputError, read_json, read_jsonl
from pipeline.core.manifest import write_run_manifest
from pipeline.core.paths import SAMPLE_IFEVAL
from pipeline.engine.fake import FakeEngine
from tests.conftest import write_lines


@pytest.fixture(autouse=True)
def private_hash_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EVOL_MODELS_DIR", str(tmp_path / "store"))


def prompt(key, text, *instructions):
    return {
        "key": key,
        "prompt": text,
        "instruction_id_list": [name for name, _ in instructions],
        "kwargs": [kwargs for _, kwargs in instructions],
    }


NO_COMMA = ("punctuation:no_comma", {})
LOWERCASE = ("change_case:english_lowercase", {})


def test_prompt_files_are_checked_whole_with_the_line_named(tmp_path):
    path = tmp_path / "p.jsonl"
    write_lines(path, [prompt(1, "Say hi.", NO_COMMA), {"key": 2, "prompt": "x", "instruction_id_list": ["a"]}])
    with pytest.raises(InputError, match=r"p.jsonl:2: \"kwargs\" must be a list of 1 objects"):
        read_prompts(path)
    write_lines(path, [prompt(1, "Say hi.", NO_COMMA), prompt(1, "Again.", NO_COMMA)])
    with pytest.raises(InputError, match=r"p.jsonl:2: duplicate key '1' \(first seen on line 1\)"):
        read_prompts(path)
    write_lines(path, [prompt(1, "  ", NO_COMMA)])
    with pytest.raises(InputError, match=r"p.jsonl:1: \"prompt\" must be a non-empty string"):
        read_prompts(path)
    write_lines(path, [prompt(1, "Say hi.", ("no:such_check", {}))])
    with pytest.raises(InputError, match="neither IFEval's nor IFBench's checkers know .*no:such_check"):
        checker_for(read_prompts(path), path)


def test_the_shipped_sample_and_ifbench_load_with_their_own_checkers():
    sample = read_prompts(SAMPLE_IFEVAL)
    assert len(sample) == 26 and checker_for(sample, SAMPLE_IFEVAL).name == "ifeval"
    ifbench = read_prompts(prompt_file("ifbench", EvalConfig()))
    assert len(ifbench) == 294 and checker_for(ifbench, SAMPLE_IFEVAL).name == "ifbench"
    assert [p.key for p in read_prompts(SAMPLE_IFEVAL, limit=3)] == ["9001", "9009", "9018"]  # evenly spaced


def test_strict_and_loose_follow_the_maintained_checkers(tmp_path):
    path = tmp_path / "p.jsonl"
    write_lines(path, [prompt(1, "Describe rain.", NO_COMMA), prompt(2, "Write a note.", LOWERCASE, NO_COMMA)])
    prompts = read_prompts(path)
    checker = load_checker("ifeval")
    answers = [{"id": "1", "text": "Rain falls, softly."}, {"id": 2, "answer": "Sure!\nplease water the plants"}]
    checks = check_answers(prompts, checker, answers)
    assert checks[0].strict == [False] and checks[0].loose == [False]  # a comma is a comma
    # "Sure!" breaks lowercase as written; IFEval's loose reading drops the first line
    assert checks[1].strict == [False, True] and checks[1].loose == [True, True]
    result = score(checks, "ifeval", resamples=200, seed=1)
    assert result["prompt_strict"]["value"] == 0 and result["prompt_loose"]["value"] == 0.5
    assert result["instruction_strict"]["value"] == pytest.approx(1 / 3, abs=1e-4)
    assert result["instruction_loose"]["value"] == pytest.approx(2 / 3, abs=1e-4)
    low, high = result["prompt_loose"]["ci"]
    assert low <= 0.5 <= high and high - low > 0  # two prompts: a wide interval
    assert result["per_type"]["punctuation:no_comma"]["n"] == 2
    assert result["per_type"]["change_case:english_lowercase"]["loose"]["value"] == 1.0
    assert nltk.download("punkt_tab") is False  # the checkers' downloads are no-ops: nothing is fetched


def test_answers_must_cover_the_prompts_exactly(tmp_path):
    path = tmp_path / "p.jsonl"
    write_lines(path, [prompt(1, "a", NO_COMMA), prompt(2, "b", NO_COMMA)])
    prompts, checker = read_prompts(path), load_checker("ifeval")
    with pytest.raises(InputError, match=r"no answer for 1 of the 2 prompts \(keys 2\)"):
        check_answers(prompts, checker, [{"id": "1", "text": "x"}], "ans.jsonl")
    with pytest.raises(InputError, match=r"1 answers have ids that are no key of the prompt file \(9\)"):
        check_answers(prompts, checker, [{"id": k, "text": "x"} for k in ("1", "2", "9")], "ans.jsonl")


def test_a_checker_that_needs_missing_data_makes_its_prompts_unscorable_not_failed():
    prompts = read_prompts(prompt_file("ifbench", EvalConfig()))
    checker = load_checker("ifbench")
    start_verb = [p for p in prompts if "words:start_verb" in p.instruction_id_list]
    others = [p for p in prompts if p not in start_verb][:4]
    assert len(start_verb) == 6
    checks = check_answers(
        start_verb + others,
        checker,
        [{"id": p.key, "text": "Walk to the park. It is sunny."} for p in start_verb + others],
    )
    unscorable = [c for c in checks if c.strict is None]
    assert [c.key for c in unscorable] == [p.key for p in start_verb]
    assert "averaged_perceptron_tagger_eng" in unscorable[0].unscorable
    result = score(checks, "ifbench", resamples=0, seed=0)
    assert result["scored"] == 4 and result["unscorable"]["count"] == 6
    assert result["unscorable"]["types"]["words:start_verb"] == 6 and "words:start_verb" not in result["per_type"]
    assert result["prompt_strict"]["ci"] is None  # no resamples, no interval


def test_difference_is_paired_on_prompts_both_scored():
    before = [{"id": str(i), "strict": [False], "loose": [i < 10]} for i in range(40)]
    after = [{"id": str(i), "strict": [i < 30], "loose": [i < 30]} for i in range(40)]
    after.append({"id": "x", "strict": None, "loose": None})
    diff = difference(before, after, resamples=500, seed=3)
    assert diff["prompts"] == 40
    assert diff["prompt_strict"]["difference"] == 75.0 and diff["prompt_strict"]["significant"]
    assert diff["prompt_loose"]["difference"] == 50.0 and diff["prompt_loose"]["ci"][0] > 0
    same = difference(before, before, resamples=500, seed=3)
    assert same["prompt_loose"]["difference"] == 0 and not same["prompt_loose"]["significant"]
    assert difference(before, [{"id": "x", "strict": None, "loose": None}], 10, 0) is None


def lowercase_without_commas(request):
    return "here is my answer and it has no commas at all"


def test_prompt_sets_are_answered_through_the_answer_path_then_checked(tmp_path):
    config = Config()
    config.eval.verify_limit = 4
    config.eval.verify_max_tokens = 64
    model = tmp_path / "model"
    model.mkdir()
    out = tmp_path / "verify"
    engine = FakeEngine(lowercase_without_commas)
    sets = verify_sets(config, out)
    assert [v.answers.name for v in sets] == ["ifeval", "ifbench"]
    for v in sets:
        plan_answers(v.answers, model, "C1", {})
    summaries = answer_all(config, model, [v.answers for v in sets], engine)
    assert [s["C1"]["answers"] for s in summaries] == [4, 4]
    assert len(engine.batches) == 1  # both sets in one batch: no set waits for the other's tail
    assert all(r.max_tokens == 64 and r.temperature == 0.0 for r in engine.requests_seen)
    results = [write_checks(config, v)["C1"] for v in sets]
    rows = read_jsonl(out / "ifeval" / "C1" / "answers.jsonl")
    assert [r["id"] for r in rows] == ["9001", "9007", "9014", "9020"] and rows[0]["text"].startswith("here is")
    assert read_json(out / "ifeval" / "C1" / "manifest.json")["prompts"]["set"] == "ifeval"
    on_disk = read_json(out / "ifeval" / "C1" / "verify.json")
    assert on_disk == json.loads(json.dumps(results[0])) and on_disk["scored"] + on_disk["unscorable"]["count"] == 4
    assert on_disk["per_type"]["punctuation:no_comma"]["strict"]["value"] == 1.0  # 9001 asks for no commas
    assert len(read_jsonl(out / "ifbench" / "C1" / "checks.jsonl")) == 4

    # a second run is skipped; a changed setting of the prompt sets answers them again
    again = FakeEngine(lowercase_without_commas)
    sets = verify_sets(config, out)
    for v in sets:
        plan_answers(v.answers, model, "C1", {})
    assert all(s["C1"]["skipped"] for s in answer_all(config, model, [v.answers for v in sets], again))
    assert again.calls == 0
    config.eval.verify_max_tokens = 32
    sets = verify_sets(config, out)
    for v in sets:
        plan_answers(v.answers, model, "C1", {})
    answer_all(config, model, [v.answers for v in sets], again)
    assert len(again.requests_seen) == 8


def test_a_runs_prompt_set_stages_are_listed_in_the_run_manifest(tmp_path):
    config = Config()
    config.eval.verify_sets, config.eval.verify_limit = ["ifeval"], 2
    run = tmp_path / "run"
    write_run_manifest(run, {"run": {}}, "hash", "run: {}\n")
    model = tmp_path / "model"
    model.mkdir()
    (v,) = verify_sets(config, run / "verify")
    plan_answers(v.answers, model, "C1", {})
    answer_all(config, model, [v.answers], FakeEngine("ok"))
    listed = read_json(run / "manifest.json")["stages"]["verify/ifeval/C1"]
    assert listed["status"] == "done" and listed["outputs"] == ["verify/ifeval/C1/answers.jsonl"]
    assert not (run / "verify" / "ifeval" / "manifest.json").exists()


def test_evol_verify_scores_answers_made_elsewhere(tmp_path):
    answers = tmp_path / "elsewhere" / "answers.jsonl"
    answers.parent.mkdir()
    prompts = read_prompts(SAMPLE_IFEVAL)
    write_lines(answers, [{"id": p.key, "text": "a plain answer with no commas"} for p in prompts])
    result = CliRunner().invoke(main, ["verify", "--prompts", str(SAMPLE_IFEVAL), "--answers", str(answers)])
    assert result.exit_code == 0, result.output
    assert "ifeval checkers: prompt-level strict" in result.output
    verify = read_json(answers.parent / "verify.json")
    assert verify["scored"] == 26 and verify["checker"] == {
        "name": "ifeval",
        "package": "lm_eval",
        "version": "0.4.13",
    }
    assert len(read_jsonl(answers.parent / "checks.jsonl")) == 26

    bad = CliRunner().invoke(main, ["verify", "--prompts", "ifbench", "--answers", str(answers)])
    assert bad.exit_code != 0 and "no answer for 294 of the 294 prompts" in bad.output
    assert "Traceback" not in bad.output


def test_the_report_section_compares_round_counts_on_the_same_prompts(tmp_path):
    from eval.report.verify import verify_report_json, verify_sections

    config = Config()
    config.run.rounds = [0, 1]
    config.eval.verify_sets = ["ifeval"]
    config.eval.bootstrap_resamples = 200
    model = tmp_path / "model"
    model.mkdir()
    run = tmp_path / "run"
    replies = {"C0": "Sure, here it is.", "C1": "here it is and no commas"}  # C1 follows lowercase and no comma
    for name, reply in replies.items():
        (v,) = verify_sets(config, run / "verify")
        plan_answers(v.answers, model, name, {})
        answer_all(config, model, [v.answers], FakeEngine(reply))
        write_checks(config, v)
    (section,) = verify_sections(run, config)
    assert section.title == "Verified instruction following: IFEval-format prompts"
    (header, rows), (type_header, type_rows) = section.tables
    assert [row[0] for row in rows] == ["C0", "C1"] and rows[0][-1] == 26
    assert type_header[2:] == ["C0 strict", "C1 strict"]
    comma = next(row for row in type_rows if row[0] == "punctuation:no_comma")
    assert comma[1] == 2 and comma[2].startswith("0.0%") and comma[3].startswith("100.0%")
    line = next(p for p in section.paragraphs if "C1 minus C0" in p)
    assert "on 26 prompts" in line and "strict +" in line
    numbers = verify_report_json(run, config)
    (diff,) = numbers["verified_differences"]
    assert diff["prompt_strict"]["difference"] > 0 and (diff["a"], diff["b"]) == ("C0", "C1")
    assert verify_sections(tmp_path / "empty", config) == []


# Instructions built without their arguments: IFEval's checker draws the missing ones from `random`
# (a letter outside a-z, a language, a sentence count and its relation, placeholders, bullets).
DRAWING = [
    ("keywords:letter_frequency", {"letter": "é", "let_frequency": 3, "let_relation": "at least"}),
    ("language:response_language", {}),
    ("length_constraints:number_sentences", {}),
    ("detectable_content:number_placeholders", {}),
    ("detectable_format:number_bullet_lists", {}),
]
SCORE_IN_A_PROCESS = """
import json, sys
from eval.verify.checkers import load_checker
from eval.verify.prompts import read_prompts
from eval.verify.scores import check_answers
prompts = read_prompts(sys.argv[1])
if sys.argv[3] == "reversed":
    prompts = prompts[::-1]
answers = [json.loads(line) for line in open(sys.argv[2])]
checks = check_answers(prompts, load_checker("ifeval"), answers, seed=42)
print(json.dumps(sorted([c.to_dict() for c in checks], key=lambda c: c["id"])))
"""


def test_the_same_answers_score_the_same_in_every_process_and_order(tmp_path):
    """Each check's random draws are seeded from the prompt's key and the run seed: two processes, and
    the prompts in two orders, give equal results for every prompt."""
    import subprocess
    import sys

    answers_text = [
        "Hello world. This is a test.",
        "- one\n- two\n- three\n\nBonjour, ceci est une réponse en français. [name] et [place].",
        "Sentence one. Sentence two. Sentence three. Sentence four. Sentence five. Sentence six.",
        "* a\n* b\n[x] [y] [z] aaa bbb ccc ddd eee",
    ]
    lines, answers = [], []
    for i in range(24):
        name, kwargs = DRAWING[i % len(DRAWING)]
        lines.append({"key": 7000 + i, "prompt": f"Prompt {i}", "instruction_id_list": [name], "kwargs": [kwargs]})
        answers.append({"id": 7000 + i, "text": answers_text[i % len(answers_text)]})
    prompts, answer_file = tmp_path / "prompts.jsonl", tmp_path / "answers.jsonl"
    write_lines(prompts, lines)
    write_lines(answer_file, answers)
    runs = []
    for order in ("as-read", "reversed", "as-read"):
        done = subprocess.run(
            [sys.executable, "-c", SCORE_IN_A_PROCESS, str(prompts), str(answer_file), order],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        runs.append(json.loads(done.stdout.splitlines()[-1]))
    assert runs[0] == runs[1] == runs[2]
    assert all(check["strict"] is not None for check in runs[0])  # every prompt was really scored
