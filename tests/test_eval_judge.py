"""Swap logic and tie rules on scripted verdicts; the judge stage end to end on a FakeEngine."""

import pytest

from eval.judge import combine, judge_pairs, read_order
from eval.judge_prompt import PROMPT_VERSION
from pipeline.config import Config
from pipeline.core.jsonio import InputError, read_json, read_jsonl, write_json
from pipeline.engine import ChatResult
from pipeline.engine.fake import FakeEngine
from tests.conftest import ITEMS, scripted_judge, write_answers


def order(item_order, text, finish="stop"):
    return read_order("q1", item_order, ChatResult("q1", text, 10, 5, finish), clipped=False)


def test_scores_are_mapped_back_to_a_and_b_by_order():
    ab, ba = order("AB", "8 3"), order("BA", "3 8")
    assert (ab["score_a"], ab["score_b"]) == (8, 3)
    assert (ba["score_a"], ba["score_b"]) == (8, 3)  # in BA, Assistant 1 is B
    assert ab["verdict"] == ba["verdict"] == "win"


@pytest.mark.parametrize(
    "ab_text, ba_text, verdict, consistent, score_a, score_b",
    [
        ("8 3", "3 8", "win", True, 8, 3),  # A better in both orders
        ("2 9", "9 2", "lose", True, 2, 9),  # B better in both orders
        ("5 5", "6 6", "tie", True, 5.5, 5.5),  # tie in both orders
        ("8 3", "8 3", "tie", False, 5.5, 5.5),  # the first position always wins: flips, so a tie
        ("7 5", "6 6", "tie", False, 6.5, 5.5),  # win in one order, tie in the other: a tie
        ("9 4", "5 7", "win", True, 8, 4.5),  # scores averaged over the two orders
    ],
)
def test_tie_rules(ab_text, ba_text, verdict, consistent, score_a, score_b):
    pair = combine(order("AB", ab_text), order("BA", ba_text), single_order_fallback=True)
    assert pair["status"] == "judged"
    assert (pair["verdict"], pair["consistent"]) == (verdict, consistent)
    assert (pair["score_a"], pair["score_b"]) == (score_a, score_b)


def test_one_unparseable_order_falls_back_or_fails_by_config():
    ab, ba = order("AB", "no idea"), order("BA", "3 8")
    fallback = combine(ab, ba, single_order_fallback=True)
    assert fallback == {"status": "single_order", "verdict": "win", "consistent": None, "score_a": 8, "score_b": 3}
    strict = combine(ab, ba, single_order_fallback=False)
    assert strict["status"] == "failed" and strict["verdict"] is None


def test_prompt_too_long_is_a_recorded_failure():
    too_long = order("AB", "", finish="too_long")
    assert too_long["verdict"] is None and "context" in too_long["error"]


# ---------------------------------------------------------------- the stage on a FakeEngine


@pytest.fixture
def answer_dirs(tmp_path):
    a = write_answers(tmp_path / "ans" / "C1", "C1", {"1": "good four", "2": "good red", "3": "good hi"}, ITEMS)
    b = write_answers(tmp_path / "ans" / "base", "base", {"1": "bad", "2": "good blue", "3": "bad"}, ITEMS)
    return a, b


def test_judge_stage_writes_judgments_scores_and_skips_when_done(tmp_path, answer_dirs):
    a, b = answer_dirs
    config = Config()
    config.engine.chunk_size = 4
    engine = FakeEngine(scripted_judge, model_name="fake-judge")
    judge_dir, scores = judge_pairs(config, [(a, b)], tmp_path / "judge", "fake-judge", engine=engine)[0]
    assert judge_dir.name == "C1__vs__base"
    requests = engine.requests_seen
    assert len(requests) == 6 and all(r.temperature == 0.0 for r in requests)
    assert "Hi!" in requests[-1].messages[-1]["content"]  # reference-guided for item 3
    assert [len(batch) for batch in engine.batches] == [4, 2]

    judgments = read_jsonl(judge_dir / "judgments.jsonl")
    assert [j["verdict"] for j in judgments] == ["win", "tie", "win"]
    assert [j["status"] for j in judgments] == ["judged", "judged", "single_order"]
    assert judgments[2]["orders"]["AB"]["raw"] == "I cannot decide."  # raw text kept beside the failure
    assert scores["overall"]["win"] == 2 and scores["overall"]["tie"] == 1
    assert scores["judge_failures"]["orders_unparsed"] == 1 and scores["judge_failures"]["pairs_single_order"] == 1
    assert scores["position_consistency"] == {"pairs_with_both_orders": 2, "consistent": 2, "rate": 1.0}
    assert scores["prompt_version"] == PROMPT_VERSION and scores["judge_model"] == "fake-judge"
    assert read_json(judge_dir / "manifest.json")["rows"]["items"] == 3

    again = FakeEngine(scripted_judge)
    judge_pairs(config, [(a, b)], tmp_path / "judge", "fake-judge", engine=again)
    assert again.calls == 0


