"""The round loop with scripted fake engines: batching, pool replacement, lineage, every rule in
place, resume after a crash, determinism, no generation on a finished rerun, engine swaps."""

from pathlib import Path

import pytest
from click.testing import CliRunner

from evolve_local.evolve import run_evolve
from evolve_local.inputs import load_inputs
from evolve_local.prompts import ORIGINAL_LABEL
from pipeline.core.jsonio import InputError, read_json, read_jsonl
from pipeline.core.records import field_names
from tests.conftest import SEEDS, Factory, make_config, scripted, write_seeds, write_testset


def by_root(path):
    return {r["root_id"]: r for r in read_jsonl(path)}


def test_rules_lineage_and_pool_replacement(tmp_path):
    config = make_config(tmp_path)
    factory = Factory()
    stats = run_evolve(config, tmp_path / "run", factory.models, quiet=True)
    evolve_dir = tmp_path / "run" / "evolve"

    r1 = by_root(evolve_dir / "round_1.jsonl")
    expected = {
        "s2": "no_information_gain",
        "s3": "no_information_gain",
        "s4": "copied_prompt_words",
        "s5": "no_information_gain",
        "s7": "refusal_short",
        "s8": "stopwords_only",
    }
    assert {root: r["elimination_rule"] for root, r in r1.items() if r["status"] == "eliminated"} == expected
    assert r1["s6"]["status"] == "kept" and r1["s6"]["verdict"] == "unparsed"  # unparsed never eliminates
    assert r1["s5"]["verdict"] == "equal" and r1["s5"]["response"] is None  # rejected before answering
    assert stats["rounds"][1]["unparsed_verdicts"] == 1
    assert stats["rounds"][1]["eliminated"]["no_information_gain"] == 3

    # lineage: every attempt names its parent and root; kept ones replace their parent next round
    r2 = by_root(evolve_dir / "round_2.jsonl")
    assert r2["s0"]["parent_id"] == r1["s0"]["id"] == "s0@r1"
    assert r2["s0"]["instruction"].startswith(r1["s0"]["instruction"])
    assert r2["s4"]["parent_id"] == "s4"  # failed: went back as it was and is evolved again
    for record in list(r1.values()) + list(r2.values()):
        assert list(record) == field_names(record["round"])  # the one record type, every field in order
        assert (record["status"] == "kept") == (record["elimination_rule"] is None)
        assert record["evolver_model"] == "fake" and record["tokens"]["evolve"]["prompt"] > 0

    # C_k is C_{k-1} plus the kept evolutions of round k, in chat messages format
    data = tmp_path / "run" / "data"
    c0, c1, c2 = (read_jsonl(data / f"C{k}.jsonl") for k in range(3))
    assert len(c0) == len(SEEDS)
    assert c1[: len(c0)] == c0 and c2[: len(c1)] == c1
    assert [r["id"] for r in c1[len(c0) :]] == [r["id"] for r in r1.values() if r["status"] == "kept"]
    assert c1[-1]["messages"][0]["role"] == "user" and c1[-1]["messages"][1]["role"] == "assistant"
    assert c1[-1]["messages"][1]["content"].startswith("A useful answer")
    assert stats["rounds"][2]["training_set_size"] == len(c2)
    assert sum(stats["rounds"][1]["operations"].values()) == stats["rounds"][1]["attempted"] == len(SEEDS)


def kind(request) -> str:
    text = request.prompt_text
    return "evolve" if ORIGINAL_LABEL in text else "check" if "EQUAL or DIFFERENT" in text else "answer"


