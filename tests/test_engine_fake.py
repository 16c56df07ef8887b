from pipeline.core.seeds import derive_seed
from pipeline.engine import ChatRequest, generate_in_chunks
from pipeline.engine.fake import FakeEngine


def user(text):
    return [{"role": "user", "content": text}]


def test_fake_engine_answers_in_order_with_counts():
    engine = FakeEngine(lambda r: f"echo {r.id}")
    results = engine.generate([ChatRequest(id=str(i), messages=user(f"q {i}")) for i in range(5)])
    assert [r.id for r in results] == ["0", "1", "2", "3", "4"]
    assert results[3].text == "echo 3"
    assert results[3].completion_tokens == 2 and results[3].prompt_tokens == 2
    assert all(r.finish_reason == "stop" for r in results)


def test_fake_engine_reports_too_long_and_length_per_request():
    engine = FakeEngine("a b c d e f", max_model_len=10, max_tokens=3)
    results = engine.generate(
        [
            ChatRequest(id="short", messages=user("hi")),
            ChatRequest(id="huge", messages=user("word " * 50)),
        ]
    )
    assert results[0].finish_reason == "length" and results[0].completion_tokens == 3
    assert results[1].finish_reason == "too_long" and results[1].text == ""


def test_chunks_are_large_batches_and_each_is_handed_over():
    engine = FakeEngine("ok")
    saved = []
    stats = generate_in_chunks(
        engine,
        (ChatRequest(id=str(i), messages=user("x")) for i in range(10)),
        chunk_size=4,
        on_chunk=lambda reqs, res: saved.append([r.id for r in res]),
    )
    assert [len(batch) for batch in engine.batches] == [4, 4, 2]
    assert saved == [["0", "1", "2", "3"], ["4", "5", "6", "7"], ["8", "9"]]
    assert stats.requests == 10 and stats.completion_tokens == 10


def test_derived_seeds_are_stable_and_distinct():
    assert derive_seed(42, "a", 1, "evolve") == derive_seed(42, "a", 1, "evolve")
    assert derive_seed(42, "a", 1, "evolve") != derive_seed(42, "a", 2, "evolve")
    assert derive_seed(42, "a", 1, "evolve") != derive_seed(43, "a", 1, "evolve")
    assert 0 <= derive_seed("x") < 2**31