def test_judge_resumes_from_orders_already_written(tmp_path, answer_dirs):
    a, b = answer_dirs
    config = Config()
    config.engine.chunk_size = 2

    class Crash(RuntimeError):
        pass

    def crashing(request):
        if "Say hi." in request.messages[-1]["content"]:
            raise Crash
        return scripted_judge(request)

    with pytest.raises(Crash):
        judge_pairs(config, [(a, b)], tmp_path / "judge", "fake-judge", engine=FakeEngine(crashing))
    engine = FakeEngine(scripted_judge)
    _, scores = judge_pairs(config, [(a, b)], tmp_path / "judge", "fake-judge", engine=engine)[0]
    assert len(engine.requests_seen) == 2  # only item 3's two orders were left
    assert scores["overall"]["n"] == 3


def test_bad_answer_directories_are_refused_before_any_model(tmp_path, answer_dirs):
    a, b = answer_dirs
    with pytest.raises(InputError, match="same directory"):
        judge_pairs(Config(), [(a, a)], tmp_path / "j", "x", engine=FakeEngine())
    unfinished = tmp_path / "unfinished"
    write_answers(unfinished, "u", {"1": "x", "2": "y", "3": "z"}, ITEMS)
    (unfinished / "manifest.json").unlink()
    with pytest.raises(InputError, match="unfinished"):
        judge_pairs(Config(), [(unfinished, b)], tmp_path / "j", "x", engine=FakeEngine())
    other = write_answers(tmp_path / "other", "other", {"1": "x", "2": "y"}, ITEMS[:2])
    with pytest.raises(InputError, match="same items"):
        judge_pairs(Config(), [(a, other)], tmp_path / "j", "x", engine=FakeEngine())
    write_json(other / "manifest.json", {"label": "other", "testset": {"hash": "different"}})
    with pytest.raises(InputError, match="different test sets"):
        judge_pairs(Config(), [(a, other)], tmp_path / "j", "x", engine=FakeEngine())


def test_prompt_shows_reference_only_when_given_and_marks_cut_answers():
    from eval.judge_prompt import CUT_MARK, judge_messages
    from pipeline.core.text import clip

    plain = judge_messages("Q?", "one", "two")[-1]["content"]
    assert "[Reference answer]" not in plain and "[Assistant 1]\none\n" in plain and "[Assistant 2]\ntwo\n" in plain
    guided = judge_messages("Q?", "one", "", reference="42")[-1]["content"]
    assert "[Reference answer]\n42\n" in guided and "[Assistant 2]\n(no reply)\n" in guided
    text, cut = clip("x" * 50, 10, CUT_MARK)
    assert cut and text == "x" * 10 + CUT_MARK
    assert clip("short", 10, CUT_MARK) == ("short", False) and clip("x" * 50, 0, CUT_MARK) == ("x" * 50, False)
    assert clip("x" * 8 + "  yz", 10, CUT_MARK) == ("x" * 8 + "  " + CUT_MARK, True)  # the judge sees the cut as is
    assert clip("x" * 8 + "  yz", 10, "|", trim=True) == ("x" * 8 + "|", True)


def test_long_answers_are_clipped_in_the_judge_request(tmp_path, answer_dirs):
    a, b = answer_dirs
    long_answers = write_answers(tmp_path / "long" / "L", "L", {"1": "good " * 400, "2": "good", "3": "good"}, ITEMS)
    config = Config()
    config.eval.judge_answer_max_chars = 100
    engine = FakeEngine(scripted_judge)
    judge_dir, _ = judge_pairs(config, [(long_answers, b)], tmp_path / "judge", "fake-judge", engine=engine)[0]
    assert "cut for length" in engine.requests_seen[0].messages[-1]["content"]
    first = read_jsonl(judge_dir / "judgments.jsonl")[0]
    assert (
        first["orders"]["AB"]["answers_clipped"]
        and not read_jsonl(judge_dir / "judgments.jsonl")[1]["orders"]["AB"]["answers_clipped"]
    )


