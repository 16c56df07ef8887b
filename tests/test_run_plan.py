"""What `evol run` would launch, checked without running it: stage order, skip-friendly arguments,
and the commands for a 4-GPU config."""

import sys
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.core.jsonio import InputError
from pipeline.plan import plan
from pipeline.run import check_run_config

ROOT = Path(__file__).resolve().parent.parent
RUN = Path("runs/x")
CFG = RUN / "config.yaml"


def test_tiny_plan_evolves_once_trains_each_round_and_shares_engines():
    # on a GPU: eval.answer_with=auto serves the adapters (tests/test_answer_with.py has the CPU plan)
    steps = plan(load_config(ROOT / "configs" / "tiny.yaml", ["run.rounds=[0,1,2]"]), RUN, CFG, gpu=True)
    assert [s.stage for s in steps] == ["evolve", "train", "answer", "judge", "analyze"]
    assert steps[0].args[steps[0].args.index("--rounds") + 1] == "2"  # one evolution, to the largest count
    train = steps[1].args  # one process trains C0, C1, C2 in turn: each --data with its --out
    pairs = [(train[i + 1], train[i + 3]) for i, a in enumerate(train) if a == "--data"]
    assert pairs == [(str(RUN / "data" / f"C{k}.jsonl"), str(RUN / "sft" / f"C{k}")) for k in range(3)]
    assert [train[i + 2] for i, a in enumerate(train) if a == "--data"] == ["--out"] * 3
    answer = steps[2].args
    assert sum(a.startswith("--adapter=") for a in answer) == 3
    assert answer[answer.index("--label") + 1] == "reference"  # base model == reference model: same engine
    judge = steps[3].args
    assert judge.count("--answers") == 5  # C1, C2 vs C0 and C0..C2 vs reference, one judge engine
    assert all(s.command[:3] == [sys.executable, "-m", "pipeline"] for s in steps)


def test_four_gpu_config_launches_accelerate_and_parallel_engines():
    config = load_config(
        ROOT / "configs" / "paper-7b.yaml",
        [
            "run.train_processes=4",
            f"run.accelerate_config={ROOT / 'configs' / 'accelerate' / 'deepspeed_zero3.yaml'}",
            "engine.tensor_parallel_size=2",
            "engine.backend=ray",
            "engine.replicas=2",
            "models.base=/m/llama-7b",
            "models.evolver=/m/evolver",
            "models.judge=/m/judge",
        ],
    )
    steps = plan(config, RUN, CFG)
    trains = [s for s in steps if s.stage == "train"]
    assert [s.label for s in trains] == [f"C{k}" for k in range(5)]  # one accelerate launch per fine-tune
    assert all(s.args.count("--data") == 1 for s in trains)
    for step in trains:
        assert step.command[:7] == [
            "accelerate",
            "launch",
            "--config_file",
            str(ROOT / "configs" / "accelerate" / "deepspeed_zero3.yaml"),
            "--num_processes",
            "4",
            "-m",
        ]
        assert step.command[7:9] == ["pipeline", "train"]
    # generation stages stay single commands; the config makes each a Ray job over 2 engines of 2 GPUs
    others = [s for s in steps if s.stage != "train"]
    assert all(s.command[:3] == [sys.executable, "-m", "pipeline"] for s in others)
    # full fine-tunes: one answer process, one engine per model, then the reference model (not the base)
    assert [s.label for s in others] == ["evolve", "C0, C1, C2, C3, C4, reference", "9 comparisons", "analysis"]
    answer = others[1].args
    models = [answer[i + 1] for i, a in enumerate(answer) if a == "--model"]
    assert len(models) == 6 and models[-1] == "/m/evolver"


@pytest.mark.parametrize(
    "override, message",
    [
        ("run.rounds=[]", "run.rounds is empty"),
        ("run.rounds=[1,2]", "must include 0"),
        ("run.rounds=[0,1,1]", "distinct"),
        ("run.train_processes=2", "accelerate_config"),
    ],
)
def test_impossible_run_configs_are_refused_before_anything_runs(override, message, tmp_path):
    extra = ["run.accelerate_config=/nowhere.yaml"] if "train_processes" in override else []
    with pytest.raises(InputError, match=message):
        check_run_config(load_config(None, [override, *extra]))
