"""eval.answer_with: LoRA fine-tunes answer as merged models on CPU and through multi-LoRA on a GPU."""

from pathlib import Path

import pytest

from pipeline.config import load_config, semantic_dict
from pipeline.core.jsonio import InputError
from pipeline.plan import answers_from_merged, plan
from pipeline.run import check_run_config

ROOT = Path(__file__).resolve().parent.parent
RUN = Path("runs/x")
CFG = RUN / "config.yaml"


def tiny(*sets):
    return load_config(ROOT / "configs" / "tiny.yaml", ["run.rounds=[0,1,2]", *sets])


def test_on_cpu_each_adapter_is_merged_by_train_and_answered_as_a_model():
    steps = plan(tiny(), RUN, CFG, gpu=False, lanes=1)  # tests/test_run_lanes.py has the two-lane plan
    assert [(s.stage, s.label) for s in steps] == [
        ("evolve", "evolve"),
        ("train", "C0, C1, C2"),  # one process, one fine-tune after the other
        ("answer", "C0, C1, C2, reference"),  # one process, one engine after the other
        ("judge", "5 comparisons"),
        ("analyze", "analysis"),
    ]
    assert all("--merge" in s.args for s in steps if s.stage == "train")
    (answers,) = [s for s in steps if s.stage == "answer"]
    pairs = [(answers.args[i + 1], answers.args[i + 3]) for i, a in enumerate(answers.args) if a == "--model"]
    assert pairs == [
        *((str(RUN / "sft" / f"C{k}" / "merged"), f"C{k}") for k in range(3)),
        ("smollm2-135m", "reference"),
    ]
    assert not any(a.startswith("--adapter") for a in answers.args)


@pytest.mark.parametrize(
    "sets, gpu, merged",
    [
        ((), False, True),  # auto on CPU
        ((), True, False),  # auto on a GPU
        (("eval.answer_with=lora",), False, False),
        (("eval.answer_with=merged",), True, True),
        (("eval.answer_with=merged", "train.method=full"), False, False),  # a full fine-tune has no adapter
    ],
)
def test_the_choice(sets, gpu, merged):
    config = tiny(*sets)
    assert answers_from_merged(config, gpu) is merged
    trains = [s for s in plan(config, RUN, CFG, gpu=gpu) if s.stage == "train"]
    assert all(("--merge" in s.args) is merged for s in trains)


def test_the_choice_is_a_throughput_knob_and_checked():
    assert semantic_dict(tiny("eval.answer_with=lora")) == semantic_dict(tiny("eval.answer_with=merged"))
    with pytest.raises(InputError, match="eval.answer_with must be one of auto, lora, merged, not 'fast'"):
        check_run_config(tiny("eval.answer_with=fast"))


def test_on_a_running_server_the_adapters_are_served_not_merged():
    server = ("engine.backend=server", "engine.url=http://127.0.0.1:8000/v1")
    config = tiny(*server)
    assert answers_from_merged(config, gpu=False) is False  # auto: the server loads each adapter
    steps = plan(config, RUN, CFG, gpu=False, lanes=1)
    assert not any("--merge" in s.args for s in steps if s.stage == "train")
    (answers,) = [s for s in steps if s.stage == "answer"]
    assert any(a.startswith("--adapter") for a in answers.args)


@pytest.mark.parametrize(
    "wrong, key",
    [("train.method=full", "train.method is 'full'"), ("eval.answer_with=merged", "eval.answer_with=merged")],
)
def test_a_running_server_refuses_whole_fine_tuned_models_before_any_stage(wrong, key):
    config = tiny("engine.backend=server", "engine.url=http://127.0.0.1:8000/v1", wrong)
    with pytest.raises(InputError, match=f"^{key}" if wrong.startswith("eval") else key) as caught:
        check_run_config(config)
    assert "\n" not in str(caught.value)
    config.validate("engine")  # a lone `evol evolve` on the server does not care how fine-tunes answer
    tiny(wrong).validate()  # and on the local backend both are fine
