"""The real pieces of `evol analyze`: MiniLM from site-packages with no download, and the whole
analysis on a small evolved run with SmolLM2 as the constrained difficulty judge (one engine start)."""

import shutil

import pytest

from eval.analysis.analyze import analyze_run
from eval.analysis.embed import MiniLMEmbedder
from eval.analysis.metrics import mean_pairwise_cosine_distance
from evolve_local.evolve import run_evolve
from pipeline.config.analysis import AnalysisConfig
from pipeline.core.jsonio import read_jsonl
from tests.conftest import Factory, make_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def embedder():
    return MiniLMEmbedder(batch_size=16, device="cpu")


def test_minilm_loads_offline_and_measures_meaning(embedder, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    vectors = embedder(
        [
            "How do I bake bread at home?",
            "What is a simple recipe for homemade bread?",
            "Explain how a transistor amplifies a signal.",
        ]
    )
    assert vectors.shape == (3, 384)
    close = mean_pairwise_cosine_distance(vectors[:2])
    far = mean_pairwise_cosine_distance(vectors[[0, 2]])
    assert close < far
    assert mean_pairwise_cosine_distance(embedder(["Same text."] * 4)) == pytest.approx(0.0, abs=1e-5)
    assert "all-MiniLM-L6-v2" in embedder.name


def test_analysis_with_the_real_judge_and_embedder(tmp_path, tiny_model, embedder):
    config = make_config(
        tmp_path,
        "engine.kv_cache_gb=0.5",
        "engine.enforce_eager=true",
        "engine.max_model_len=512",
        "engine.dtype=bfloat16",
        f"models.judge={tiny_model}",
        rounds=1,
    )
    run_evolve(config, tmp_path / "run", Factory().models, quiet=True)
    config.analysis = AnalysisConfig(difficulty_per_round=3, difficulty_max_tokens=24, projection="tsne", clusters=4)
    result = analyze_run(config, tmp_path / "run", embedder=embedder)  # starts the real judge

    ratings = read_jsonl(tmp_path / "run" / "analysis" / "ratings.jsonl")
    assert len(ratings) == 6  # 3 per round, rounds 0 and 1
    # constrained decoding: the score line is always there, so every rating parses
    assert all(r["score"] is not None and 1 <= r["score"] <= 10 and r["method"] == "first_line" for r in ratings)
    assert all(r["raw"].split("\n")[0] == str(int(r["score"])) for r in ratings)
    assert result["per_round"][0]["difficulty"]["rated"] == 3
    distances = [c["diversity"]["mean_pairwise_cosine_distance"] for c in result["cumulative"]]
    assert all(0 < d < 1.5 for d in distances)
    assert len(result["plots"]) == 4
    shutil.rmtree(tmp_path / "run" / "sft", ignore_errors=True)