def test_steps_are_batched_in_order_evolve_check_answer(tmp_path):
    config = make_config(tmp_path, "evolve.overlap_steps=false", rounds=1)
    factory = Factory()
    run_evolve(config, tmp_path / "run", factory.models, quiet=True)
    ((_, engine),) = factory.started  # one model plays every role: one engine start for the run
    kinds = []
    for batch in engine.batches:
        assert len(batch) <= 4 and len({kind(r) for r in batch}) == 1
        kinds.append(kind(batch[0]))
    # seed answers (9 = 4+4+1), then round 1: evolve 9, check 6 survivors, answer 5
    assert kinds == ["answer"] * 3 + ["evolve"] * 3 + ["check"] * 2 + ["answer"] * 2
    checks = [r for b in engine.batches for r in b if "EQUAL or DIFFERENT" in r.prompt_text]
    assert all(r.temperature == 0.0 for r in checks)


def test_finished_run_regenerates_nothing_and_more_rounds_continue(tmp_path):
    run_dir = tmp_path / "run"
    run_evolve(make_config(tmp_path, rounds=1), run_dir, Factory().models, quiet=True)
    again = Factory()
    run_evolve(make_config(tmp_path, rounds=1), run_dir, again.models, quiet=True)
    assert again.started == []  # not even an engine start

    more = Factory()
    stats = run_evolve(make_config(tmp_path, rounds=2), run_dir, more.models, quiet=True)
    assert {r.id.split("@")[-1] for r in more.requests} == {"r2"}  # only round 2 was generated
    assert stats["rounds_done"] == 2 and (run_dir / "data" / "C2.jsonl").exists()

    fresh = tmp_path / "fresh"
    run_evolve(make_config(tmp_path, rounds=2), fresh, Factory().models, quiet=True)
    for name in ("evolve/round_2.jsonl", "data/C2.jsonl"):
        assert (run_dir / name).read_text() == (fresh / name).read_text()


def test_resume_after_a_crash_loses_and_duplicates_nothing(tmp_path):
    class Crash(Exception):
        pass

    calls = {"n": 0}

    def crash_in_round_two(request):
        if "@r2" in request.id and ORIGINAL_LABEL not in request.prompt_text:
            calls["n"] += 1
            if calls["n"] > 5:  # in the middle of round 2's checks
                raise Crash()
        return scripted(request)

    run_dir = tmp_path / "run"
    by_step = "evolve.overlap_steps=false"
    with pytest.raises(Crash):
        run_evolve(make_config(tmp_path, by_step), run_dir, Factory(crash_in_round_two).models, quiet=True)
    work = run_dir / "evolve" / "work"
    done_before = {r["id"] for r in read_jsonl(work / "round_2.check.jsonl")}
    assert done_before and not (work / "pool_2.jsonl").exists()
    # simulate a kill in the middle of writing a line
    with (work / "round_2.check.jsonl").open("a") as handle:
        handle.write('{"id": "s0@r2", "text": "DIFF')

    resumed = Factory()
    run_evolve(make_config(tmp_path, by_step), run_dir, resumed.models, quiet=True)
    seen = [r.id for r in resumed.requests]
    assert not any(r.endswith("@r1") for r in seen)  # round 1 was finished
    assert not any(ORIGINAL_LABEL in r.prompt_text for r in resumed.requests)  # round 2 evolutions kept
    checked_again = {r.id for r in resumed.requests if "EQUAL or DIFFERENT" in r.prompt_text}
    assert not checked_again & done_before
    checks = read_jsonl(work / "round_2.check.jsonl")
    assert len(checks) == len({r["id"] for r in checks})  # no duplicates

    clean = tmp_path / "clean"
    run_evolve(make_config(tmp_path), clean, Factory().models, quiet=True)
    for name in ("evolve/round_1.jsonl", "evolve/round_2.jsonl", "data/C2.jsonl"):
        assert (run_dir / name).read_text() == (clean / name).read_text()


OUTPUTS = ("evolve/round_1.jsonl", "evolve/round_2.jsonl", "evolve/work/pool_2.jsonl", "data/C2.jsonl")