def test_counting_settings_recount_the_stored_verdicts_without_an_engine(tmp_path, answer_dirs, monkeypatch):
    """eval.high_difficulty and eval.single_order_fallback only change how verdicts are counted: a
    rerun starts no engine, rewrites judgments.jsonl and scores.json, and the report follows."""
    from eval.report.evaluation import build_report

    a, b = answer_dirs
    judge_dir, first = judge_pairs(Config(), [(a, b)], tmp_path / "judge", "j", engine=FakeEngine(scripted_judge))[0]
    assert first["high_difficulty"]["threshold"] == 8 and first["high_difficulty"]["n"] == 2  # items 2 and 3

    def no_engine(*args, **kwargs):
        raise AssertionError("a recount must not start an engine")

    monkeypatch.setattr("pipeline.engine.vllm_backend.VLLMEngine", no_engine)
    config = Config()
    config.eval.high_difficulty, config.eval.single_order_fallback = 10, False
    _, scores = judge_pairs(config, [(a, b)], tmp_path / "judge", "j")[0]
    assert scores["high_difficulty"]["threshold"] == 10 and scores["high_difficulty"]["n"] == 0
    # item 3 had one readable order: without the fallback it is a judge failure, not a win
    judgments = read_jsonl(judge_dir / "judgments.jsonl")
    assert [j["status"] for j in judgments] == ["judged", "judged", "failed"]
    assert scores["overall"]["win"] == 1 and scores["judge_failures"]["pairs_unjudged"] == 1
    assert read_json(judge_dir / "scores.json") == scores

    report = build_report([judge_dir], tmp_path / "report")
    assert "high difficulty >= 10" in report["md"].read_text()
    # and back: the stored orders still hold every verdict
    _, restored = judge_pairs(Config(), [(a, b)], tmp_path / "judge", "j")[0]
    assert restored["overall"] == first["overall"] and restored["high_difficulty"] == first["high_difficulty"]


def test_several_pairs_share_one_engine_and_are_all_checked_first(tmp_path, answer_dirs, monkeypatch):
    from eval import judge as judge_module

    a, b = answer_dirs
    c = write_answers(tmp_path / "ans" / "C2", "C2", {"1": "good", "2": "bad", "3": "good"}, ITEMS)
    started = []

    def fake_vllm(*args, **kwargs):
        engine = FakeEngine(scripted_judge, model_name="fake-judge")
        started.append(engine)
        return engine

    monkeypatch.setattr("pipeline.engine.vllm_backend.VLLMEngine", fake_vllm)
    results = judge_module.judge_pairs(Config(), [(a, b), (c, b)], tmp_path / "judge", "fake-judge")
    assert [d.name for d, _ in results] == ["C1__vs__base", "C2__vs__base"]
    assert len(started) == 1 and len(started[0].requests_seen) == 12
    # a bad pair anywhere in the list is refused before any engine starts
    started.clear()
    with pytest.raises(InputError):
        judge_module.judge_pairs(Config(), [(c, b), (a, a)], tmp_path / "judge2", "fake-judge")
    assert not started


def test_an_order_the_engine_failed_on_is_sent_again_now_and_on_resume(tmp_path, answer_dirs):
    a, b = answer_dirs
    config = Config()
    config.engine.chunk_size = 4
    failing = {"BA"}  # item 1's BA order fails in the engine (vLLM finish_reason "error") until healed

    class Flaky(FakeEngine):
        def _result(self, request):
            result = super()._result(request)
            if request.id.startswith("1\x1f") and request.id.endswith(tuple(failing)):
                return ChatResult(request.id, "", result.prompt_tokens, 0, "error")
            return result

    engine = Flaky(scripted_judge)
    judge_dir, scores = judge_pairs(config, [(a, b)], tmp_path / "judge", "fake-judge", engine=engine)[0]
    ids = [r.id for r in engine.requests_seen]
    assert len(ids) == 7 and ids[-1] == "1\x1fBA"  # six orders, then the failed one once more
    assert scores["judge_failures"]["orders_unparsed"] == 2  # it failed again: counted, with its reason
    orders = read_jsonl(judge_dir / "orders.jsonl")
    assert [o["finish_reason"] for o in orders if o["id"] == "1" and o["order"] == "BA"] == ["error", "error"]

    # an interrupted stage (no finished manifest) resumes: only the failed order is sent, and it now works
    (judge_dir / "manifest.json").unlink()
    failing.clear()
    healed = Flaky(scripted_judge)
    _, scores = judge_pairs(config, [(a, b)], tmp_path / "judge", "fake-judge", engine=healed)[0]
    assert [r.id for r in healed.requests_seen] == ["1\x1fBA"]
    assert scores["judge_failures"]["orders_unparsed"] == 1  # item 3's unreadable AB order, as before
    judgments = {j["id"]: j for j in read_jsonl(judge_dir / "judgments.jsonl")}
    assert judgments["1"]["status"] == "judged" and judgments["1"]["orders"]["BA"]["finish_reason"] == "stop"
