"""The Ray backend without a cluster: its options fail with one sentence, block streaming saves every
block whatever its order, and an evolution on a block-streaming engine writes exactly what the local
path writes (resume after failed rows included). The real Ray runs are in test_ray_integration.py."""

import builtins
import filecmp

import pytest

from evolve_local.evolve import run_evolve
from pipeline.config import ConfigError, load_config, semantic_dict
from pipeline.engine import ChatRequest, generate_in_chunks
from pipeline.engine.fake import BlockFakeEngine, FakeEngine
from pipeline.engine.ray_backend import RowsFailed, check_backend
from tests.test_evolve_loop import Factory, make_config, scripted


def test_backend_options_fail_with_one_sentence():
    for overrides, pattern in [
        (["engine.backend=spark"], r"engine\.backend must be one of local, ray"),
        (["engine.replicas=2"], r"need engine\.backend=ray"),
        (["engine.backend=ray", "engine.replicas=0"], r"engine\.replicas must be at least 1"),
        (["engine.backend=ray", "ray.address=http://head"], r"ray\.address 'http://head' is not a Ray address"),
    ]:
        config = load_config(None, overrides)
        with pytest.raises(ConfigError, match=pattern) as caught:
            check_backend(config.engine, config.ray)
        assert "\n" not in str(caught.value)
    for address in ("", "auto", "10.0.0.1:6379", "ray://head-node:10001"):
        config = load_config(None, ["engine.backend=ray", f"ray.address={address}"])
        check_backend(config.engine, config.ray)