def test_chained_steps_overlap_and_write_what_step_by_step_writes(tmp_path):
    run_evolve(make_config(tmp_path, "evolve.overlap_steps=false"), tmp_path / "by_step", Factory().models, quiet=True)
    chained = Factory(streaming=True, finish_per_poll=1)
    stats = run_evolve(make_config(tmp_path), tmp_path / "chained", chained.models, quiet=True)
    waves = Factory()  # an engine with no submit/poll (the data-parallel one) gets mixed waves
    run_evolve(make_config(tmp_path), tmp_path / "waves", waves.models, quiet=True)
    for name in OUTPUTS:
        expected = (tmp_path / "by_step" / name).read_text()
        assert (tmp_path / "chained" / name).read_text() == expected
        assert (tmp_path / "waves" / name).read_text() == expected

    ((_, engine),) = chained.started
    rounds = [[r for r in batch if "@r" in r.id] for batch in engine.polls]
    assert max(map(len, engine.polls)) <= 4  # engine.chunk_size requests in flight at most
    assert any({"evolve", "check"} <= {kind(r) for r in batch} for batch in rounds)  # steps overlap
    assert any({"evolve", "answer"} <= {kind(r) for r in batch} for batch in rounds)
    order: dict[str, list[str]] = {}
    for batch in engine.batches:  # finished requests, in the order they finished
        for request in batch:
            if "@r" in request.id:
                assert request.purpose == kind(request)
                order.setdefault(request.id, []).append(request.purpose)
    assert all(steps == ["evolve", "check", "answer"][: len(steps)] for steps in order.values())
    assert any(len({kind(r) for r in batch}) > 1 for batch in waves.started[0][1].batches)

    # the timing rows share the engine time out to the steps; counts stay per step
    one = stats["rounds"][1]["generation"]
    assert (one["evolve"]["requests"], one["check"]["requests"], one["answer"]["requests"]) == (9, 6, 5)
    rows = read_jsonl(tmp_path / "chained" / "evolve" / "work" / "round_1.timing.jsonl")
    assert rows and all(row["overlapped"] for row in rows)


def test_chained_round_resumes_after_a_crash_with_nothing_redone(tmp_path):
    class Crash(Exception):
        pass

    calls = {"n": 0}

    def crash_in_round_two(request):
        if "@r2" in request.id:
            calls["n"] += 1
            if calls["n"] > 12:
                raise Crash()
        return scripted(request)

    run_dir = tmp_path / "run"
    with pytest.raises(Crash):
        run_evolve(make_config(tmp_path), run_dir, Factory(crash_in_round_two, streaming=True).models, quiet=True)
    work = run_dir / "evolve" / "work"
    persisted = {
        (step, r["id"])
        for step in ("evolve", "check", "answer")
        for r in read_jsonl(work / f"round_2.{step}.jsonl")
        if (work / f"round_2.{step}.jsonl").exists()
    }
    assert len(persisted) == 12  # every finished request was saved, the buffered ones too
    assert not (work / "pool_2.jsonl").exists()
    assert not (work / "scratch.sqlite").exists()  # the lookups' scratch file went with the process
    (work / "scratch.sqlite").write_bytes(b"left by a killed process")  # as a SIGKILL would leave it

    resumed = Factory(streaming=True)
    run_evolve(make_config(tmp_path), run_dir, resumed.models, quiet=True)
    redone = {(r.purpose, r.id) for r in resumed.requests}
    assert redone and not redone & persisted and all(r.id.endswith("@r2") for r in resumed.requests)
    assert not (work / "scratch.sqlite").exists()
    run_evolve(make_config(tmp_path), tmp_path / "clean", Factory(streaming=True).models, quiet=True)
    for name in OUTPUTS:
        assert (run_dir / name).read_text() == (tmp_path / "clean" / name).read_text()


def test_rerun_from_scratch_is_identical_and_seeds_matter(tmp_path):
    outs = []
    for name, seed in (("a", 42), ("b", 42), ("c", 7)):
        run_evolve(make_config(tmp_path, f"run.seed={seed}"), tmp_path / name, Factory().models, quiet=True)
        outs.append(
            [
                (tmp_path / name / f).read_text()
                for f in ("evolve/round_1.jsonl", "evolve/round_2.jsonl", "data/C2.jsonl")
            ]
        )
    assert outs[0] == outs[1]
    assert outs[0] != outs[2]


