"""`evol run --rehearse`: the flagship config (configs/paper-7b.yaml) rehearsed on a CPU box with
stand-in models, and the checks and scaling that come before any stage runs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import load_config, to_dict
from pipeline.core.jsonio import InputError
from pipeline.rehearse import CEILINGS, check_models, context_problems, key_table, rehearsal_config

ROOT = Path(__file__).resolve().parent.parent
PAPER = ROOT / "configs" / "paper-7b.yaml"


def fake_model(path: Path, chat: bool, window: int = 8192) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"max_position_embeddings": window}))
    if chat:
        (path / "chat_template.jinja").write_text("{{ messages }}")
    return path


def paper_with(tmp_path, window: int = 8192, **more):
    chat = fake_model(tmp_path / "instruct", chat=True, window=window)
    base = fake_model(tmp_path / "llama", chat=False, window=window)
    sets = [f"models.evolver={chat}", f"models.judge={chat}", f"models.base={base}"]
    return load_config(PAPER, sets + [f"{k}={v}" for k, v in more.items()])


def test_the_paper_config_names_the_paths_to_fill_in():
    with pytest.raises(InputError, match=r"fill in the model paths .*models\.evolver \(/path/to/an-instruct-model\)"):
        check_models(load_config(PAPER))


def test_stand_ins_keep_each_models_kind_and_sizes_are_scaled(tmp_path):
    config = paper_with(tmp_path)
    rehearsal, changes = rehearsal_config(config, check_models(config))
    assert (rehearsal.models.evolver, rehearsal.models.judge) == ("smollm2-135m", "smollm2-135m")
    assert rehearsal.models.base == "smollm2-135m-base"  # a base model stays a base model
    assert "(base model)" in changes["models.base"] and "(chat model)" in changes["models.evolver"]
    # the rounds, the method and the config's own code paths are kept; sizes are not
    assert rehearsal.run.rounds == [0, 1, 2, 3, 4] and rehearsal.train.method == "full"
    assert rehearsal.train.gradient_checkpointing and rehearsal.evolve.regenerate_seed_answers
    assert rehearsal.eval.use_reference and rehearsal.evolve.decontaminate
    assert (
        rehearsal.evolve.max_seeds == CEILINGS["evolve.max_seeds"] and rehearsal.eval.limit == CEILINGS["eval.limit"]
    )
    assert rehearsal.train.max_steps == 2 and changes["train.max_steps"] == "scaled: -1 -> 2"
    assert "could not (CUDA-only)" in changes["engine.gpu_memory_utilization"]
    assert rehearsal.run.name == "paper-7b-rehearsal"


def test_every_key_is_in_the_table_with_what_the_rehearsal_did(tmp_path):
    config = paper_with(tmp_path)
    _, changes = rehearsal_config(config, check_models(config))
    rows = {row["key"]: row["status"] for row in key_table(config, changes)}
    assert set(rows) == {f"{s}.{o}" for s, values in to_dict(config).items() for o in values}
    assert rows["train.lora_r"] == "not used: train.method is full"
    assert rows["ray.address"] == "not used: engine.backend is not ray"
    assert rows["optimize.steps"].startswith("not used: not part of evol run")
    assert rows["evolve.dedup_threshold"] == "exercised"
    assert rows["train.precision"].startswith("exercised as auto")


def test_what_a_gpu_run_would_fail_on_is_said_before_anything_runs(tmp_path):
    config = paper_with(tmp_path, window=2048)  # a 2K-token model under engine.max_model_len 4096
    problems = context_problems(config, check_models(config))
    assert any("holds 2048 tokens but engine.max_model_len is 4096" in p for p in problems)
    with pytest.raises(InputError, match="train.method=qlora needs CUDA"):
        config = paper_with(tmp_path / "q", **{"train.method": "qlora"})
        rehearsal_config(config, check_models(config))


def test_a_server_config_rehearses_on_servers_of_its_own(tmp_path):
    """With engine.backend=server the conversing roles are served names (chat stand-ins); models.base,
    which the fine-tune loads, must be local; the URLs become the rehearsal's own servers."""
    base = fake_model(tmp_path / "llama", chat=False)
    sets = ["engine.backend=server", "engine.url=http://gpu-box:8000/v1", "train.method=lora"]
    sets += ["models.evolver=llama-3-70b-instruct", "models.judge=judge-70b", f"models.base={base}"]
    config = load_config(PAPER, sets)
    paths = check_models(config)
    assert paths["models.evolver"] is None and paths["models.base"] == base.resolve()
    rehearsal, changes = rehearsal_config(config, paths)
    assert (rehearsal.models.evolver, rehearsal.models.judge, rehearsal.models.base) == (
        "smollm2-135m",
        "smollm2-135m",
        "smollm2-135m-base",
    )
    assert changes["engine.url"].endswith("the rehearsal's own servers on loopback")
    with pytest.raises(InputError, match=r"models\.base \(/nowhere\)"):
        check_models(load_config(PAPER, [*sets[:3], "models.base=/nowhere"]))


@pytest.mark.integration
def test_the_paper_config_is_rehearsed_on_this_cpu_box(tmp_path, tiny_model, tiny_base_model):
    """Every stage of configs/paper-7b.yaml (rounds 0-4, full fine-tunes with gradient checkpointing,
    regenerated seed answers, reference-guided judging, decontamination, the analysis) on SmolLM2."""
    sets = {
        "models.evolver": tiny_model,
        "models.judge": tiny_model,
        "models.base": tiny_base_model,
        "run.runs_dir": tmp_path / "runs",
    }
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "--config", str(PAPER), "--rehearse"]
        + [arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=3000,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    run = tmp_path / "runs" / "paper-7b-rehearsal"
    report = json.loads((run / "rehearsal.json").read_text())
    stages = {s["stage"]: s["status"] for s in report["stages"]}
    for k in range(5):
        assert stages[f"sft/C{k}"] == "done" and stages[f"answers/C{k}"] == "done", k
        assert json.loads((run / "sft" / f"C{k}" / "manifest.json").read_text())["template"] == "instruction"
    assert all(status == "done" for status in stages.values())
    assert (run / "report.json").is_file() and "| `train.method` |" in (run / "rehearsal.md").read_text()
