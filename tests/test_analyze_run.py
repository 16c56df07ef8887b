"""`evol analyze` on a small finished run (evolved with the fake engines of test_evolve_loop), with a
FakeEngine judge and a bag-of-words embedder: outputs, numbers against the round files, skip,
resume, ratings kept across a diversity change, bad inputs before any model, the report section."""

import hashlib
import json

import numpy as np
import pytest
from click.testing import CliRunner

from eval.analysis.analyze import analyze_run
from eval.analysis.complexity import SCORE_REGEX
from eval.report.analysis import analysis_report_json, analysis_section
from evolve_local.evolve import run_evolve
from pipeline.cli import main
from pipeline.config.analysis import AnalysisConfig
from pipeline.core.jsonio import InputError, read_json, read_jsonl
from pipeline.engine.fake import FakeEngine
from tests.conftest import Factory, make_config


def bag_of_words(texts):
    """A deterministic stand-in for MiniLM: hashed word counts, so shared words mean closeness."""
    out = np.zeros((len(texts), 64))
    for i, text in enumerate(texts):
        for word in text.lower().split():
            out[i, int(hashlib.md5(word.encode()).hexdigest(), 16) % 64] += 1
    return out


def judge(request):
    """Longer instructions get higher scores; one in five answers off-format."""
    task = request.prompt_text.split("<<<\n", 1)[1]
    if "GARBLE" in task:
        return "I cannot tell."
    return f"{min(10, 1 + len(task.split()) // 6)}\nIt has several parts."