def test_different_responder_swaps_engines_one_alive_at_a_time(tmp_path):
    factory = Factory(responder="fake-responder")
    started_alive = []
    original = factory.make

    def make(role):
        started_alive.append(sum(not e.closed for _, e in factory.started))
        return original(role)

    factory.models.make = make
    run_evolve(make_config(tmp_path, rounds=1), tmp_path / "run", factory.models, quiet=True)
    assert started_alive and all(n == 0 for n in started_alive)  # the previous engine was closed first
    assert [role for role, _ in factory.started] == ["responder", "evolver", "responder"]
    assert all(engine.closed for _, engine in factory.started)
    record = read_jsonl(tmp_path / "run" / "evolve" / "round_1.jsonl")[0]
    assert record["responder_model"] == "fake-responder" and record["evolver_model"] == "fake"


def test_seed_answers_kept_or_regenerated_and_seed_filters(tmp_path):
    seeds = write_seeds(
        tmp_path,
        [
            "Explain how tides work.",
            "Name a bird.",
            "Describe the water cycle in four steps for a child, please.",
            "Explain how tides work!",
            "word " * 40,
        ],
        outputs=["Moon pulls water.", None, "x", "y", "z"],
    )
    config = make_config(tmp_path, "engine.max_model_len=30", rounds=0, seeds=seeds)
    factory = Factory(max_model_len=30)
    stats = run_evolve(config, tmp_path / "run", factory.models, quiet=True)
    r0 = by_root(tmp_path / "run" / "evolve" / "round_0.jsonl")
    assert (r0["s0"]["response"], r0["s0"]["responder_model"]) == ("Moon pulls water.", "seed file")
    assert r0["s1"]["response"].startswith("A useful answer") and r0["s1"]["responder_model"] == "fake"
    assert r0["s2"]["elimination_rule"] == "contaminated"
    assert r0["s3"]["elimination_rule"] == "near_duplicate"
    assert r0["s4"]["elimination_rule"] == "too_long"
    assert [r.id for r in factory.requests] == ["s1"]  # only the seed with no answer was answered
    assert stats["rounds"][0]["decontaminated"] == 1 and stats["rounds"][0]["near_duplicates"] == 1

    regen = Factory(max_model_len=30)
    config = make_config(
        tmp_path, "engine.max_model_len=30", "evolve.regenerate_seed_answers=true", rounds=0, seeds=seeds
    )
    run_evolve(config, tmp_path / "regen", regen.models, quiet=True)
    assert by_root(tmp_path / "regen" / "evolve" / "round_0.jsonl")["s0"]["response"].startswith("A useful")


def test_too_long_evolution_prompt_is_eliminated(tmp_path):
    seeds = write_seeds(tmp_path, ["Explain how tides work.", "Summarise this text: " + "lorem " * 150])
    factory = Factory(max_model_len=200)
    stats = run_evolve(
        make_config(tmp_path, "engine.max_model_len=200", rounds=1, seeds=seeds),
        tmp_path / "run",
        factory.models,
        quiet=True,
    )
    r1 = by_root(tmp_path / "run" / "evolve" / "round_1.jsonl")
    assert r1["s1"]["elimination_rule"] == "too_long" and r1["s0"]["status"] == "kept"
    assert stats["rounds"][1]["eliminated"]["too_long"] == 1


def test_operation_weights_pick_only_allowed_operations(tmp_path):
    config = make_config(tmp_path, "evolve.operation_weights={deepen: 1, in_breadth: 0}", rounds=2)
    stats = run_evolve(config, tmp_path / "run", Factory().models, quiet=True)
    assert stats["rounds"][1]["operations"]["deepen"] == len(SEEDS)
    assert sum(stats["rounds"][2]["operations"].values()) == stats["rounds"][2]["operations"]["deepen"]


