"""Answers, judge and report on the real engine: SmolLM2 and a random PEFT LoRA adapter, one vLLM start.

The same engine serves the base model, the adapter (vLLM LoRA) and the judge (SmolLM2 itself), so
the module pays for one start. Sizes are tiny: 4 test items, a few dozen tokens per answer.
"""

import pytest

from eval.answer import answer_testset, parse_adapters
from eval.judge import judge_pairs
from eval.report.evaluation import build_report
from pipeline.config import Config
from pipeline.core import paths as data_paths
from pipeline.core.jsonio import read_json, read_jsonl

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def config():
    config = Config()
    config.engine.dtype = "bfloat16"
    config.engine.max_model_len = 1024
    config.engine.kv_cache_gb = 0.5
    config.engine.enforce_eager = True
    config.eval.limit = 4
    config.eval.answer_max_tokens = 32
    config.eval.judge_max_tokens = 32
    return config


@pytest.fixture(scope="module")
def engine(tiny_model, lora_adapter, config):
    from pipeline.engine.vllm_backend import VLLMEngine

    engine = VLLMEngine(tiny_model, config.engine, seed=config.run.seed, adapters={"lora": lora_adapter})
    yield engine
    engine.close()


def test_answer_judge_report_end_to_end(engine, tiny_model, lora_adapter, config, tmp_path):
    run = tmp_path / "run"
    adapters = parse_adapters([f"lora={lora_adapter}"], config.engine.max_lora_rank)
    testset = data_paths.testset_path("", quiet=True)
    summary = answer_testset(config, run / "answers", tiny_model, testset, adapters, "base", engine=engine)
    assert {label: s["answers"] for label, s in summary.items()} == {"base": 4, "lora": 4}
    base = read_jsonl(run / "answers" / "base" / "answers.jsonl")
    lora = read_jsonl(run / "answers" / "lora" / "answers.jsonl")
    assert all(r["answer"].strip() and r["completion_tokens"] <= 32 for r in base + lora)
    assert [r["answer"] for r in base] != [r["answer"] for r in lora]  # the adapter is really applied
    # greedy: the base model answers the same way when asked again
    assert engine.generate([_request(base[0])])[0].text.strip() == base[0]["answer"]

    judge_dir, scores = judge_pairs(
        config, [(run / "answers" / "lora", run / "answers" / "base")], run / "judge", tiny_model, engine=engine
    )[0]
    judgments = read_jsonl(judge_dir / "judgments.jsonl")
    assert len(judgments) == 4 and scores["judge_failures"]["orders_total"] == 8
    assert all(j["orders"][o]["raw"] is not None for j in judgments for o in ("AB", "BA"))
    f = scores["judge_failures"]
    assert scores["overall"]["n"] + f["pairs_unjudged"] == 4
    assert f["orders_unparsed"] == sum(bool(j["orders"][o]["error"]) for j in judgments for o in ("AB", "BA"))
    # with the constrained judge (the default) even the 135M judge gives readable scores every time
    assert f["orders_unparsed"] == 0 and scores["overall"]["n"] == 4
    assert read_json(judge_dir / "manifest.json")["config"]["temperature"] == 0.0

    paths = build_report([judge_dir], run)
    assert paths["html"].stat().st_size > 10_000 and "lora vs base" in paths["md"].read_text()
    print(
        f"\nunparseable judge outputs: {f['orders_unparsed']}/8, rules: {f['parser_rules']}, "
        f"overall: {scores['overall']}"
    )


def _request(record):
    from eval.answer import answer_messages
    from pipeline.core.testset import TestItem
    from pipeline.engine import ChatRequest

    item = TestItem(record["id"], record["instruction"], record["category"], record["difficulty"])
    return ChatRequest(id="again", messages=answer_messages(item, ""), max_tokens=32, temperature=0.0, top_p=1.0)