def test_ray_not_installed_says_how_to_install(monkeypatch):
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError(f"No module named '{name}'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    config = load_config(None, ["engine.backend=ray"])
    with pytest.raises(ConfigError, match=r"needs Ray Data, which is not installed: pip install '\.\[ray\]'"):
        check_backend(config.engine, config.ray)


def test_backend_is_a_throughput_knob():
    # A run started on one backend resumes on the other: the stage keys do not change.
    assert semantic_dict(load_config(None, ["engine.backend=ray", "engine.replicas=4", "ray.address=auto"])) == (
        semantic_dict(load_config())
    )


def test_block_streaming_hands_every_block_to_the_caller_in_one_job():
    engine = BlockFakeEngine(lambda r: f"answer {r.id}", block_size=2)
    requests = [ChatRequest(id=f"q{i}", messages=[{"role": "user", "content": f"q {i}"}]) for i in range(5)]
    saved = []
    stats = generate_in_chunks(engine, iter(requests), chunk_size=100, on_chunk=lambda c, r: saved.append((c, r)))
    assert len(engine.streams) == 1  # one job, not one per chunk
    assert [len(chunk) for chunk, _ in saved] == [1, 2, 2]  # each block saved as it came
    assert all(req.id == res.id for chunk, results in saved for req, res in zip(chunk, results))
    assert sorted(req.id for chunk, _ in saved for req in chunk) == [r.id for r in requests]
    assert stats.requests == 5


def test_evolution_on_blocks_writes_what_the_local_path_writes(tmp_path):
    local = Factory()
    run_evolve(make_config(tmp_path), tmp_path / "local", local.models, quiet=True)

    blocks = Factory(block_size=2)
    blocks.engine_class = BlockFakeEngine
    config = make_config(tmp_path, "engine.backend=ray")
    run_evolve(config, tmp_path / "ray", blocks.models, quiet=True)

    for k in range(3):
        assert filecmp.cmp(tmp_path / "local" / "data" / f"C{k}.jsonl", tmp_path / "ray" / "data" / f"C{k}.jsonl")
        assert filecmp.cmp(
            tmp_path / "local" / "evolve" / f"round_{k}.jsonl", tmp_path / "ray" / "evolve" / f"round_{k}.jsonl"
        )
    # one job per step and round (round 0: the seed answers), each over every request of that step
    assert [len(s) for _, engine in blocks.started for s in engine.streams] == [9, 9, 6, 5, 9, 6, 5]
    from pipeline.core.jsonio import read_json

    assert read_json(tmp_path / "ray" / "evolve" / "manifest.json")["backend"] == "ray"


def test_failed_rows_stop_the_stage_and_a_rerun_generates_only_them(tmp_path):
    config = make_config(tmp_path, "engine.backend=ray", rounds=1)
    failing = Factory(block_size=2, fail={"s1@r1", "s6@r1"})
    failing.engine_class = BlockFakeEngine
    with pytest.raises(RowsFailed, match=r"2 of 9 rows failed"):
        run_evolve(config, tmp_path / "run", failing.models, quiet=True)

    rerun = Factory(block_size=2)
    rerun.engine_class = BlockFakeEngine
    run_evolve(config, tmp_path / "run", rerun.models, quiet=True)
    streams = [[r.id for r in s] for _, engine in rerun.started for s in engine.streams]
    assert sorted(streams[0]) == ["s1@r1", "s6@r1"]  # round 0 and the other evolutions were saved: not sent again
    assert [len(s) for s in streams] == [2, 6, 5]  # then the check and answer steps, which the failure never reached

    local = Factory()
    run_evolve(make_config(tmp_path, rounds=1), tmp_path / "local", local.models, quiet=True)
    assert filecmp.cmp(tmp_path / "local" / "data" / "C1.jsonl", tmp_path / "run" / "data" / "C1.jsonl")


def test_fake_engines_agree():
    # The block fake answers exactly like the batch fake, so the comparisons above test the path, not the fake.
    request = ChatRequest(id="a", messages=[{"role": "user", "content": "Explain how tides work."}], seed=3)
    (pair,) = next(BlockFakeEngine(scripted).stream([request]))
    assert pair[1] == FakeEngine(scripted).generate([request])[0]


class WordTokenizer:
    """Stands for the model's tokenizer: one token per word of the joined messages."""

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        return list(range(len(" ".join(m["content"] for m in messages).split()) + 2))


def bare_ray_engine(**settings):
    from pipeline.engine.ray_backend import RayEngine

    config = load_config(None, ["engine.backend=ray", *[f"engine.{k}={v}" for k, v in settings.items()]])
    engine = object.__new__(RayEngine)  # no Ray, no model: only the rows the driver would send
    engine.settings, engine.ray_settings = config.engine, config.ray
    engine.model_path, engine.tokenizer = "/models/base", WordTokenizer()
    engine.adapters = {"C1": "/adapters/c1"}
    return engine


def test_ray_rows_carry_seed_limits_constraints_and_adapter():
    engine = bare_ray_engine(max_model_len=12, max_tokens=100, temperature=0.7)
    ask = [{"role": "user", "content": "one two three"}]
    row, result = engine._row(ChatRequest(id="a", messages=ask, seed=5, choice=["EQUAL", "DIFFERENT"]))
    assert result is None and row["id"] == "a" and row["tokenized_prompt"].tolist() == list(range(5))
    assert row["tokenized_prompt"].dtype == "int32"  # not Python ints: the driver holds a whole step of these
    assert row["sampling_params"] == {
        "max_tokens": 7,  # what the context leaves, as the local backend clips
        "temperature": 0.7,
        "top_p": 0.95,
        "seed": 5,
        "structured_outputs": {"choice": ["EQUAL", "DIFFERENT"]},
    }
    assert row["model"] == "/models/base" and row["max_tokens"] == 7
    row, _ = engine._row(ChatRequest(id="b", messages=ask, max_tokens=3, regex="[0-9]+ [0-9]+", adapter="C1"))
    assert row["sampling_params"]["structured_outputs"] == {"regex": "[0-9]+ [0-9]+"}
    assert row["sampling_params"]["max_tokens"] == 3 and row["model"] == "/adapters/c1"  # LoRA by the row's model
    row, result = engine._row(ChatRequest(id="c", messages=[{"role": "user", "content": "w " * 20}]))
    assert row is None and result.finish_reason == "too_long" and result.completion_tokens == 0
    with pytest.raises(KeyError, match="Adapter 'C9'"):
        engine._row(ChatRequest(id="d", messages=ask, adapter="C9"))


def test_the_processor_waits_for_every_replica_and_bounds_the_retries(monkeypatch, capsys):
    ray = pytest.importorskip("ray")
    from ray.data import DataContext

    engine = bare_ray_engine(replicas=3)
    engine.seed, engine.trust_remote_code, engine.settings.cpu_threads_bind = 0, False, ""
    engine.ray_settings.retries, engine.ray_settings.start_timeout_s = 1, 77
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    before = DataContext.get_current().wait_for_min_actors_s
    try:
        processor = engine._processor()
        assert DataContext.get_current().wait_for_min_actors_s == 77  # no row before all 3 replicas started
    finally:
        DataContext.get_current().wait_for_min_actors_s = before
    stage = processor.get_stage_by_name("vLLMEngineStage")
    assert stage.map_batches_kwargs["max_task_retries"] == 1
    assert stage.map_batches_kwargs["compute"].min_size == stage.map_batches_kwargs["compute"].max_size == 3
    warning = capsys.readouterr().err
    assert "engine.replicas=3 x 1 worker(s) need 3 CPUs; the cluster has 2 now" in warning


def test_ray_output_rows_become_results_with_their_finish_reason():
    from pipeline.engine.ray_backend import _slim

    row = {"id": "a", "generated_text": "hi", "num_input_tokens": 5, "generated_tokens": [7, 8], "max_tokens": 2}
    assert _slim({**row, "num_generated_tokens": 2}, frozenset({2}))["finish_reason"] == "length"
    assert _slim({**row, "num_generated_tokens": 2, "generated_tokens": [7, 2]}, frozenset({2}))["finish_reason"] == (
        "stop"  # the last token allowed was the end of text: it stopped, it did not run out
    )
    failed = _slim({"id": "b", "__inference_error__": "EngineDeadError: boom", "max_tokens": 4}, frozenset())
    assert failed["error"].startswith("EngineDeadError") and failed["text"] == ""


def test_a_job_ray_gives_up_on_ends_in_one_sentence_after_its_blocks():
    exceptions = pytest.importorskip("ray.exceptions")
    from pipeline.engine.ray_backend import _job_blocks

    class Dataset:
        def iter_batches(self, **_):
            yield "first block"
            raise exceptions.RayError("ActorDiedError: the actor died unexpectedly\n  traceback lines")

    blocks = _job_blocks(Dataset())
    assert next(blocks) == "first block"
    with pytest.raises(RowsFailed, match=r"^The Ray job stopped \(ActorDiedError: the actor died unexpectedly\)"):
        next(blocks)