@pytest.mark.parametrize(
    "override, message",
    [
        ("evolve.rounds=-1", "evolve.rounds"),
        ("evolve.operation_weights={shout: 1}", "unknown operations"),
        ("evolve.operation_weights={deepen: 0}", "at least one above 0"),
        ("evolve.dedup_threshold=1.5", "evolve.dedup_threshold"),
        ("engine.chunk_size=0", "engine.chunk_size"),
    ],
)
def test_impossible_options_are_refused_before_any_model(tmp_path, override, message):
    factory = Factory()
    with pytest.raises(InputError, match=message):
        run_evolve(make_config(tmp_path, override), tmp_path / "run", factory.models, quiet=True)
    assert factory.started == []


def test_missing_test_set_is_an_error_unless_decontamination_is_off(tmp_path):
    with pytest.raises(InputError, match="evolve.decontaminate=false"):
        load_inputs(make_config(tmp_path, testset=tmp_path / "none.jsonl"))
    config = make_config(tmp_path, "evolve.decontaminate=false", rounds=0, testset=tmp_path / "none.jsonl")
    stats = run_evolve(config, tmp_path / "run", Factory().models, quiet=True)
    assert stats["test_instructions"] == 0 and stats["rounds"][0]["decontaminated"] == 0


def test_cli_reports_bad_seeds_in_one_line(tmp_path):
    from pipeline.cli import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi"}\n')
    result = CliRunner().invoke(
        main,
        [
            "evolve",
            "--seeds",
            str(bad),
            "--out",
            str(tmp_path / "run"),
            "--set",
            f"eval.testset={write_testset(tmp_path)}",
        ],
    )
    assert result.exit_code == 2
    assert "unknown seed format" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_stats_file_is_complete(tmp_path):
    run_evolve(make_config(tmp_path, rounds=1), tmp_path / "run", Factory().models, quiet=True)
    stats = read_json(tmp_path / "run" / "evolve" / "stats.json")
    one = stats["rounds"][1]
    assert set(one) >= {
        "attempted",
        "kept",
        "eliminated",
        "unparsed_verdicts",
        "operations",
        "mean_instruction_words",
        "generation_seconds",
        "generation_tokens",
        "near_duplicates",
        "decontaminated",
    }
    assert one["kept"] + sum(one["eliminated"].values()) == one["attempted"]
    assert one["generation"]["evolve"]["requests"] == len(SEEDS)
    manifest = read_json(tmp_path / "run" / "evolve" / "manifest.json")
    assert manifest["rounds_done"] == 1 and manifest["rows"]["C1"] == one["training_set_size"]


def test_an_mt_bench_file_decontaminates_by_its_first_turns(tmp_path):
    """A FastChat MT-bench question file as eval.testset: evolve reads it as answer and judge do (the
    decontamination reader was once Evol-Instruct-only and stopped here)."""
    mt_bench = Path(__file__).parent / "fixtures" / "testsets" / "fastchat_mt_bench.jsonl"
    seeds = write_seeds(
        tmp_path,
        [
            "Draft a short notice inviting colleagues to a Friday book swap.",  # question 81's first turn
            "Now rewrite the notice so that every sentence starts with the letter B.",  # its second turn
            "Explain how tides work.",
        ],
        outputs=["a", "b", "c"],
    )
    config = make_config(tmp_path, rounds=0, seeds=seeds, testset=mt_bench)
    stats = run_evolve(config, tmp_path / "run", Factory().models, quiet=True)
    r0 = by_root(tmp_path / "run" / "evolve" / "round_0.jsonl")
    assert r0["s0"]["elimination_rule"] == "contaminated" and "test item 81" in r0["s0"]["elimination_detail"]
    assert r0["s1"]["elimination_rule"] is None and r0["s2"]["elimination_rule"] is None
    assert stats["test_instructions"] == 3 and stats["rounds"][0]["decontaminated"] == 1
