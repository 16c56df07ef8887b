"""Engines one after the other in one process (what `evol answer` does for several merged models,
and evolve for a responder that is not the evolver): the second starts after the first closed, and
answers as a fresh process would."""

import pytest

from pipeline.config import EngineConfig
from pipeline.engine import ChatRequest
from pipeline.engine.vllm_backend import VLLMEngine

pytestmark = pytest.mark.integration


def test_a_second_engine_in_the_same_process_after_the_first_closed(tiny_model):
    settings = EngineConfig(
        dtype="bfloat16", max_model_len=512, max_tokens=16, temperature=0.0, kv_cache_gb=0.5, enforce_eager=True
    )
    ask = [ChatRequest(id="q", messages=[{"role": "user", "content": "Name three colours."}], seed=3)]
    first = VLLMEngine(tiny_model, settings, seed=1)
    text = first.generate(ask)[0].text
    first.close()
    assert "llm" not in first.__dict__  # closed: its engine and memory are gone
    second = VLLMEngine(tiny_model, settings, seed=1)
    try:
        again = second.generate(ask)[0]
    finally:
        second.close()
    assert again.text == text and again.completion_tokens > 0  # greedy: the same answer as the first engine
