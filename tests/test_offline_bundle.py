"""Air-gapped, tested the way a user meets it: `evol bundle` on this connected machine, then a fresh
checkout with nothing prepared (no .venv, no models, no runs) runs `./run_all.sh --bundle` inside
`unshare -n`, a network namespace with only loopback, through the whole tiny pipeline (sizes cut
down) to report.json; then `evol verify`, `evol view`, `evol export`, `evol serve` and `evol harness`
(lm-eval's built-in gsm8k, read from the bundled datasets cache) run there too.

Every process carries tests/netguard's audit hook: an attempt to reach anything but loopback is
logged and fails the test, even where the code that tried swallows the error. pip's configuration
of this machine (its local indexes and find-links) is hidden from the offline install: what it
installs comes from the bundle or not at all.

Needs root (unshare) and iproute2 (loopback up); CI has both. About 10 minutes on 2 cores.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.engine.vllm_server import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
NETGUARD = ROOT / "tests" / "netguard"
# The tiny config with every stage kept and its sizes cut, and one built-in lm-eval task.
SIZES = {
    "run.rounds": "[0,1]",
    "engine.max_tokens": 24,
    "engine.max_model_len": 1024,
    "engine.kv_cache_gb": 0.5,
    "evolve.max_seeds": 3,
    "evolve.evolution_max_tokens": 40,
    "evolve.answer_max_tokens": 24,
    "train.max_steps": 2,
    "train.max_length": 384,
    "train.effective_batch_size": 2,
    "train.per_device_train_batch_size": 2,
    "eval.limit": 3,
    "eval.answer_max_tokens": 24,
    "eval.judge_max_tokens": 40,
    "eval.verify_limit": 2,
    "eval.verify_max_tokens": 24,
    "eval.harness_tasks": "[gsm8k]",
    "eval.harness_limit": 2,
    "analysis.clusters": 2,
    "analysis.difficulty_per_round": 3,
}


def unshare_works() -> bool:
    if not (shutil.which("unshare") and shutil.which("ip")):
        return False
    return subprocess.run(["unshare", "-n", "ip", "link", "set", "lo", "up"], capture_output=True).returncode == 0


def stand_in_gsm8k(cache: Path) -> None:
    """A Hugging Face datasets cache holding `openai/gsm8k` (config main, train and test splits) as the
    hub loader would have left it: 8 made-up rows, since this machine cannot reach the hub."""
    import datasets

    rows = [
        {"question": f"What is {i} plus {i}?", "answer": f"{i} plus {i} is {2 * i}.\n#### {2 * i}"} for i in range(8)
    ]

    class StandIn(datasets.GeneratorBasedBuilder):
        BUILDER_CONFIGS = [datasets.BuilderConfig(name="main")]

        def _info(self):
            features = {"question": datasets.Value("string"), "answer": datasets.Value("string")}
            return datasets.DatasetInfo(features=datasets.Features(features))

        def _split_generators(self, dl_manager):
            return [datasets.SplitGenerator(name=split, gen_kwargs={}) for split in ("train", "test")]

        def _generate_examples(self):
            yield from enumerate(rows)

    builder = StandIn(
        cache_dir=str(cache), dataset_name="gsm8k", repo_id="openai/gsm8k", config_name="main", hash="0" * 16
    )
    builder.download_and_prepare()


def fresh_checkout(target: Path) -> Path:
    """The project's files as a clone has them (tracked and new, nothing that git ignores)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def offline_env(net_log: Path) -> dict:
    """This environment without pip's configuration and the test's virtual environment, with the guard."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "VIRTUAL_ENV", "EVOL_", "PYTEST"))}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if not p.startswith(str(ROOT / ".venv")))
    return {**env, "PYTHONPATH": str(NETGUARD), "EVOL_NET_LOG": str(net_log), "PIP_CONFIG_FILE": os.devnull}


def offline(script: str, cwd: Path, env: dict, timeout: int) -> subprocess.CompletedProcess:
    """`script` in bash inside a new network namespace with only loopback up."""
    return subprocess.run(
        # `;`, not `&&`: a script that starts something with `&` must background that command alone
        ["unshare", "-n", "bash", "-c", f"ip link set lo up || exit 97; {script}"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def attempts(net_log: Path) -> list[dict]:
    if not net_log.exists():
        return []
    return [json.loads(line) for line in net_log.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def air_gapped(tmp_path_factory, tiny_model):
    if not unshare_works():
        pytest.skip("needs `unshare -n` and `ip` (root and iproute2) to make a machine with no network")
    tmp = tmp_path_factory.mktemp("airgap")
    stand_in_gsm8k(tmp / "hf-datasets")
    bundle = tmp / "bundle"
    sets = {**SIZES, "models.dir": tiny_model.parent, "eval.harness_datasets_cache": tmp / "hf-datasets"}
    started = time.monotonic()
    made = subprocess.run(
        [sys.executable, "-m", "pipeline", "bundle", "--config", "configs/tiny.yaml", "--out", str(bundle)]
        + [arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-3000:]
    bundle_seconds = time.monotonic() - started
    clone = fresh_checkout(tmp / "clone")
    net_log = tmp / "net.jsonl"
    env = offline_env(net_log)
    started = time.monotonic()
    run = offline("./run_all.sh --bundle " + str(bundle), clone, env, timeout=2400)
    print(
        f"[airgap] bundle made in {bundle_seconds:.0f} s; offline install and run {time.monotonic() - started:.0f} s"
    )
    return {"bundle": bundle, "clone": clone, "env": env, "net_log": net_log, "run": run}


def test_run_all_with_the_bundle_completes_offline(air_gapped):
    run, clone = air_gapped["run"], air_gapped["clone"]
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    report = json.loads((clone / "runs" / "tiny" / "report.json").read_text())
    assert report
    # every model answered, was checked by code, judged and ran the built-in lm-eval task from the bundled cache
    run_dir = clone / "runs" / "tiny"
    for label in ("reference", "C0", "C1"):
        assert (run_dir / "answers" / label / "answers.jsonl").is_file(), label
        for prompts in ("ifeval", "ifbench"):
            assert (run_dir / "verify" / prompts / label / "verify.json").is_file(), (prompts, label)
        results = json.loads((run_dir / "harness" / label / "results.json").read_text())
        assert results["n-samples"]["gsm8k"]["effective"] == 2, label
    assert attempts(air_gapped["net_log"]) == []


def test_the_other_commands_run_offline(air_gapped):
    """evol verify, view and export, inside the namespace, on the run the bundle made."""
    if air_gapped["run"].returncode != 0:
        pytest.skip("the offline run failed (its own test says why)")
    clone, env = air_gapped["clone"], air_gapped["env"]
    run_dir = clone / "runs" / "tiny"
    answers = run_dir / "verify" / "ifeval" / "C1" / "answers.jsonl"
    # the run answered eval.verify_limit prompts of the shipped IFEval-format sample: check those
    keys = {str(json.loads(line)["id"]) for line in answers.read_text().splitlines() if line.strip()}
    sample = (ROOT / "eval" / "data" / "ifeval_sample.jsonl").read_text().splitlines()
    prompts = clone / "answered_prompts.jsonl"
    prompts.write_text(
        "".join(line + "\n" for line in sample if line.strip() and str(json.loads(line)["key"]) in keys)
    )
    commands = [
        f".venv/bin/evol verify --prompts {prompts} --answers {answers} --out {clone / 'verified'}",
        f".venv/bin/evol view {run_dir}",
        f".venv/bin/evol export {run_dir} --out {clone / 'exported'}",
    ]
    done = offline(" && ".join(commands), clone, env, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    verified = json.loads((clone / "verified" / "verify.json").read_text())
    in_run = json.loads((answers.parent / "verify.json").read_text())
    assert (verified["prompts"], verified["scored"]) == (in_run["prompts"], in_run["scored"])
    assert (run_dir / "data.html").is_file() and any((clone / "exported").iterdir())
    assert attempts(air_gapped["net_log"]) == []


def test_evol_serve_answers_on_loopback_offline(air_gapped):
    if air_gapped["run"].returncode != 0:
        pytest.skip("the offline run failed (its own test says why)")
    clone, env, port = air_gapped["clone"], air_gapped["env"], free_port()
    probe = (
        "import json, sys, time, urllib.request\n"
        f"url = 'http://127.0.0.1:{port}/v1'\n"
        "for _ in range(600):\n"
        "    try:\n"
        "        urllib.request.urlopen(url + '/models', timeout=2).read(); break\n"
        "    except OSError:\n"
        "        time.sleep(1)\n"
        "body = json.dumps({'model': 'smollm2-135m', 'prompt': 'Hello', 'max_tokens': 4}).encode()\n"
        "request = urllib.request.Request(url + '/completions', body, {'Content-Type': 'application/json'})\n"
        "print(json.loads(urllib.request.urlopen(request, timeout=120).read())['choices'][0]['text'])\n"
    )
    (clone / "probe.py").write_text(probe)
    # the server in a process group of its own (setsid), so that stopping it stops its engine process too
    script = (
        f"setsid .venv/bin/evol serve --config {air_gapped['bundle'] / 'config.yaml'} --port {port} "
        f"--set models.dir={air_gapped['bundle'] / 'models'} --set engine.kv_cache_gb=0.5 --set engine.max_model_len=1024 "
        "> serve.log 2>&1 & server=$!; .venv/bin/python probe.py; status=$?; kill -TERM -- -$server; "
        "for _ in $(seq 60); do kill -0 -- -$server 2>/dev/null || break; sleep 1; done; "
        "kill -KILL -- -$server 2>/dev/null; exit $status"
    )
    done = offline(script, clone, env, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:] + (clone / "serve.log").read_text()[-3000:]
    assert done.stdout.strip()  # the served model answered
    assert attempts(air_gapped["net_log"]) == []