@pytest.fixture(scope="module")
def evolved(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evolved")
    config = make_config(tmp, rounds=2)
    run_evolve(config, tmp / "run", Factory().models, quiet=True)
    return config, tmp / "run"


def fresh_copy(evolved, tmp_path):
    import shutil

    config, run_dir = evolved
    shutil.copytree(run_dir, tmp_path / "run")
    config.analysis = AnalysisConfig(projection="pca", clusters=3)
    return config, tmp_path / "run"


def test_analysis_numbers_match_the_round_files(evolved, tmp_path):
    config, run_dir = fresh_copy(evolved, tmp_path)
    engine = FakeEngine(judge)
    result = analyze_run(config, run_dir, engine=engine, embedder=bag_of_words)
    out = run_dir / "analysis"
    stats = read_json(run_dir / "evolve" / "stats.json")

    assert [r["round"] for r in result["per_round"]] == [0, 1, 2]
    assert [c["set"] for c in result["cumulative"]] == ["C0", "C1", "C2"]
    for k in (1, 2):
        survival, expected = result["per_round"][k]["survival"], stats["rounds"][k]
        assert (survival["attempted"], survival["kept"]) == (expected["attempted"], expected["kept"])
        assert survival["eliminated"] == expected["eliminated"]
    assert [c["rows"] for c in result["cumulative"]] == [
        len(read_jsonl(run_dir / "data" / f"C{k}.jsonl")) for k in range(3)
    ]
    # the fake evolver appends 13 words per round: kept instructions get longer, and the judge says harder
    words = [r["text"]["kept"]["mean_words"] for r in result["per_round"]]
    assert words[0] < words[1] < words[2]
    means = [r["difficulty"]["mean"] for r in result["per_round"]]
    assert means[0] < means[2]
    ops = result["per_operation"]
    assert (
        sum(v["attempted"] for v in ops.values()) == stats["rounds"][1]["attempted"] + stats["rounds"][2]["attempted"]
    )
    assert all(r["diversity"]["clusters_covered"] <= 3 for r in result["cumulative"])
    assert result["cumulative"][2]["diversity"]["n"] == result["cumulative"][2]["rows"]

    ratings = read_jsonl(out / "ratings.jsonl")
    kept_total = sum(
        len([r for r in read_jsonl(run_dir / "evolve" / f"round_{k}.jsonl") if r["status"] == "kept"])
        for k in range(3)
    )
    assert len(ratings) == kept_total  # 50 per round is more than this run has: every kept one is rated
    instructions = {
        r["id"]: r["instruction"] for k in range(3) for r in read_jsonl(run_dir / "evolve" / f"round_{k}.jsonl")
    }
    garbled = [r for r in ratings if "GARBLE" in instructions[r["id"]]]
    assert garbled and all(r["score"] is None and r["error"] == "no score found" and r["raw"] for r in garbled)
    assert all(r["score"] is not None and r["method"] == "first_line" for r in ratings if r not in garbled)
    assert result["judge_failures"]["unparsed"] == len(garbled)
    requests = engine.requests_seen
    assert all(r.temperature == 0.0 and r.regex == SCORE_REGEX for r in requests)
    assert len(engine.batches) == -(-len(requests) // config.engine.chunk_size)  # chunked, not one by one

    assert read_json(out / "analysis.json") == json.loads(json.dumps(result))
    assert (out / "manifest.json").is_file() and len(read_jsonl(out / "projection.jsonl")) > 0
    assert sorted(p.split("/")[-1] for p in result["plots"]) == [
        "difficulty_per_round.png",
        "diversity_per_round.png",
        "projection_by_round.png",
        "survival_per_operation.png",
    ]

    # a finished analysis is skipped: the judge is not asked again
    again = FakeEngine(judge)
    assert analyze_run(config, run_dir, engine=again, embedder=bag_of_words) == result and again.calls == 0

    # a diversity knob restarts the stage but keeps the finished judge ratings
    config.analysis.clusters = 2
    third = FakeEngine(judge)
    changed = analyze_run(config, run_dir, engine=third, embedder=bag_of_words)
    assert third.calls == 0 and changed["clusters"]["k"] == 2
    assert changed["per_round"][2]["difficulty"] == result["per_round"][2]["difficulty"]

    # the report section and the report.json numbers
    section = analysis_section(run_dir)
    assert len(section.tables) == 3 and len(section.images) == 4 and all(p.is_file() for p, _ in section.images)
    assert [row[0] for row in section.tables[1][1]] == ["C0", "C1", "C2"]
    assert analysis_report_json(run_dir)["analysis"]["per_round"][0]["round"] == 0
    assert analysis_section(tmp_path) is None and analysis_report_json(tmp_path) == {}


def test_interrupted_rating_resumes_without_rejudging(evolved, tmp_path):
    config, run_dir = fresh_copy(evolved, tmp_path)
    config.engine.chunk_size = 3

    class Crash(Exception):
        pass

    seen = []

    def crash_on_second_chunk(request):
        seen.append(request.id)
        if len(seen) > 3:
            raise Crash()
        return judge(request)

    with pytest.raises(Crash):
        analyze_run(config, run_dir, engine=FakeEngine(crash_on_second_chunk), embedder=bag_of_words)
    assert len(read_jsonl(run_dir / "analysis" / "ratings.jsonl")) == 3
    second = FakeEngine(judge)
    analyze_run(config, run_dir, engine=second, embedder=bag_of_words)
    ratings = read_jsonl(run_dir / "analysis" / "ratings.jsonl")
    assert not {r.id for r in second.requests_seen} & set(seen[:3])
    assert len(ratings) == len({r["id"] for r in ratings}) == 3 + len(second.requests_seen)


def test_difficulty_off_needs_no_judge_and_sampling_caps_each_round(evolved, tmp_path):
    config, run_dir = fresh_copy(evolved, tmp_path)
    config.analysis.difficulty = False
    config.analysis.diversity_per_set = 4
    result = analyze_run(config, run_dir, engine=None, embedder=bag_of_words)  # no judge model is resolved
    assert all(r["difficulty"] is None for r in result["per_round"])
    assert all(r["diversity"]["n"] <= 4 for r in result["per_round"] + result["cumulative"])
    assert not (run_dir / "analysis" / "ratings.jsonl").exists()
    assert "difficulty_per_round.png" not in " ".join(result["plots"])


def test_bad_inputs_fail_before_any_model(evolved, tmp_path):
    config, run_dir = fresh_copy(evolved, tmp_path)
    engine = FakeEngine(judge)
    with pytest.raises(InputError, match="no finished evolution"):
        analyze_run(config, tmp_path / "nowhere", engine=engine, embedder=bag_of_words)
    config.analysis.projection = "umap"
    with pytest.raises(InputError, match="analysis.projection"):
        analyze_run(config, run_dir, engine=engine, embedder=bag_of_words)
    config.analysis = AnalysisConfig(clusters=1)
    with pytest.raises(InputError, match="analysis.clusters"):
        analyze_run(config, run_dir, engine=engine, embedder=bag_of_words)
    config.analysis = AnalysisConfig()
    round_1 = run_dir / "evolve" / "round_1.jsonl"
    lines = round_1.read_text().splitlines()
    round_1.write_text("\n".join([lines[0], json.dumps({"id": "x", "round": 1}), *lines[1:]]) + "\n")
    with pytest.raises(InputError, match=r"round_1.jsonl:2: missing"):
        analyze_run(config, run_dir, engine=engine, embedder=bag_of_words)
    round_1.write_text("{not json\n")
    with pytest.raises(InputError, match=r"round_1.jsonl:1: not valid JSON"):
        analyze_run(config, run_dir, engine=engine, embedder=bag_of_words)
    assert engine.calls == 0


def test_cli_names_a_missing_run_in_one_line(tmp_path):
    result = CliRunner().invoke(main, ["analyze", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "no finished evolution" in result.output and "Traceback" not in result.output


def test_rounds_that_keep_nothing_give_empty_numbers_not_errors(tmp_path):
    from tests.conftest import write_seeds

    seeds = write_seeds(tmp_path, seeds=["EQUALME list colours.", "EQUALME name rivers.", "EQUALME count sheep."])
    config = make_config(tmp_path, rounds=2, seeds=seeds)
    run_evolve(config, tmp_path / "run", Factory().models, quiet=True)
    config.analysis = AnalysisConfig(projection="tsne")
    result = analyze_run(config, tmp_path / "run", engine=FakeEngine(judge), embedder=bag_of_words)
    empty = result["per_round"][2]
    assert empty["survival"]["kept"] == 0 and empty["survival"]["eliminated"]["no_information_gain"] == 3
    assert empty["difficulty"]["mean"] is None and empty["text"]["kept"]["n"] == 0
    assert empty["diversity"] == {
        "n": 0,
        "mean_pairwise_cosine_distance": None,
        "clusters_covered": 0,
        "cluster_entropy_bits": None,
    }
    assert result["cumulative"][2]["diversity"] == result["cumulative"][0]["diversity"]  # C2 == C0
    assert analysis_section(tmp_path / "run").tables[0][1][2][5] == "- (0)"
